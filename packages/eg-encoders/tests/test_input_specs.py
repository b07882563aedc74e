"""An encoder's input spec is known from its config alone (no weights loaded, nothing downloaded), and it is
the spec of the encoder that `build()` then makes: VisionEncoderConfig.image_size(),
AudioEncoderConfig.n_mels() / n_samples()."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from eg_encoders import AudioEncoderConfig, EncoderError, VisionEncoderConfig, WhisperEncoderDims, debug


def test_open_clip_debug_files_give_the_built_size(open_clip_files, tmp_path):
    config = VisionEncoderConfig(**open_clip_files)
    assert config.image_size() == 32 == config.build().image_spec.size
    other = VisionEncoderConfig(**debug.write_open_clip_vit(str(tmp_path), image_size=48, patch_size=16))
    assert other.image_size() == 48 == other.build().image_spec.size


@pytest.mark.parametrize(
    ("model_name", "size"),
    [("ViT-B-32", 224), ("ViT-B/32", 224), ("ViT-L-14-336", 336), ("ViT-B-16-plus-240", 240)],
)
def test_open_clip_registry_names_without_download(model_name, size):
    assert VisionEncoderConfig(model_name=model_name, pretrained="").image_size() == size


def test_open_clip_registry_name_matches_a_random_init_build():
    config = VisionEncoderConfig(model_name="ViT-S-32", pretrained="")  # ViT-S-32 is small: 1 s on CPU
    assert config.image_size() == config.build().image_spec.size == 224


def test_open_clip_local_dir_and_sources_that_cannot_be_known(tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    cfg = {"embed_dim": 64, "vision_cfg": {"image_size": [64, 64], "patch_size": 8}, "text_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    assert VisionEncoderConfig(model_name=f"local-dir:{folder}", pretrained="").image_size() == 64
    unknown = [
        VisionEncoderConfig(model_name="no-such-model", pretrained=""),
        VisionEncoderConfig(model_name=f"local-dir:{tmp_path / 'missing'}", pretrained=""),
        VisionEncoderConfig(model_name="hf-hub:org/not-cached", pretrained="", cache_dir=str(tmp_path)),
        VisionEncoderConfig(model_name="???"),
    ]
    assert [c.image_size() for c in unknown] == [None, None, None, None]


def test_open_clip_model_config_file_wins_for_its_stem_only(open_clip_files, tmp_path):
    config_file = open_clip_files["model_config_file"]
    stem_not_used = VisionEncoderConfig(
        model_name="ViT-L-14-336", pretrained="", model_config_file=config_file
    )
    assert stem_not_used.image_size() == 336  # registered, but model_name picks the built-in config
    with pytest.raises(EncoderError, match=r"^model_config_file='.*nope.json' does not exist$"):
        VisionEncoderConfig(model_name="nope", model_config_file=str(tmp_path / "nope.json")).image_size()


def test_hf_directories_and_uncached_hub_ids(hf_clip_files, tmp_path):
    config = VisionEncoderConfig(**hf_clip_files)
    assert config.image_size() == 32 == config.build().image_spec.size
    full = tmp_path / "full-clip"  # a whole CLIPConfig: the vision tower's settings are nested
    full.mkdir()
    (full / "config.json").write_text(
        json.dumps({"model_type": "clip", "vision_config": {"image_size": 336}})
    )
    assert VisionEncoderConfig(backend="hf", model_name=str(full), pretrained="").image_size() == 336
    missing = [
        VisionEncoderConfig(
            backend="hf", model_name="openai/clip-vit-large-patch14", pretrained="", cache_dir=str(tmp_path)
        ),
        VisionEncoderConfig(backend="hf", model_name=str(tmp_path / "absent"), pretrained=""),
    ]
    assert [c.image_size() for c in missing] == [None, None]


def test_whisper_checkpoint_dims_and_names(whisper_files, tmp_path):
    config = AudioEncoderConfig(**whisper_files)
    spec = config.build().audio_spec
    assert (config.n_mels(), config.n_samples()) == (spec.n_mels, spec.n_samples) == (80, 64000)  # 4 s
    wide = AudioEncoderConfig(**debug.write_whisper(str(tmp_path), n_mels=128, n_audio_ctx=50))
    spec = wide.build().audio_spec
    assert (wide.n_mels(), wide.n_samples()) == (spec.n_mels, spec.n_samples) == (128, 16000)
    dims = AudioEncoderConfig(
        model_name="", dims=WhisperEncoderDims(n_mels=128, n_audio_ctx=100, n_audio_state=64)
    )
    spec = dims.build().audio_spec
    assert (dims.n_mels(), dims.n_samples()) == (spec.n_mels, spec.n_samples) == (128, 32000)
    released = {
        name: (AudioEncoderConfig(model_name=name).n_mels(), AudioEncoderConfig(model_name=name).n_samples())
        for name in ("base", "large-v2", "large-v3", "turbo")
    }
    assert released == {
        "base": (80, 480000),
        "large-v2": (80, 480000),
        "large-v3": (128, 480000),
        "turbo": (128, 480000),
    }


def test_audio_sources_that_cannot_be_known(tmp_path):
    not_whisper = tmp_path / "not-whisper.pt"
    not_whisper.write_bytes(b"not a checkpoint")
    configs = [
        AudioEncoderConfig(model_name=str(tmp_path / "missing.pt")),
        AudioEncoderConfig(model_name=str(not_whisper)),
        AudioEncoderConfig(model_name="???"),
    ]
    assert [(c.n_mels(), c.n_samples()) for c in configs] == [(None, None)] * 3


def test_specs_from_configs_import_no_backbone_library(open_clip_files, whisper_files):
    """Reading a spec costs no open_clip / whisper / transformers import (seconds each at config load)."""
    script = textwrap.dedent(
        f"""
        import json, sys
        from eg_encoders import AudioEncoderConfig, VisionEncoderConfig
        sizes = [VisionEncoderConfig(model_name="ViT-L-14-336").image_size(),
                 VisionEncoderConfig(**{open_clip_files!r}).image_size(),
                 AudioEncoderConfig(**{whisper_files!r}).n_samples()]
        heavy = [m for m in ("open_clip", "whisper", "transformers", "sentence_transformers") if m in sys.modules]
        print("RESULT " + json.dumps([sizes, heavy]))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    assert json.loads(line.removeprefix("RESULT ")) == [[336, 32, 64000], []]
