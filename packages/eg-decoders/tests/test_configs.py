"""Decoder configs check themselves when constructed: defaults valid, MISSING skipped, bad values refused
with one line that starts with the key as the dataclass names it (no `decoder.` prefix)."""

import dataclasses

import pytest
from eg_decoders import DecoderError, QwenDecoderConfig, TinyDecoderConfig, TRMConfig


@pytest.mark.parametrize("cls", [TRMConfig, TinyDecoderConfig, QwenDecoderConfig])
def test_defaults_are_valid_and_missing_values_wait(cls):
    cls()
    plain = {f.name: "???" for f in dataclasses.fields(cls) if f.type in ("int", "float", "str")}
    cls(**plain)  # omegaconf.MISSING in every plain field: no check fires yet


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TRMConfig(hidden_size=30), "hidden_size 30 must be divisible by num_heads 4"),
        (lambda: TRMConfig(n_cycles=0), "n_cycles must be >= 1, got 0"),
        (lambda: TRMConfig(n_latent_steps=-1), "n_latent_steps must be >= 1, got -1"),
        (lambda: TRMConfig(num_supervision_steps=0), "num_supervision_steps must be >= 1, got 0"),
        (lambda: TRMConfig(halt_threshold=1.5), "halt_threshold must be in [0.0, 1.0], got 1.5"),
        (lambda: TRMConfig(halt_loss_weight=-1.0), "halt_loss_weight must be >= 0, got -1.0"),
        (lambda: TRMConfig(type="tiny"), "type must be 'trm' for TRMConfig, got 'tiny'"),
        (lambda: TinyDecoderConfig(num_layers=0), "num_layers must be >= 1, got 0"),
        (lambda: TinyDecoderConfig(max_seq_len=1), "max_seq_len must be >= 2, got 1"),
        (lambda: TinyDecoderConfig(dropout=1.0), "dropout must be in [0.0, 1.0), got 1.0"),
        (lambda: TinyDecoderConfig(mlp_ratio=0.0), "mlp_ratio must be > 0, got 0.0"),
        (lambda: TinyDecoderConfig(prefix_dim=-1), "prefix_dim must be >= 0, got -1"),
        (
            lambda: TinyDecoderConfig(projector="conv"),
            "projector 'conv' is unknown; use one of ['linear', 'mlp']",
        ),
        (
            lambda: QwenDecoderConfig(quantization="3bit"),
            "quantization '3bit' is unknown; use one of ['none', '8bit', '4bit']",
        ),
        (
            lambda: QwenDecoderConfig(dtype="float8"),
            "dtype 'float8' is unknown; use one of ['bfloat16', 'float16', 'float32']",
        ),
        (lambda: QwenDecoderConfig(lora_r=0), "lora_r must be >= 1, got 0"),
        (lambda: QwenDecoderConfig(lora_dropout=-0.1), "lora_dropout must be in [0.0, 1.0), got -0.1"),
        (
            lambda: QwenDecoderConfig(lora_target_modules=[]),
            "lora_target_modules is empty; use ['all-linear'] or module names",
        ),
        (lambda: QwenDecoderConfig(max_length=1), "max_length must be >= 2, got 1"),
        (
            lambda: QwenDecoderConfig(model_name=""),
            "model_name is empty; name a causal LM (hub id or local directory)",
        ),
    ],
)
def test_bad_values_are_refused_at_construction(build, message):
    with pytest.raises(DecoderError) as error:
        build()
    assert str(error.value) == message


def test_no_lora_needs_no_targets():
    QwenDecoderConfig(use_lora=False, lora_target_modules=[])
