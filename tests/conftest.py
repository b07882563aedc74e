"""Shared fixtures of the cross-package tests: the demo dataset (built once per session) and tiny
stage-1 configs derived from configs/demo.yaml, written into a test's own folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
TRAIN_SCRIPT = REPO / "apps" / "train" / "__main__.py"
EVALUATE_SCRIPT = REPO / "apps" / "evaluate" / "__main__.py"


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo dataset (1,797 spoken digits) at the demo's 32 px, built once per test session."""
    from eg_data import build_demo_dataset

    out = tmp_path_factory.mktemp("demo_data") / "demo"
    build_demo_dataset(out, image_size=32, seed=0)
    return out


def tiny_config(workdir: Path, data: Path, **overrides: Any) -> dict[str, Any]:
    """configs/demo.yaml shrunk to a CI-sized run inside `workdir` (models written there on first use)."""
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    models = workdir / "models"
    cfg["experiment_name"] = "tiny"
    cfg["demo_models"].update(
        dir=str(models),
        vision_width=32,
        audio_width=32,
        text_width=32,
        vision_layers=1,
        audio_layers=1,
        text_layers=1,
        n_audio_ctx=150,
    )
    cfg["data"].update(build_demo="", val_dir=str(data / "val"), test_dir=str(data / "test"))
    cfg["data"]["train"].update(shard_dir=str(data / "train"), batch_size=16, num_workers=0)
    vit = "eg-debug-vit-i32-p8-w32-l1"
    cfg["model"]["vision"]["encoder"].update(
        model_name=vit,
        pretrained=str(models / "vision" / f"{vit}.pt"),
        model_config_file=str(models / "vision" / f"{vit}.json"),
    )
    cfg["model"]["audio"]["encoder"]["model_name"] = str(models / "audio" / "eg-debug-whisper.pt")
    cfg["model"]["audio"]["resampler"].update(dim=32, num_latents=4, dim_head=16)
    cfg["model"]["text"]["encoder"]["model_name"] = str(models / "text")
    cfg["model"]["projection"]["max_dim"] = 32
    cfg["losses"]["mrl_dims"] = [8, 16, 32]
    cfg["train"].update(max_steps=4, val_every=2, save_every=2, log_every=1, progress_bar=False)
    cfg["eval"].update(batch_size=60, plot_max_points=40)
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return cfg


def write_config(workdir: Path, cfg: dict[str, Any], name: str = "tiny.yaml") -> Path:
    """Write `cfg` as YAML into `workdir`."""
    path = workdir / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def app_env() -> dict[str, str]:
    """The environment of an app subprocess: offline, one thread (2 shared cores), bytecode caches on (a
    machine-wide PYTHONDONTWRITEBYTECODE would make every app recompile torch and transformers: ~9 s)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {
        **env,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def run_app(script: Path, args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run an app script with this interpreter in `cwd`; returns the completed process (text output)."""
    return subprocess.run(
        [sys.executable, str(script), *args],
        check=False,
        cwd=cwd,
        env=app_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def copy_split(src: Path, dst: Path, num_samples: int, per_shard: int) -> Path:
    """The first `num_samples` samples of the shard folder `src`, rewritten into `dst` as shards of
    `per_shard` samples (the last one shorter): uneven, e.g. prime-sized, held-out splits."""
    import webdataset as wds
    from eg_data import ShardInfo, read_all
    from eg_data.shards import write_index

    dst.mkdir(parents=True, exist_ok=True)
    samples = read_all(src)[:num_samples]
    assert len(samples) == num_samples, f"{src} has only {len(samples)} samples"
    shards = []
    for start in range(0, num_samples, per_shard):
        chunk = samples[start : start + per_shard]
        name = f"shard-{len(shards):05d}.tar"
        with wds.TarWriter(str(dst / name), encoder=False, mtime=0) as writer:
            for sample in chunk:
                writer.write({k: v for k, v in sample.items() if k != "__url__"})
        shards.append(ShardInfo(path=name, num_samples=len(chunk)))
    write_index(dst, shards)
    return dst


def kill_train_at_step(config: Path, cwd: Path, latest: Path, min_step: int, poll_s: float = 0.1) -> int:
    """Start `apps/train --config config` in `cwd`, SIGKILL it once `latest` (its checkpoint_latest.pt)
    holds a step >= `min_step`, and return the step of the checkpoint the killed run left."""
    import signal
    import time

    import torch

    proc = subprocess.Popen(
        [sys.executable, str(TRAIN_SCRIPT), "--config", str(config)],
        cwd=cwd,
        env=app_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and latest.stat().st_size > 0:
            try:
                step = torch.load(latest, map_location="cpu", weights_only=True)["step"]
            except (OSError, RuntimeError, EOFError):  # caught mid-replace: look again
                step = -1
            if step >= min_step:
                break
        time.sleep(poll_s)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return int(torch.load(latest, map_location="cpu", weights_only=True)["step"])


def run_torchrun(
    config: Path, cwd: Path, nproc: int = 2, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node N apps/train/__main__.py --config config` in `cwd` (gloo on
    CPU), with the apps' environment; returns the completed process (text output)."""
    import shutil

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    return subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node",
            str(nproc),
            str(TRAIN_SCRIPT),
            "--config",
            str(config),
        ],
        check=False,
        cwd=cwd,
        env=app_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
