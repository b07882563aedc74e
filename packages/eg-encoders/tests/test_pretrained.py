"""Export folders with eg-encoders alone: tiny random-init towers (open_clip ViT, Whisper, sentence-BERT)
written through `save_pretrained` and loaded back with `AlignedEncoders.from_pretrained` embed exactly as
the towers did (preprocessing computed here by hand); same weights, same bytes; a folder missing a file,
weights that do not match the config and a dim not trained are one-line PretrainedErrors naming them."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from eg_encoders import AlignedEncoders, EncoderError, PretrainedError, debug
from eg_encoders.audio import AudioEncoderConfig, WhisperEncoderDims
from eg_encoders.matryoshka import MatryoshkaConfig
from eg_encoders.pooling import PoolingConfig
from eg_encoders.pretrained import preprocess_entry, save_pretrained
from eg_encoders.text import TextEncoderConfig
from eg_encoders.tower import build_tower
from eg_encoders.vision import VisionEncoderConfig
from PIL import Image
from safetensors.torch import load_file, save_file

DIMS = [8, 16]


def _write(folder: Path, tmp: Path) -> torch.nn.ModuleDict:
    """Towers built from debug backbones, written to `folder` as an export; returns the towers."""
    torch.manual_seed(0)
    vit = debug.write_open_clip_vit(str(folder / "backbones" / "vision"), width=32, layers=1)
    whisper = debug.write_whisper(str(tmp / "whisper"), n_audio_ctx=50, width=32, layers=1)
    text = debug.write_sentence_transformer(str(folder / "backbones" / "text"), width=32, layers=1)
    projection = MatryoshkaConfig(max_dim=16)
    cfgs = {
        "vision": VisionEncoderConfig(
            **vit, pooling=PoolingConfig(type="attention", num_queries=1, num_heads=2)
        ),
        "audio": AudioEncoderConfig(**whisper, pooling=PoolingConfig(type="mean")),
        "text": TextEncoderConfig(**text),
    }
    towers = torch.nn.ModuleDict({k: build_tower(k, c, projection) for k, c in cfgs.items()})
    backbone = towers["audio"].encoder.backbone
    entries = {}
    for name, cfg in cfgs.items():
        enc, paths = dataclasses.replace(cfg), []
        if name == "vision":
            enc.pretrained = ""
            enc.model_config_file = str(Path(cfg.model_config_file).relative_to(folder))
            paths = ["model_config_file"]
        elif name == "audio":
            ctx, width = backbone.positional_embedding.shape
            enc.model_name = ""
            enc.dims = WhisperEncoderDims(
                n_mels=80, n_audio_ctx=int(ctx), n_audio_state=int(width), n_audio_head=2, n_audio_layer=1
            )
        else:
            enc.model_name = str(Path(cfg.model_name).relative_to(folder))
            paths = ["model_name"]
        entry = {"encoder": dataclasses.asdict(enc), "folder_paths": paths, "resampler": None}
        if preprocess_entry(towers[name]) is not None:
            entry["preprocess"] = preprocess_entry(towers[name])
        entries[name] = entry
    config = {"towers": entries, "projection": dataclasses.asdict(projection), "dims": DIMS, "batch_size": 3}
    save_pretrained(folder, towers, config)
    return towers.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("export") / "model"
    towers = _write(folder, tmp_path_factory.mktemp("scratch"))
    return {"folder": folder, "towers": towers}


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(4)]


@torch.no_grad()
def test_loaded_folder_embeds_as_the_towers(exported: dict) -> None:
    """Every modality at every dim: the loaded model equals the written towers on hand-made inputs."""
    from whisper.audio import log_mel_spectrogram

    towers, model = exported["towers"], AlignedEncoders.from_pretrained(exported["folder"])
    assert model.dims == DIMS and model.modalities == ["vision", "audio", "text"]
    images = _images()
    mean, std = np.array(debug_mean()), np.array(debug_std())
    pixels = torch.stack(
        [torch.from_numpy(((np.asarray(i) / 255.0 - mean) / std).transpose(2, 0, 1)).float() for i in images]
    )  # (4, 3, 32, 32)
    waves = [
        np.random.default_rng(s).standard_normal(8000 + 1000 * s).astype(np.float32) * 0.1 for s in range(4)
    ]
    n_samples = 2 * 50 * 160
    padded = torch.zeros(4, n_samples)
    for i, w in enumerate(waves):
        padded[i, : len(w)] = torch.from_numpy(w)
    mels = torch.stack([log_mel_spectrogram(p, n_mels=80) for p in padded])  # (4, 80, 100)
    mask = torch.arange(100)[None] < torch.tensor([-(-len(w) // 160) for w in waves])[:, None]  # (4, 100)
    texts = ["a small seven", "two", "a large one", "nine"]
    expected = {
        "vision": towers["vision"]({"image": pixels}),
        "audio": towers["audio"]({"audio": mels, "audio_mask": mask}),
        "text": towers["text"]({"text": texts}),
    }
    for dim in DIMS:
        got = {
            "vision": model.embed_images(images, dim=dim),
            "audio": model.embed_audio(waves, dim=dim),
            "text": model.embed_texts(texts, dim=dim),
        }
        for name, z in got.items():
            assert z.shape == (4, dim)
            torch.testing.assert_close(z, F.normalize(expected[name][:, :dim], dim=-1), atol=1e-6, rtol=0)


def debug_mean() -> list[float]:
    return [0.48145466, 0.4578275, 0.40821073]  # open_clip's OpenAI mean, the debug ViT's


def debug_std() -> list[float]:
    return [0.26862954, 0.26130258, 0.27577711]


def test_same_weights_same_bytes_and_reexport(exported: dict, tmp_path: Path) -> None:
    """Writing the loaded model again gives byte-identical safetensors (and the same config)."""
    model = AlignedEncoders.from_pretrained(exported["folder"])
    config = json.loads((exported["folder"] / "config.json").read_text())
    again = tmp_path / "again"
    shutil.copytree(exported["folder"] / "backbones", again / "backbones")
    keep = {k: v for k, v in config.items() if k not in ("format", "format_version", "weights_sha256")}
    written = save_pretrained(again, model.towers, keep)
    assert (again / "model.safetensors").read_bytes() == (
        exported["folder"] / "model.safetensors"
    ).read_bytes()
    assert written == config


def test_untrained_dim_and_missing_tower_input_refused(exported: dict) -> None:
    model = AlignedEncoders.from_pretrained(exported["folder"])
    with pytest.raises(EncoderError, match=r"dim=12 was not trained; use one of \[8, 16\]"):
        model.embed_texts(["a"], dim=12)


def _copy(exported: dict, tmp_path: Path) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(exported["folder"], folder)
    return folder


def test_missing_files_are_named(exported: dict, tmp_path: Path) -> None:
    folder = _copy(exported, tmp_path)
    shutil.rmtree(folder / "backbones" / "text")
    with pytest.raises(PretrainedError, match=r"backbones/text: missing \(towers.text.encoder.model_name"):
        AlignedEncoders.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(PretrainedError, match=r"copy/model.safetensors: missing"):
        AlignedEncoders.from_pretrained(folder)
    (folder / "config.json").unlink()
    with pytest.raises(PretrainedError, match=r"copy/config.json: missing"):
        AlignedEncoders.from_pretrained(folder)
    with pytest.raises(PretrainedError, match="not an export folder"):
        AlignedEncoders.from_pretrained(tmp_path / "nowhere")


def test_weights_not_matching_the_config_are_named(exported: dict, tmp_path: Path) -> None:
    folder = _copy(exported, tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    key = "vision.projection.proj.weight"
    wrong = dict(state)
    wrong[key] = torch.zeros(3, 3)
    save_file(wrong, str(folder / "model.safetensors"))
    with pytest.raises(PretrainedError, match=rf"model.safetensors: {key} has shape \(3, 3\)"):
        AlignedEncoders.from_pretrained(folder)
    fewer = {k: v for k, v in state.items() if k != key}
    save_file(fewer, str(folder / "model.safetensors"))
    with pytest.raises(PretrainedError, match=rf"model.safetensors: {key} is missing"):
        AlignedEncoders.from_pretrained(folder)
    more = {**state, "vision.extra": torch.zeros(1)}
    save_file(more, str(folder / "model.safetensors"))
    with pytest.raises(PretrainedError, match=r"vision.extra is not a weight of the configured towers"):
        AlignedEncoders.from_pretrained(folder)


def test_onnx_graphs_equal_torch_at_any_batch(exported: dict, tmp_path: Path) -> None:
    """fp32 graphs under onnxruntime equal the loaded model's embeddings (atol 1e-4) on a batch size and
    text lengths other than the traced ones; the int8 copy is smaller and close."""
    pytest.importorskip("onnxruntime")
    from eg_encoders.onnx_export import export_onnx, quantize_int8, run_onnx, text_features
    from eg_encoders.preprocess import audio_log_mel, image_pixels

    model = AlignedEncoders.from_pretrained(exported["folder"])
    paths = export_onnx(model, tmp_path, 8)
    assert sorted(p.name for p in paths.values()) == ["audio_8.onnx", "text_8.onnx", "vision_8.onnx"]
    images = _images()[:3]
    waves = [
        np.random.default_rng(s).standard_normal(3000 * (s + 1)).astype(np.float32) * 0.1 for s in range(3)
    ]
    texts = ["a small seven upright", "two", "a large one"]
    spec = model.audio_preprocess
    mels, masks = zip(*(audio_log_mel(w, spec) for w in waves))
    feeds = {
        "vision": {"pixels": torch.stack([image_pixels(i, model.image_preprocess) for i in images])},
        "audio": {"mel": torch.stack(mels), "mask": torch.stack(masks)},
        "text": text_features(model, texts),
    }
    expected = {
        "vision": model.embed_images(images, dim=8),
        "audio": model.embed_audio(waves, dim=8),
        "text": model.embed_texts(texts, dim=8),
    }
    for name, path in paths.items():
        got = torch.from_numpy(run_onnx(path, feeds[name]))
        assert got.shape == (3, 8)
        torch.testing.assert_close(got, expected[name], atol=1e-4, rtol=0)
        small = quantize_int8(path)
        assert small.stat().st_size < path.stat().st_size
        assert float((torch.from_numpy(run_onnx(small, feeds[name])) - expected[name]).abs().max()) < 0.1
