"""apps/export on a tiny trained stage-1 model: the folder loads with eg-encoders' AlignedEncoders and
embeds the held-out samples exactly as the apps' Embedder does from the checkpoint (every modality, every
dim); exporting twice gives the same model.safetensors bytes; the model card carries the run's figures;
bad input (no such checkpoint, a checkpoint of another kind, a non-empty output folder) is one line, exit 2."""

from __future__ import annotations

import io
import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: conftest's helpers
from apps.alignment.embed import Embedder
from conftest import REPO, TRAIN_SCRIPT, run_app, tiny_config, write_config

pytestmark = pytest.mark.slow
EXPORT_SCRIPT = REPO / "apps" / "export" / "__main__.py"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> dict:
    """A 4-step tiny model (the demo's three towers, the audio resampler) and its export."""
    workdir = tmp_path_factory.mktemp("export")
    config = write_config(workdir, tiny_config(workdir, demo_data))
    done = run_app(TRAIN_SCRIPT, ["--config", str(config)], workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = workdir / "checkpoints" / "tiny" / "checkpoint_latest.pt"
    out = workdir / "exported"
    done = run_app(EXPORT_SCRIPT, ["--checkpoint", str(checkpoint), "--out", str(out)], workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"workdir": workdir, "checkpoint": checkpoint, "out": out, "stdout": done.stdout}


def test_export_embeds_as_the_embedder(trained: dict, demo_data: Path) -> None:
    from eg_data import read_all
    from eg_data.transforms import decode_audio
    from eg_encoders import AlignedEncoders

    embedder = Embedder.from_checkpoint(trained["checkpoint"])
    model = AlignedEncoders.from_pretrained(trained["out"])
    assert model.dims == embedder.dims == [8, 16, 32]
    samples = read_all(demo_data / "test")[:70]  # more than one batch of eval.batch_size 60
    images = [Image.open(io.BytesIO(s["png"])) for s in samples]
    waves = [decode_audio(s["flac"]) for s in samples]
    texts = [s["txt"].decode() if isinstance(s["txt"], bytes) else s["txt"] for s in samples]
    for dim in model.dims:
        for ours, theirs in (
            (model.embed_images(images, dim=dim), embedder.embed_images(images, dim=dim)),
            (model.embed_audio(waves, dim=dim), embedder.embed_audio(waves, dim=dim)),
            (model.embed_texts(texts, dim=dim), embedder.embed_texts(texts, dim=dim)),
        ):
            assert ours.shape == (70, dim)
            torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_folder_is_self_contained_and_card_has_the_run(trained: dict) -> None:
    out = trained["out"]
    config = json.loads((out / "config.json").read_text())
    assert config["source"]["step"] == 4 and config["pairs"] == ["vision_text", "audio_text", "vision_audio"]
    assert config["towers"]["audio"]["resampler"]["num_latents"] == 4
    assert set(config["versions"]) >= {"eg-encoders", "eg-resampler"}
    for name, tower in config["towers"].items():
        for key in tower["folder_paths"]:
            assert (out / tower["encoder"][key]).exists(), (name, key)
        text = json.dumps(tower["encoder"])
        assert str(trained["workdir"]) not in text, f"{name} reads outside the folder: {text}"
    card = (out / "README.md").read_text()
    eval_report = json.loads((trained["workdir"] / "outputs" / "tiny" / "eval.json").read_text())
    r1 = eval_report["retrieval"]["audio_text"]["16"]["audio_to_text"]["recall@1"]
    assert f"| audio_text | audio_to_text | 16 | {r1:.3f} |" in card
    assert "AlignedEncoders.from_pretrained" in card and "steps: 4" in card
    train_dir = Path(config["run_config"]["data"]["train"]["shard_dir"])
    shards = json.loads((train_dir / "shards.json").read_text())["shards"]  # the index, read by hand
    count = sum(s["num_samples"] for s in shards)
    assert f"- data: `{train_dir}` (data.train.shard_dir): {count:,} samples in {len(shards)} shards" in card
    seen = config["source"]["samples_seen"]
    assert seen == 4 * config["run_config"]["data"]["train"]["batch_size"]
    assert f"- samples drawn in training: {seen:,}" in card


def test_export_twice_same_bytes(trained: dict, tmp_path: Path) -> None:
    again = tmp_path / "again"
    done = run_app(EXPORT_SCRIPT, ["--checkpoint", str(trained["checkpoint"]), "--out", str(again)], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    first = (trained["out"] / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == first


def test_bad_input_is_one_line_exit_2(trained: dict, tmp_path: Path) -> None:
    import shutil

    ckpt = trained["checkpoint"]
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["run_config"] = {**state["run_config"], "stage": "qa"}
    other = tmp_path / "qa.pt"
    torch.save(state, other)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((trained["out"] / "config.json").read_text())
    shutil.copy2(trained["out"] / "model.safetensors", broken / "model.safetensors")
    no_weights = tmp_path / "no_weights"
    shutil.copytree(trained["out"], no_weights)
    (no_weights / "model.safetensors").unlink()
    cases = [
        (
            ["--out", str(trained["out"]), "--onnx", "--dim", "12"],
            r"dim=12 was not trained; use one of \[8, 16, 32\]",
        ),
        (
            ["--out", str(broken), "--onnx"],
            r"broken/backbones/vision/\S+\.json: missing \(towers.vision.encoder.model_config_file names it\)",
        ),
        (["--out", str(no_weights), "--onnx"], r"no_weights/model.safetensors: missing"),
        (["--out", str(tmp_path / "c")], r"--checkpoint is required"),
        (
            ["--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "a")],
            r"none.pt: no such checkpoint",
        ),
        (
            ["--checkpoint", str(other), "--out", str(tmp_path / "b")],
            r"qa.pt: not a stage-1 \(alignment\) checkpoint",
        ),
        (["--checkpoint", str(ckpt), "--out", str(trained["out"])], r"exported: the output folder exists"),
    ]
    for args, pattern in cases:
        done = run_app(EXPORT_SCRIPT, args, tmp_path)
        assert done.returncode == 2, done.stderr[-2000:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
        assert re.search(pattern, lines[0]), lines[0]


def test_apps_read_the_folder_as_the_checkpoint(trained: dict, demo_data: Path, tmp_path: Path) -> None:
    """One loading path: the Embedder and the search index built from the folder equal the checkpoint's."""
    from apps.alignment.search import SearchIndex, search_main

    folder, ckpt = Embedder.from_checkpoint(trained["out"]), Embedder.from_checkpoint(trained["checkpoint"])
    assert folder.fingerprint == ckpt.fingerprint and folder.dims == ckpt.dims
    assert folder.aligned.step == ckpt.aligned.step == 4
    texts = ["a small seven", "one"]
    torch.testing.assert_close(folder.project_texts(texts), ckpt.project_texts(texts), atol=1e-6, rtol=0)
    indexes = {}
    for name, source in (("folder", trained["out"]), ("checkpoint", trained["checkpoint"])):
        indexes[name] = tmp_path / f"{name}.npz"
        argv = ["index", "--checkpoint", str(source), "--shards", str(demo_data / "test")]
        assert search_main([*argv, "--out", str(indexes[name])]) == 0
    a, b = SearchIndex.load(indexes["folder"]), SearchIndex.load(indexes["checkpoint"])
    assert a.keys == b.keys
    torch.testing.assert_close(
        torch.as_tensor(a.embeddings), torch.as_tensor(b.embeddings), atol=1e-6, rtol=0
    )


def test_onnx_report_on_the_test_split(trained: dict, tmp_path: Path) -> None:
    """`--onnx` on the export: graphs and int8 copies written; PyTorch's R@1 equals the run's eval.json,
    onnxruntime fp32 agrees with PyTorch to 1e-4; the printed table carries the figures."""
    out = tmp_path / "model"
    import shutil

    shutil.copytree(trained["out"], out)
    done = run_app(EXPORT_SCRIPT, ["--out", str(out), "--onnx", "--dim", "16"], trained["workdir"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.strip() == "", done.stderr  # no third-party noise
    report = json.loads((out / "onnx" / "report.json").read_text())
    eval_report = json.loads((trained["workdir"] / "outputs" / "tiny" / "eval.json").read_text())
    assert report["samples"] == eval_report["num_samples"] == 180
    for key, value in report["recall@1"]["torch"].items():
        pair, direction = key.split("/")
        assert value == pytest.approx(
            eval_report["retrieval"][pair]["16"][direction]["recall@1"], abs=1e-9
        ), key
    assert max(report["max_abs_diff_fp32_vs_torch"].values()) < 1e-4
    for name in ("vision", "audio", "text"):
        files = report["files"][name]
        assert Path(files["int8"]).is_file() and files["int8_bytes"] < files["fp32_bytes"]
    assert "R@1" in done.stdout and "int8" in done.stdout


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> dict:
    """configs/clip_finetune.yaml's shape at test size: one tiny open_clip CLIP as both towers, 2 steps."""
    from eg_encoders import debug

    workdir = tmp_path_factory.mktemp("export_clip")
    files = debug.write_open_clip_clip(str(workdir / "clip"), width=32, layers=1, embed_dim=16)
    cfg = tiny_config(workdir, demo_data)
    cfg["demo_models"] = None
    cfg["data"]["train"].update(modalities=["image", "text"], required=["image", "text"])
    cfg["model"] = {
        "pairs": ["vision_text"],
        "projection": {"max_dim": 16, "identity": True},
        "vision": {
            "encoder": {**files, "trainable_blocks": -1, "clip_projection": True, "pooling": {"type": "cls"}}
        },
        "text": {"encoder": {**files, "trainable": True}},
    }
    cfg["losses"].update(mrl=0.0, contrastive=1.0, mrl_dims=[16])
    cfg["eval"]["dims"] = [16]
    cfg["train"].update(max_steps=2, val_every=2, save_every=2)
    config = write_config(workdir, cfg)
    done = run_app(TRAIN_SCRIPT, ["--config", str(config)], workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = workdir / "checkpoints" / "tiny" / "checkpoint_latest.pt"
    out = workdir / "exported"
    done = run_app(EXPORT_SCRIPT, ["--checkpoint", str(checkpoint), "--out", str(out)], workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"workdir": workdir, "checkpoint": checkpoint, "out": out}


def test_open_clip_checkpoint_gives_the_exports_features(clip_run: dict, demo_data: Path) -> None:
    """open_clip.create_model_and_transforms(NAME, pretrained=FILE) loads the exported CLIP strictly; its
    encode_image / encode_text (normalized) equal AlignedEncoders' embeddings of the same images and texts,
    and its logit_scale is the trained temperature."""
    import open_clip
    from eg_data import read_all
    from eg_encoders import AlignedEncoders

    out = clip_run["out"]
    config = json.loads((out / "config.json").read_text())
    files = config["open_clip"]
    open_clip.add_model_config(str(out / files["model_config_file"]))
    clip, _, preprocess = open_clip.create_model_and_transforms(
        files["model_name"], pretrained=str(out / files["pretrained"])
    )
    clip.eval()
    tokenizer = open_clip.get_tokenizer(files["model_name"])
    model = AlignedEncoders.from_pretrained(out)
    samples = read_all(demo_data / "test")[:12]
    images = [Image.open(io.BytesIO(s["png"])).convert("RGB") for s in samples]
    texts = [s["txt"].decode() if isinstance(s["txt"], bytes) else s["txt"] for s in samples]
    with torch.no_grad():
        image_features = clip.encode_image(torch.stack([preprocess(i) for i in images]), normalize=True)
        text_features = clip.encode_text(tokenizer(texts), normalize=True)
    torch.testing.assert_close(image_features, model.embed_images(images, dim=16), atol=1e-5, rtol=0)
    torch.testing.assert_close(text_features, model.embed_texts(texts, dim=16), atol=1e-6, rtol=0)
    state = torch.load(clip_run["checkpoint"], map_location="cpu", weights_only=True)["model"]
    log_scale = next(v for k, v in state.items() if k.endswith("log_logit_scale"))
    assert float(clip.logit_scale.detach()) == pytest.approx(float(log_scale), abs=1e-6)
    assert "open_clip.create_model_and_transforms" in (out / "README.md").read_text()


SCRATCH_SCRIPT = """
import importlib.util, sys
import numpy as np, torch
from PIL import Image
from eg_encoders import AlignedEncoders

assert importlib.util.find_spec("apps") is None and importlib.util.find_spec("eg_data") is None
folder, inputs, out = sys.argv[1:]
data = torch.load(inputs, weights_only=True)
model = AlignedEncoders.from_pretrained(folder)
images = [Image.open(p) for p in data["images"]]
result = {}
for dim in model.dims:
    result[dim] = {
        "vision": model.embed_images(images, dim=dim),
        "audio": model.embed_audio([np.asarray(w) for w in data["waves"]], dim=dim),
        "text": model.embed_texts(data["texts"], dim=dim),
    }
torch.save(result, out)
"""


def test_scratch_environment_with_eg_encoders_alone(trained: dict, demo_data: Path, tmp_path: Path) -> None:
    """A fresh environment with only eg-encoders and eg-resampler installed from their folders (uv, offline
    from its cache) loads the export and embeds as the apps' Embedder does (max abs diff <= 1e-6)."""
    import shutil
    import subprocess

    from eg_data import read_all
    from eg_data.transforms import decode_audio

    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    subprocess.run([uv, "venv", "-q", str(venv), "--python", sys.executable], check=True, env=env)
    packages = [str(REPO / "packages" / name) for name in ("eg-encoders", "eg-resampler")]
    done = subprocess.run(
        [uv, "pip", "install", "--offline", "-q", "--python", str(venv / "bin" / "python"), *packages],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"no offline install of eg-encoders' dependencies here: {done.stderr[-300:]}")
    samples = read_all(demo_data / "test")[:20]
    images = []
    for s in samples:
        images.append(tmp_path / f"{s['__key__']}.png")
        images[-1].write_bytes(s["png"])
    waves = [decode_audio(s["flac"]) for s in samples]
    texts = [s["txt"].decode() if isinstance(s["txt"], bytes) else s["txt"] for s in samples]
    torch.save(
        {"images": [str(p) for p in images], "waves": [torch.as_tensor(w) for w in waves], "texts": texts},
        tmp_path / "inputs.pt",
    )
    script = tmp_path / "embed.py"
    script.write_text(SCRATCH_SCRIPT)
    args = [str(trained["out"]), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")]
    done = subprocess.run(
        [str(venv / "bin" / "python"), str(script), *args],
        cwd=tmp_path, env={**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = torch.load(tmp_path / "out.pt", weights_only=True)
    embedder = Embedder.from_checkpoint(trained["checkpoint"])
    for dim, by_modality in result.items():
        torch.testing.assert_close(
            by_modality["vision"], embedder.embed_images(images, dim=dim), atol=1e-6, rtol=0
        )
        torch.testing.assert_close(
            by_modality["audio"], embedder.embed_audio(waves, dim=dim), atol=1e-6, rtol=0
        )
        torch.testing.assert_close(
            by_modality["text"], embedder.embed_texts(texts, dim=dim), atol=1e-6, rtol=0
        )
