"""Helpers of the stage-2 tests: tiny stage-2 configs derived from the configs/ files, on the stage-1
checkpoint and splits of the `qa_space` fixture (conftest.py). Imported by name (--import-mode=importlib)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))  # --import-mode=importlib: make the root conftest's helpers importable
from conftest import (
    EVALUATE_SCRIPT,
    REPO,
    TRAIN_SCRIPT,
    app_env,
    copy_split,
    kill_train_at_step,
    run_app,
    run_torchrun,
    tiny_config,
    write_config,
)

TINY_DECODERS = {
    "trm": {
        "hidden_size": 32,
        "num_layers": 1,
        "num_heads": 2,
        "n_latent_steps": 2,
        "n_cycles": 2,
        "num_supervision_steps": 2,
        "max_seq_len": 128,
    },
    "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "max_seq_len": 128},
}
DEMO_CONFIG = {"trm": "demo_qa_trm.yaml", "tiny": "demo_qa_baseline.yaml", "qwen": "demo_qa_qwen.yaml"}
TINY_QWEN = {"vocab_size": 320, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "num_kv_heads": 1}


def qa_config(space: dict[str, Path], kind: str, workdir: Path, **overrides: Any) -> dict[str, Any]:
    """configs/demo_qa_<kind>.yaml shrunk to a CI-sized run inside `workdir` on the fixture's stage 1."""
    cfg = yaml.safe_load((REPO / "configs" / DEMO_CONFIG[kind]).read_text())
    cfg["experiment_name"] = f"qa_{kind}"
    cfg["stage1"]["checkpoint"] = str(space["checkpoint"])
    cfg["data"].update(val_dir=str(space["val"]), test_dir=str(space["test"]))
    cfg["data"]["train"].update(shard_dir=str(space["train"]), batch_size=16, num_workers=0)
    if kind == "qwen":
        cfg["demo_qwen"].update(dir=str(workdir / "qwen"), **TINY_QWEN)
        cfg["model"]["decoder"]["qwen"].update(model_name=str(workdir / "qwen"), lora_r=4, lora_alpha=8)
    else:
        cfg["model"]["decoder"][kind].update(TINY_DECODERS[kind])
    cfg["train"].update(max_steps=4, val_every=2, save_every=2, log_every=1, progress_bar=False)
    cfg["eval"].update(batch_size=20, max_new_tokens=4, max_val_samples=6, num_rows=8, print_rows=2)
    return apply(cfg, overrides)


def apply(cfg: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys of a config dict."""
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return cfg


__all__ = [
    "EVALUATE_SCRIPT",
    "REPO",
    "TRAIN_SCRIPT",
    "app_env",
    "apply",
    "copy_split",
    "kill_train_at_step",
    "qa_config",
    "run_app",
    "run_torchrun",
    "tiny_config",
    "write_config",
]
