"""Stage 2 (QA) end to end: load the stage-1 towers, build the QA model, train with eg-train (validation:
teacher-forced loss and generated exact match on val), then evaluate every QA pair of the held-out split.

Writes outputs/<experiment_name>/{config.yaml, eval.json} here; eg-train writes metrics.csv, tensorboard/,
training_curves.png, loss_components.png and the checkpoints. Only rank 0 writes files; every rank computes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from eg_data import LoaderConfig, ShardLoader
from eg_train import DistInfo, Trainer, barrier, init_distributed
from torch import nn

from apps.common.config import to_dict, to_yaml
from apps.common.loaders import check_shard_dir, eval_loader
from apps.qa.build import build_model, load_stage1, qa_loader_config
from apps.qa.config import QAConfig
from apps.qa.demo_qwen import write_demo_qwen
from apps.qa.evaluate import (
    QAValidator,
    build_report,
    collect_answers,
    majority_answers,
    prefix_variants,
    print_report,
    write_report,
)

ALL_PAIRS: dict[str, Any] = {"qa_pairs": "all"}  # with eval mode: every sample once, each QA pair a row


def qa_eval_loader(loader_cfg: LoaderConfig, shard_dir: str, batch_size: int, key: str) -> ShardLoader:
    """Every sample of `shard_dir` once, each QA pair of it a row, in a fixed order."""
    return eval_loader(loader_cfg, shard_dir, batch_size, key, **ALL_PAIRS)


def training_pairs(loader_cfg: LoaderConfig, batch_size: int) -> Iterator[tuple[str, str]]:
    """Every (question, answer) of the training split, reading the json only, on whichever rank calls it
    (the majority baseline, the demo tokenizer's corpus)."""
    check_shard_dir("data.train.shard_dir", loader_cfg.shard_dir)
    qa_only = dataclasses.replace(
        loader_cfg,
        batch_size=batch_size,
        num_workers=0,  # json only: nothing worth a worker process
        shuffle=False,
        mode="eval",
        modalities=["qa"],
        required=["qa"],
        **ALL_PAIRS,
    ).build(rank=0, world_size=1)
    qa_only.set_epoch(0)
    for batch in qa_only:
        yield from zip(batch["question"], batch["answer"])


def evaluate_model(
    model: nn.Module, cfg: QAConfig, loader_cfg: LoaderConfig, shard_dir: str, key: str, info: DistInfo
) -> dict[str, Any]:
    """Answer every QA pair of `shard_dir` with every prefix variant; the eval dict on rank 0 ({} elsewhere)."""
    loader = qa_eval_loader(loader_cfg, shard_dir, cfg.eval.batch_size, key)
    variants = prefix_variants(cfg.model.modalities)
    rows, data = collect_answers(model, loader, variants, cfg.eval.max_new_tokens, info.device)
    if not info.is_main:
        return {}
    majority = majority_answers(training_pairs(loader_cfg, cfg.eval.batch_size))
    report = build_report(rows, data, cfg, variants, majority)
    return {"split": Path(shard_dir).name, **report}


def train(cfg: QAConfig) -> None:
    """Train and evaluate one stage-2 experiment (see the module docstring for what is written where)."""
    started = time.perf_counter()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    info = init_distributed(cfg.train.device)
    aligned = load_stage1(cfg)  # before writing anything: a missing stage-1 checkpoint is refused first
    out_dir = Path(cfg.train.output_dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(to_yaml(cfg))
    loader_cfg = qa_loader_config(cfg, aligned.towers)
    if cfg.demo_qwen is not None:
        if info.is_main:
            pairs = list(training_pairs(loader_cfg, cfg.eval.batch_size))
            write_demo_qwen(cfg.demo_qwen, [text for pair in pairs for text in pair])
        barrier()
    model = build_model(cfg, aligned.towers)
    train_data = ShardLoader(loader_cfg)
    val_data = qa_eval_loader(loader_cfg, cfg.data.val_dir, cfg.eval.batch_size, "data.val_dir")
    validator = QAValidator(cfg, val_data, info.device) if cfg.eval.max_val_samples >= 0 else None
    trainer = Trainer(
        model,
        cfg.train,
        train_data,
        val_data=val_data,
        param_groups=model.param_groups(cfg.train.lr),
        evaluate_fn=validator,
        run_config=to_dict(cfg),
    )
    summary = trainer.fit()
    trained = time.perf_counter() - started
    report = evaluate_model(model, cfg, loader_cfg, cfg.data.test_dir, "data.test_dir", info)
    if info.is_main:
        report["checkpoint"] = str(Path(cfg.train.checkpoint_dir) / "checkpoint_latest.pt")
        report["checkpoint_step"] = summary["step"]
        report["train"] = {
            "stage1_checkpoint": cfg.stage1.checkpoint,
            "decoder": cfg.model.decoder.type,
            "trainable_parameters": model.num_trainable(),
            "steps": summary["step"],
            "best_metric": summary["best_metric"],
            "best_value": summary["best_value"],
            "train_seconds": round(trained, 1),
            "wall_seconds": round(time.perf_counter() - started, 1),
        }
        write_report(report, out_dir)
        print_report(report, cfg.eval.print_rows)
        print(
            f"\nwrote {out_dir}/ (eval.json, metrics.csv, config.yaml, plots) and "
            f"{cfg.train.checkpoint_dir}/ in {report['train']['wall_seconds']:.0f} s"
        )
    barrier()
