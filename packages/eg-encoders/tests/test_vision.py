"""Vision encoder: tiny open_clip and HF CLIP checkpoints loaded back, equivalence, freezing, errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from eg_encoders import EncoderError, PoolingConfig, VisionEncoder, VisionEncoderConfig


def _images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_open_clip_checkpoint_roundtrip_matches_open_clip(open_clip_files):
    import open_clip

    enc = VisionEncoder(VisionEncoderConfig(**open_clip_files)).eval()
    assert enc.image_spec.size == 32 and len(enc.image_spec.mean) == 3
    images = _images()
    out = enc(images)
    assert out.tokens.shape == (2, 1 + 16, 64) and out.mask.all() and out.pooled.shape == (2, 64)
    assert torch.equal(out.pooled, out.tokens[:, 0])  # cls pooling is the default
    assert torch.equal(enc(images).tokens, out.tokens)  # deterministic in eval mode
    # open_clip's own image embedding is ln_post(class token) @ proj: our class token, projected, matches
    reference = open_clip.create_model(
        open_clip_files["model_name"], pretrained=open_clip_files["pretrained"]
    ).eval()
    with torch.no_grad():
        expected = reference.encode_image(images)
    assert torch.allclose(out.tokens[:, 0] @ reference.visual.proj, expected, atol=1e-5)


def test_hf_directory_roundtrip_matches_pooler_output(hf_clip_files):
    from transformers import CLIPVisionModel

    enc = VisionEncoder(VisionEncoderConfig(**hf_clip_files, pooling=PoolingConfig(type="mean"))).eval()
    images = _images()
    out = enc(images)
    assert out.tokens.shape == (2, 17, 64) and out.pooled.shape == (2, 64)
    assert torch.allclose(out.pooled, out.tokens.mean(dim=1), atol=1e-6)
    assert torch.equal(enc(images).pooled, out.pooled)
    reference = CLIPVisionModel.from_pretrained(hf_clip_files["model_name"]).eval()
    with torch.no_grad():
        assert torch.allclose(out.tokens[:, 0], reference(pixel_values=images).pooler_output, atol=1e-5)


def _grad_names(enc: VisionEncoder) -> set[str]:
    enc.train()
    pooled = enc(_images()).pooled
    # a random weighting: the plain sum of a LayerNorm output has zero gradient
    (pooled * torch.randn(pooled.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    return {n for n, p in enc.backbone.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_freezing_frozen_all_and_last_k(open_clip_files):
    frozen = VisionEncoder(
        VisionEncoderConfig(**open_clip_files, pooling=PoolingConfig(type="attention", num_heads=2))
    )
    assert _grad_names(frozen) == set()
    assert frozen.pooling.queries.grad is not None  # the pooling head still trains
    assert not frozen.backbone.training  # a frozen backbone stays in eval mode

    last = VisionEncoder(VisionEncoderConfig(**open_clip_files, trainable_blocks=1))
    names = _grad_names(last)
    assert names and all(n.startswith(("transformer.resblocks.1.", "ln_post.")) for n in names)
    trainable = {n for n, p in last.backbone.named_parameters() if p.requires_grad}
    assert trainable == names  # exactly the last block and the final norm, and all of them get gradients

    everything = VisionEncoder(
        VisionEncoderConfig(**open_clip_files, trainable_blocks=-1, grad_checkpointing=True)
    )
    names = _grad_names(everything)
    assert names == {n for n, p in everything.backbone.named_parameters()}  # no unused weights (DDP-safe)


def test_hf_last_k_trains_exactly_those_layers(hf_clip_files):
    enc = VisionEncoder(VisionEncoderConfig(**hf_clip_files, trainable_blocks=1))
    names = _grad_names(enc)
    assert names == {n for n, p in enc.backbone.named_parameters() if p.requires_grad}
    assert names and all(".layers.1." in n or "post_layernorm" in n for n in names)


def test_bad_inputs_and_names(open_clip_files, hf_clip_files):
    enc = VisionEncoder(VisionEncoderConfig(**open_clip_files))
    with pytest.raises(EncoderError, match="3, 32, 32"):
        enc(torch.randn(1, 1, 32, 32))
    with pytest.raises(EncoderError, match="expects 32x32"):
        enc(torch.randn(1, 3, 64, 64))
    with pytest.raises(EncoderError, match="open_clip.list_models"):
        VisionEncoder(VisionEncoderConfig(model_name="ViT-Nope-99", pretrained=""))
    with pytest.raises(EncoderError, match="neither a checkpoint file nor a tag"):
        VisionEncoder(dataclasses.replace(VisionEncoderConfig(**open_clip_files), pretrained="/no/such.pt"))
    with pytest.raises(EncoderError, match="^trainable_blocks=5 is out of range: .* 1..2 "):
        VisionEncoderConfig(**open_clip_files, trainable_blocks=5).build()  # the depth is known at build
    with pytest.raises(EncoderError, match="^model_config_file='/no/such.json' does not exist"):
        dataclasses.replace(VisionEncoderConfig(**open_clip_files), model_config_file="/no/such.json").build()
    with pytest.raises(EncoderError, match="^model_name='/no/such/dir' is not a loadable CLIPVisionModel"):
        VisionEncoder(VisionEncoderConfig(backend="hf", model_name="/no/such/dir", pretrained=""))


def test_pooling_none_returns_tokens_only(open_clip_files):
    bare = VisionEncoderConfig(**open_clip_files, pooling=PoolingConfig(type="none")).build().eval()
    assert bare.pooling is None and not any(n.startswith("pooling.") for n, _ in bare.named_parameters())
    out = bare(_images())
    assert out.pooled is None and out.tokens.shape == (2, 17, 64) and out.mask.all()
    reference = VisionEncoderConfig(**open_clip_files).build().eval()(_images())
    assert torch.equal(out.tokens, reference.tokens)


def test_local_open_clip_checkpoint_loads_its_weights_without_a_random_init_warning(tmp_path, caplog):
    from eg_encoders import debug

    with caplog.at_level("WARNING"):
        files = debug.write_open_clip_vit(str(tmp_path), seed=3)
        enc = VisionEncoderConfig(**files).build()
    assert not [r for r in caplog.records if "pretrained" in r.getMessage()], caplog.text
    saved = torch.load(files["pretrained"], weights_only=True)
    visual = {k.removeprefix("visual."): v for k, v in saved.items() if k.startswith("visual.")}
    loaded = enc.backbone.state_dict()
    assert set(loaded) == set(visual) - {"proj"}  # the CLIP projection is dropped, nothing else
    assert all(torch.equal(loaded[k], visual[k]) for k in loaded)
    fresh = VisionEncoderConfig(**debug.write_open_clip_vit(str(tmp_path / "other"), seed=4)).build()
    assert not torch.equal(fresh.backbone.conv1.weight, enc.backbone.conv1.weight)  # seeds differ
