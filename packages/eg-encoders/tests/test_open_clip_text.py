"""open_clip text tower and CLIP's own projections: a tiny CLIP saved and loaded back through the public path,
compared with open_clip's own encode_text / encode_image on the same tokens and pixels."""

from __future__ import annotations

import open_clip
import pytest
import torch
from eg_encoders import EncoderError, MatryoshkaConfig, TextEncoderConfig, VisionEncoderConfig

TEXTS = ["a photo of a red square", "hello", ""]


@pytest.fixture(scope="module")
def reference(open_clip_clip_files):
    """The same checkpoint loaded by open_clip alone, and its tokenizer."""
    files = open_clip_clip_files
    open_clip.add_model_config(files["model_config_file"])
    model = open_clip.create_model(files["model_name"], pretrained=files["pretrained"]).eval()
    return model, open_clip.get_tokenizer(files["model_name"])


def test_text_tower_equals_open_clip_encode_text(open_clip_clip_files, reference):
    model, tokenizer = reference
    config = TextEncoderConfig(**open_clip_clip_files)
    encoder = config.build().eval()
    assert (encoder.output_dim, encoder.pooled_dim, config.pooled_width()) == (64, 32, 32)  # width, embed_dim
    ids = tokenizer(TEXTS)  # (3, 32)
    assert torch.equal(encoder.tokenize(TEXTS), ids)
    out = encoder(TEXTS)
    assert out.tokens.shape == (3, 32, 64) and out.pooled.shape == (3, 32)
    # <start> a photo of a red square <end> = 8 tokens; <start> hello <end> = 3; <start> <end> = 2
    assert out.mask.sum(dim=1).tolist() == [8, 3, 2]
    with torch.no_grad():
        expected = model.encode_text(ids)
        # tokens: open_clip's own intermediates after ln_final, read through its public forward_intermediates
        inter = model.forward_intermediates(text=ids, text_indices=1, normalize_intermediates=True)
    assert torch.allclose(out.pooled, expected, atol=1e-6)
    last = inter["text_intermediates"][-1]  # (3, 32, 64), before ln_final
    assert torch.allclose(out.tokens, model.ln_final(last), atol=1e-5)
    # pooled is the end-of-text token's feature times the text projection (hand-picked index: 8th token)
    assert torch.allclose(out.pooled[0], out.tokens[0, 7] @ model.text_projection, atol=1e-6)
    names = {k for k, _ in encoder.named_parameters()}
    assert not any(k.startswith("model.visual") or "logit_scale" in k for k in names)


def test_text_tower_trains_every_weight_or_none(open_clip_clip_files):
    trainable = (
        TextEncoderConfig(**open_clip_clip_files, trainable=True, grad_checkpointing=True).build().train()
    )
    pooled = trainable(TEXTS).pooled
    (pooled * torch.randn(pooled.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    params = dict(trainable.named_parameters())
    assert params and all(p.grad is not None for p in params.values())  # every weight is used (DDP-safe)
    frozen = TextEncoderConfig(**open_clip_clip_files).build().train()
    assert not frozen.model.training and not frozen(TEXTS).pooled.requires_grad


def test_vision_clip_projection_equals_open_clip_encode_image(open_clip_clip_files, reference):
    model, _ = reference
    config = VisionEncoderConfig(**open_clip_clip_files, clip_projection=True, trainable_blocks=1)
    encoder = config.build().eval()
    assert (encoder.output_dim, encoder.pooled_dim, config.pooled_width()) == (64, 32, 32)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = encoder(images)
        expected = model.encode_image(images)
    assert torch.allclose(out.pooled, expected, atol=1e-5)
    assert encoder.backbone.proj.requires_grad  # it follows the last trained block
    plain = VisionEncoderConfig(**open_clip_clip_files).build()
    assert (
        plain.backbone.proj is None
        and plain.pooled_dim == 64 == VisionEncoderConfig(**open_clip_clip_files).pooled_width()
    )


def test_identity_projection_passes_the_embedding_through():
    head = MatryoshkaConfig(max_dim=32, identity=True).build(32)
    x = torch.randn(4, 32)
    assert torch.equal(head(x), x) and not list(head.parameters())
    with pytest.raises(EncoderError, match=r"max_dim=16 differs from the encoder's output width 32"):
        MatryoshkaConfig(max_dim=16, identity=True).build(32)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda f: TextEncoderConfig(model_name="x", pretrained="openai"),
            r"^pretrained='openai' is an open_clip",
        ),
        (lambda f: TextEncoderConfig(**f, max_seq_length=8), r"^max_seq_length=8 is a sentence_transformers"),
        (lambda f: TextEncoderConfig(backend="clip", model_name="x"), r"^backend='clip' is not supported"),
        (
            lambda f: VisionEncoderConfig(backend="hf", model_name="x", pretrained="", clip_projection=True),
            r"^clip_projection",
        ),
        (lambda f: MatryoshkaConfig(identity=True, hidden_dim=8), r"^hidden_dim=8: identity"),
        (
            lambda f: TextEncoderConfig(**{**f, "pretrained": "laion2b"}).build(),
            r"^pretrained='laion2b' is neither",
        ),
        (
            lambda f: TextEncoderConfig(backend="open_clip", model_name="no-such-clip").build(),
            r"^model_name='no-such-clip'",
        ),
    ],
)
def test_bad_open_clip_text_settings_name_the_key(open_clip_clip_files, make, match):
    with pytest.raises(EncoderError, match=match):
        make(dict(open_clip_clip_files))
