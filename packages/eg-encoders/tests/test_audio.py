"""Audio encoder: tiny Whisper .pt loaded back, equivalence with whisper's encoder, real masking, errors."""

from __future__ import annotations

import pytest
import torch
from eg_encoders import AudioEncoder, AudioEncoderConfig, EncoderError, PoolingConfig, WhisperEncoderDims


def _clip(seconds: float, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(int(16000 * seconds), generator=torch.Generator().manual_seed(seed))


def test_whisper_checkpoint_roundtrip_matches_whisper_encoder(whisper_files):
    import whisper

    enc = AudioEncoder(AudioEncoderConfig(**whisper_files, trim_padding=False)).eval()
    spec = enc.audio_spec
    assert (spec.sample_rate, spec.n_mels, spec.n_frames, spec.n_samples) == (16000, 80, 400, 64000)
    mel = torch.randn(2, 80, 400, generator=torch.Generator().manual_seed(0))
    out = enc(mel)  # no mask: every frame valid
    assert out.tokens.shape == (2, 200, 64) and out.mask.all() and out.pooled.shape == (2, 64)
    with torch.no_grad():
        expected = whisper.load_model(whisper_files["model_name"], device="cpu").encoder(mel)
    assert torch.allclose(out.tokens, expected, atol=1e-4)  # the masked forward is whisper's own forward
    assert torch.equal(enc(mel).pooled, out.pooled)  # deterministic


@pytest.mark.parametrize("pooling", ["mean", "attention"])
@pytest.mark.parametrize("trim", [True, False])
def test_same_clip_any_padding_same_embedding(whisper_files, pooling, trim):
    torch.manual_seed(0)
    config = AudioEncoderConfig(
        **whisper_files, trim_padding=trim, pooling=PoolingConfig(type=pooling, num_heads=2)
    )
    enc = AudioEncoder(config).eval()
    mel, mask = enc.log_mel([_clip(1.0), _clip(2.5, seed=1)])
    assert mask.sum(dim=1).tolist() == [100, 250]
    garbage = mel.clone()
    garbage[~mask.unsqueeze(1).expand_as(mel)] = 7.0  # non-zero content in the padded region
    short = enc(mel[:1, :, :120], mask[:1, :120])  # clip 0 padded to 1.2 s only
    full = enc(garbage, mask)  # clip 0 padded to 4 s, next to a longer clip
    assert short.mask.sum() == full.mask[0].sum() == 50
    assert full.mask[1].sum() == 125
    assert torch.allclose(short.tokens[0, :50], full.tokens[0, :50], atol=1e-5)
    assert torch.allclose(short.pooled[0], full.pooled[0], atol=1e-5)
    alone = enc([_clip(1.0)])  # waveform path, padded to the full context
    assert torch.allclose(alone.pooled[0], full.pooled[0], atol=1e-5)


def test_token_mask_and_trim(whisper_files):
    enc = AudioEncoder(AudioEncoderConfig(**whisper_files)).eval()
    out = enc([_clip(0.5), _clip(0.33)])  # 50 and 33 mel frames
    assert out.tokens.shape[1] == 25  # trimmed to the longest clip
    assert out.mask.sum(dim=1).tolist() == [25, 17]  # ceil(frames / 2)
    assert torch.all(out.tokens[1, 17:] == 0)


def test_long_audio_is_cut_with_counted_warning(whisper_files):
    enc = AudioEncoder(AudioEncoderConfig(**whisper_files)).eval()
    with pytest.warns(UserWarning, match="1 clips cut so far"):
        out = enc([_clip(5.0)])
    assert out.mask.sum() == 200 and enc.num_truncated == 1
    with pytest.warns(UserWarning, match="2 clips cut so far"):
        enc(torch.zeros(1, 80, 500), torch.ones(1, 500, dtype=torch.bool))


def test_empty_and_malformed_audio_errors(whisper_files):
    enc = AudioEncoder(AudioEncoderConfig(**whisper_files))
    with pytest.raises(EncoderError, match="audio sample 1 has 0 samples"):
        enc([_clip(1.0), torch.zeros(0)])
    mask = torch.ones(2, 400, dtype=torch.bool)
    mask[0] = False
    with pytest.raises(EncoderError, match=r"audio samples \[0\] have no valid frames"):
        enc(torch.zeros(2, 80, 400), mask)
    with pytest.raises(EncoderError, match="128"):
        AudioEncoderConfig(model_name="", dims=WhisperEncoderDims(128, 50, 32, 2, 1)).build()(
            torch.zeros(1, 80, 100)
        )
    with pytest.raises(EncoderError, match="^model_name='huge-v9' is neither a Whisper model name"):
        AudioEncoderConfig(model_name="huge-v9").build()


def test_random_init_dims_and_freezing(whisper_files):
    dims = WhisperEncoderDims(n_mels=128, n_audio_ctx=100, n_audio_state=32, n_audio_head=2, n_audio_layer=2)
    enc = AudioEncoderConfig(model_name="", dims=dims, trainable_blocks=1, grad_checkpointing=True).build()
    assert isinstance(enc, AudioEncoder)
    assert enc.audio_spec.n_mels == 128 and enc.audio_spec.n_frames == 200
    out = enc(torch.randn(2, 128, 200), torch.ones(2, 200, dtype=torch.bool))
    (out.pooled * torch.randn(out.pooled.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    with_grad = {
        n for n, p in enc.backbone.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
    }
    assert with_grad == {n for n, p in enc.backbone.named_parameters() if p.requires_grad}
    assert with_grad and all(n.startswith(("blocks.1.", "ln_post.")) for n in with_grad)
    frozen = AudioEncoder(AudioEncoderConfig(**whisper_files))
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    assert not frozen(torch.randn(1, 80, 40)).pooled.requires_grad


def test_pooling_none_returns_tokens_only(whisper_files):
    torch.manual_seed(0)
    pooled = AudioEncoderConfig(**whisper_files, pooling=PoolingConfig(type="attention", num_heads=2)).build()
    bare = AudioEncoderConfig(**whisper_files, pooling=PoolingConfig(type="none")).build()
    assert bare.pooling is None and not any(n.startswith("pooling.") for n, _ in bare.named_parameters())
    mel, mask = bare.log_mel([_clip(1.0), _clip(0.5, seed=1)])
    out, reference = bare.eval()(mel, mask), pooled.eval()(mel, mask)
    assert out.pooled is None
    assert torch.equal(out.tokens, reference.tokens) and torch.equal(out.mask, reference.mask)
    assert out.mask.sum(dim=1).tolist() == [50, 25]


def test_debug_whisper_is_the_same_bytes_for_the_same_seed(tmp_path):
    """Every tensor is drawn from the seed (whisper leaves one uninitialized): the demo models rebuild equal."""
    from eg_encoders.debug import write_whisper

    a = write_whisper(str(tmp_path / "a"), seed=3, width=16, layers=1, n_audio_ctx=20)["model_name"]
    b = write_whisper(str(tmp_path / "b"), seed=3, width=16, layers=1, n_audio_ctx=20)["model_name"]
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read()
