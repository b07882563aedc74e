"""Stage 1 (alignment) end to end: prepare data and backbones, build loaders and the AlignmentModel, train
with eg-train (validation retrieval as `evaluate_fn`), then evaluate on the held-out split.

Writes outputs/<experiment_name>/{config.yaml, eval.json, embedding_space.png} here; eg-train writes
metrics.csv, tensorboard/, the curves and the checkpoints. Only rank 0 writes files; every rank computes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from eg_train import Trainer, barrier, init_distributed

from apps.alignment.build import build_model, prepare_assets
from apps.alignment.config import AlignmentConfig
from apps.alignment.evaluate import (
    RetrievalEvaluator,
    collect_embeddings,
    encoders_of,
    eval_dims,
    print_report,
    write_evaluation,
)
from apps.common.config import to_dict, to_yaml
from apps.common.loaders import (
    check_shard_dir,
    eval_loader,
    loader_for_encoders,
    loss_loader,
    train_folders,
)


def train(cfg: AlignmentConfig) -> None:
    """Train and evaluate one stage-1 experiment (see the module docstring for what is written where)."""
    started = time.perf_counter()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    info = init_distributed(cfg.train.device)
    out_dir = Path(cfg.train.output_dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(to_yaml(cfg))
    prepare_assets(cfg, info.is_main)
    for key, shard_dir in train_folders(cfg.data.train):
        check_shard_dir(key, shard_dir)
    model = build_model(cfg).to(info.device)  # seeded: the same initialization on every rank
    dims = eval_dims(cfg, model.mrl_dims)

    loader_cfg = loader_for_encoders(cfg.data.train, encoders_of(model), "data.train")
    train_data = loader_cfg.build()
    val_retrieval = eval_loader(loader_cfg, cfg.data.val_dir, cfg.eval.batch_size, "data.val_dir")
    val_loss = loss_loader(loader_cfg, cfg.data.val_dir, cfg.eval.batch_size, "data.val_dir")
    evaluator = RetrievalEvaluator(cfg, val_retrieval, dims, info.device)
    trainer = Trainer(
        model,
        cfg.train,
        train_data,
        val_data=val_loss,
        param_groups=model.param_groups(cfg.train.lr),
        evaluate_fn=evaluator,
        run_config=to_dict(cfg),
    )
    summary = trainer.fit()

    test_data = eval_loader(loader_cfg, cfg.data.test_dir, cfg.eval.batch_size, "data.test_dir")
    collected = collect_embeddings(model, test_data, info.device, cfg.train.precision)
    if info.is_main:
        report = write_evaluation(
            collected,
            cfg,
            dims,
            out_dir,
            split="test",
            checkpoint=str(Path(cfg.train.checkpoint_dir) / "checkpoint_latest.pt"),
        )
        report["train"] = {
            "steps": summary["step"],
            "best_metric": summary["best_metric"],
            "best_value": summary["best_value"],
            "wall_seconds": round(time.perf_counter() - started, 1),
        }
        (out_dir / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
        print_report(report)
        print(
            f"\nwrote {out_dir}/ (eval.json, embedding_space.png, metrics.csv, config.yaml, plots) and "
            f"{cfg.train.checkpoint_dir}/ in {report['train']['wall_seconds']:.0f} s"
        )
    barrier()
