"""Stage 1 (alignment) end to end: check every data folder, prepare data and backbones, build loaders and
the AlignmentModel, train with eg-train (validation retrieval, and each mixture source's validation, as
`evaluate_fn`), then evaluate on the held-out splits (the config's own and each source's).

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
    HeldOutValidation,
    collect_held_out,
    encoders_of,
    eval_dims,
    print_report,
    write_evaluation,
)
from apps.alignment.zeroshot import ZeroShotValidation, with_zeroshot
from apps.common.config import to_dict, to_yaml
from apps.common.flops import training_flops_per_sample
from apps.common.loaders import check_shard_dir, data_folders, held_out, loader_for_encoders, loss_loader


def check_folders(cfg: AlignmentConfig, pending: str = "") -> None:
    """ConfigError naming the YAML key of the first folder the run reads (training, validation and test, the
    config's own and each source's) that holds no shards; folders under `pending` (the demo build's, written
    at the start of the run) are skipped."""
    waiting = Path(pending).resolve() if pending else None
    for key, folder in data_folders(cfg.data.train, cfg.data.val_dir, cfg.data.test_dir):
        if waiting is not None and Path(folder).resolve().is_relative_to(waiting):
            continue
        check_shard_dir(key, folder)


def train(cfg: AlignmentConfig) -> None:
    """Train and evaluate one stage-1 experiment (see the module docstring for what is written where)."""
    started = time.perf_counter()
    check_folders(cfg, pending=cfg.data.build_demo)  # a wrong path is refused before anything is built
    zeroshot = ZeroShotValidation(cfg) if cfg.eval.zeroshot is not None else None  # reads its folder now
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    info = init_distributed(cfg.train.device)
    out_dir = Path(cfg.train.output_dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(to_yaml(cfg))
    prepare_assets(cfg, info.is_main)
    check_folders(cfg)
    model = build_model(cfg).to(info.device)  # seeded: the same initialization on every rank
    dims = eval_dims(cfg, model.mrl_dims)

    loader_cfg = loader_for_encoders(cfg.data.train, encoders_of(model), "data.train")
    train_data = loader_cfg.build()
    val_splits = held_out(loader_cfg, cfg.data.val_dir, "val")
    val_loss = (  # the own split's loss; each source's is in HeldOutValidation
        loss_loader(loader_cfg, cfg.data.val_dir, cfg.eval.batch_size, "data.val_dir")
        if cfg.data.val_dir
        else None
    )
    trainer = Trainer(
        model,
        cfg.train,
        train_data,
        val_data=val_loss,
        param_groups=model.param_groups(cfg.train.lr),
        evaluate_fn=with_zeroshot(
            HeldOutValidation(cfg, val_splits, dims, info.device) if val_splits else None, zeroshot
        ),
        run_config=to_dict(cfg),
        flops_per_sample=training_flops_per_sample(model, loader_cfg, info.device),  # the mfu column
    )
    summary = trainer.fit()

    results = collect_held_out(model, held_out(loader_cfg, cfg.data.test_dir, "test"), cfg, info.device)
    if info.is_main:
        report = write_evaluation(
            results,
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
