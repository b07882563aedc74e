"""Every encoder config checks itself when constructed: defaults valid, MISSING skipped, bad values refused
with one line that starts with the key as the dataclass names it (no prefix), before anything is loaded."""

from __future__ import annotations

import dataclasses

import pytest
from eg_encoders import (
    AudioEncoderConfig,
    EncoderError,
    MatryoshkaConfig,
    PoolingConfig,
    TextEncoderConfig,
    VisionEncoderConfig,
    WhisperEncoderDims,
)

CONFIGS = [VisionEncoderConfig, AudioEncoderConfig, TextEncoderConfig, PoolingConfig, MatryoshkaConfig]


@pytest.mark.parametrize("cls", [*CONFIGS, WhisperEncoderDims])
def test_defaults_are_valid_and_missing_values_wait(cls):
    cls()
    missing = {f.name: "???" for f in dataclasses.fields(cls) if f.type in ("int", "str", "float")}
    cls(**missing)  # omegaconf.MISSING everywhere a plain value goes: no check fires yet


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: VisionEncoderConfig(backend="timm"),
            "backend='timm' is not supported; choose one of ['open_clip', 'hf']",
        ),
        (
            lambda: VisionEncoderConfig(trainable_blocks=-2),
            "trainable_blocks=-2 is out of range: use 0 (frozen), -1 (train all) or k >= 1 (train the last k blocks)",
        ),
        (
            lambda: VisionEncoderConfig(model_name=""),
            "model_name is empty; name an open_clip model or a CLIPVisionModel",
        ),
        (
            lambda: VisionEncoderConfig(backend="hf", model_name="openai/clip-vit-base-patch32"),
            (
                "pretrained='openai' is an open_clip setting; set it to '' for backend 'hf' "
                "(put the hub id or local directory in model_name)"
            ),
        ),
        (
            lambda: AudioEncoderConfig(trainable_blocks=1.5),
            "trainable_blocks=1.5 is out of range: use 0 (frozen), -1 (train all) or k >= 1 (train the last k blocks)",
        ),
        (
            lambda: AudioEncoderConfig(dims=WhisperEncoderDims()),
            (
                "model_name='base' and dims are both set; set model_name='' for a random-init encoder, "
                "or dims=null to load a model"
            ),
        ),
        (
            lambda: AudioEncoderConfig(model_name=""),
            (
                "model_name is empty and dims is null; name a Whisper model or a .pt checkpoint, "
                "or set dims for a random-init encoder"
            ),
        ),
        (lambda: WhisperEncoderDims(n_mels=64), "n_mels must be 80 or 128 (Whisper's log-mel sizes), got 64"),
        (lambda: WhisperEncoderDims(n_audio_head=3), "n_audio_head=3 must divide n_audio_state=512"),
        (lambda: WhisperEncoderDims(n_audio_layer=0), "n_audio_layer must be >= 1, got 0"),
        (lambda: TextEncoderConfig(max_seq_length=-1), "max_seq_length must be >= 0, got -1"),
        (
            lambda: TextEncoderConfig(model_name=""),
            "model_name is empty; name a sentence-transformers model or directory",
        ),
        (lambda: PoolingConfig(num_heads=0), "num_heads must be >= 1, got 0"),
        (lambda: MatryoshkaConfig(max_dim=0), "max_dim must be >= 1, got 0"),
    ],
)
def test_bad_values_are_refused_at_construction(build, message):
    with pytest.raises(EncoderError) as error:
        build()
    assert str(error.value) == message


def test_each_config_builds_its_component(open_clip_files, whisper_files, sbert_files):
    from eg_encoders import AudioEncoder, TextEncoder, VisionEncoder

    assert isinstance(VisionEncoderConfig(**open_clip_files).build(), VisionEncoder)
    assert isinstance(AudioEncoderConfig(**whisper_files).build(), AudioEncoder)
    assert isinstance(TextEncoderConfig(**sbert_files).build(), TextEncoder)
