"""The stage-2 Qwen demo's terminal holds only our own lines: configs/demo_qa_qwen.yaml (8-bit Qwen on the
CPU, LoRA on all linear layers, the tiny Qwen2 written by the run itself) at tiny size through apps/train.

Third-party noise it used to show: bitsandbytes' "Failed to load CPU gemm_4bit_forward from
kernels-community" (logged while bitsandbytes imports on CPUs with AVX512-BF16), transformers 5's
FutureWarning for the `is_gradient_checkpointing` alias that peft reads when it wraps the model, and the
"Loading weights" / "Writing model shards" bars of from_pretrained / save_pretrained."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qa_helpers import TRAIN_SCRIPT, qa_config, run_app, write_config

NOISE = (
    "Warning",
    "warnings.warn",
    "kernels",
    "gemm_4bit",
    "Loading weights",
    "Writing model shards",
    "it/s]",
)


@pytest.mark.slow
def test_qwen_demo_start_prints_only_our_lines(tmp_path: Path, qa_space: dict) -> None:
    cfg = qa_config(qa_space, "qwen", tmp_path, **{"train.max_steps": 1, "train.val_every": 1})
    assert cfg["model"]["decoder"]["qwen"]["quantization"] == "8bit" and cfg["demo_qwen"]
    done = run_app(TRAIN_SCRIPT, ["--config", str(write_config(tmp_path, cfg))], tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""  # warnings, logging records and progress bars all go to stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("note: bitsandbytes computes the 8-bit matmuls in float16")  # ours
    noisy = [line for line in lines if any(word in line for word in NOISE)]
    assert not noisy, noisy
    # bitsandbytes is named only in our own note line
    assert [line for line in lines if "bitsandbytes" in line] == lines[:1]
    assert (tmp_path / "qwen" / "model.safetensors").is_file()  # the run wrote its tiny Qwen2 itself
