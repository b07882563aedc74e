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
import torch.distributed as dist
from eg_data import ShardLoader, build_demo_dataset, read_all
from eg_encoders import AudioEncoder, TextEncoder, VisionEncoder
from eg_train import Trainer, init_distributed
from torch import nn

from apps import demo_models
from apps.alignment import AlignmentModel, ModalityTower
from apps.config import ConfigError, to_dict, to_yaml
from apps.evaluation import (
    RetrievalEvaluator,
    collect_embeddings,
    eval_dims,
    eval_loader,
    print_report,
    train_loader_config,
    write_evaluation,
)
from apps.experiment import ExperimentConfig


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _check_dir(key: str, path: str) -> None:
    if not Path(path).is_dir():
        raise ConfigError(
            f"{key}={path!r} does not exist; point it at a shard folder "
            "(make one with `uv run apps/data ...`)"
        )


def prepare(cfg: ExperimentConfig, is_main: bool) -> nn.ModuleDict:
    """Write demo backbones and data where configured and missing (rank 0), then build the towers.

    Order matters: the demo images are built at the vision encoder's size, and the demo text model's
    vocabulary comes from the training captions.
    """
    model_cfg = cfg.model
    if cfg.demo_models is not None and is_main:
        demo_models.write_vision_audio(cfg.demo_models)
    _barrier()
    towers = nn.ModuleDict()
    if model_cfg.vision is not None:
        towers["vision"] = ModalityTower(
            "vision",
            VisionEncoder(model_cfg.vision.encoder),
            model_cfg.projection,
            model_cfg.vision.resampler,
        )
    if model_cfg.audio is not None:
        towers["audio"] = ModalityTower(
            "audio", AudioEncoder(model_cfg.audio.encoder), model_cfg.projection, model_cfg.audio.resampler
        )
    if cfg.data.build_demo and is_main:
        size = towers["vision"].encoder.image_spec.size if "vision" in towers else 32
        build_demo_dataset(cfg.data.build_demo, image_size=size, seed=cfg.seed)
    _barrier()
    _check_dir("data.train.shard_dir", cfg.data.train.shard_dir)
    _check_dir("data.val_dir", cfg.data.val_dir)
    _check_dir("data.test_dir", cfg.data.test_dir)
    if cfg.demo_models is not None and is_main:
        captions = [
            s["txt"].decode() if isinstance(s.get("txt"), bytes) else str(s.get("txt", ""))
            for s in read_all(cfg.data.train.shard_dir)
        ]
        demo_models.write_text(cfg.demo_models, captions)
    _barrier()
    if model_cfg.text is not None:
        towers["text"] = ModalityTower("text", TextEncoder(model_cfg.text.encoder), model_cfg.projection)
    return towers


def run(cfg: ExperimentConfig) -> None:
    """Train and evaluate one stage-1 experiment (see the module docstring for what is written where)."""
    started = time.perf_counter()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    info = init_distributed(cfg.train.device)
    out_dir = Path(cfg.train.output_dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(to_yaml(cfg))
    torch.manual_seed(cfg.seed)  # the same initialization on every rank (DDP also broadcasts rank 0's)
    towers = prepare(cfg, info.is_main)
    model = AlignmentModel(cfg, towers).to(info.device)
    dims = eval_dims(cfg, model.mrl_dims)

    loader_cfg = train_loader_config(cfg, towers)
    train_data = ShardLoader(loader_cfg)
    val_data = eval_loader(loader_cfg, cfg.data.val_dir, cfg.eval.batch_size, "data.val_dir")
    evaluator = RetrievalEvaluator(cfg, val_data, dims, info.device)
    trainer = Trainer(
        model,
        cfg.train,
        train_data,
        val_data=val_data,
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
    _barrier()
