"""Stage 2 (QA) end to end: load the stage-1 towers, build the QA model, train with eg-train (validation:
teacher-forced loss and generated exact match on val), then evaluate every QA pair of the held-out split.

Writes outputs/<experiment_name>/{config.yaml, eval.json} here; eg-train writes metrics.csv, tensorboard/,
training_curves.png, loss_components.png and the checkpoints. Only rank 0 writes files; every rank computes.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from eg_data import ShardLoader
from eg_train import Trainer, barrier, init_distributed

from apps.alignment.embed import weights_fingerprint
from apps.common.config import to_dict, to_yaml
from apps.qa.build import build_model, load_stage1, qa_loader_config
from apps.qa.config import QAConfig
from apps.qa.demo_qwen import write_demo_qwen
from apps.qa.evaluate import (
    QAValidator,
    evaluate_model,
    print_report,
    qa_eval_loader,
    training_pairs,
    write_report,
)


def train(cfg: QAConfig) -> None:
    """Train and evaluate one stage-2 experiment (see the module docstring for what is written where)."""
    started = time.perf_counter()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    info = init_distributed(cfg.train.device)
    aligned = load_stage1(cfg)  # before writing anything: a missing stage-1 checkpoint is refused first
    # Recorded in config.yaml and every checkpoint: loading this model later checks its stage-1 towers.
    cfg.stage1.fingerprint = weights_fingerprint(aligned.towers)
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
