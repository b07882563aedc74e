"""Held-out retrieval evaluation of an AlignmentModel: loaders for val/test, embedding collection across
ranks, eval.json, the printed table and embedding_space.png.

Each rank embeds its share of the split; the shares are gathered and de-duplicated by sample key (eg-data
may repeat a sample so that every rank gets the same number of batches), so the metrics are those of the
whole split whatever the world size.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from eg_data import AudioTransformConfig, ImageTransformConfig, LoaderConfig, ShardLoader, load_index
from torch import nn

from apps.config import ConfigError
from apps.experiment import BATCH_KEY, ExperimentConfig
from apps.plots import plot_embedding_space
from apps.retrieval import evaluate_retrieval, flatten_metrics, format_table, pair_counts


def _check_spec(key: str, configured: Any, default: Any, wanted: Any) -> None:
    """A data transform value the encoder dictates: fine when unset (default) or equal; else a ConfigError."""
    if configured != default and configured != wanted:
        raise ConfigError(
            f"{key}={configured} conflicts with the encoder, which expects {wanted}; remove the key "
            "(it is taken from the encoder)"
        )


def train_loader_config(cfg: ExperimentConfig, towers: nn.ModuleDict) -> LoaderConfig:
    """data.train with the image/audio transform specs filled in from the vision/audio encoders."""
    loader = cfg.data.train
    image, audio = loader.image, loader.audio
    if "vision" in towers:
        spec = towers["vision"].encoder.image_spec
        default = ImageTransformConfig()
        for name, wanted in (("size", spec.size), ("mean", list(spec.mean)), ("std", list(spec.std))):
            value = getattr(image, name)
            value = list(value) if isinstance(value, (list, tuple)) else value
            _check_spec(f"data.train.image.{name}", value, getattr(default, name), wanted)
        image = dataclasses.replace(image, size=spec.size, mean=list(spec.mean), std=list(spec.std))
    if "audio" in towers:
        spec = towers["audio"].encoder.audio_spec
        default_audio = AudioTransformConfig()
        _check_spec("data.train.audio.n_mels", audio.n_mels, default_audio.n_mels, spec.n_mels)
        _check_spec("data.train.audio.n_samples", audio.n_samples, default_audio.n_samples, spec.n_samples)
        audio = dataclasses.replace(audio, n_mels=spec.n_mels, n_samples=spec.n_samples)
    return dataclasses.replace(loader, image=image, audio=audio)


def eval_loader(train_cfg: LoaderConfig, shard_dir: str, batch_size: int, key: str) -> ShardLoader:
    """A loader over `shard_dir` with the training settings minus shuffling, augmentation and text dropout."""
    if not (Path(shard_dir) / "shards.json").is_file() and not any(Path(shard_dir).glob("*.tar")):
        raise ConfigError(f"{key}={shard_dir!r}: no shards there (expected *.tar files and shards.json)")
    streams = max(1, train_cfg.num_workers) * (dist.get_world_size() if dist.is_initialized() else 1)
    per_stream = sum(info.num_samples for info in load_index(shard_dir)) // streams
    # eg-data drops a stream's last partial batch; a divisor of the stream's share keeps every sample.
    divisors = [b for b in range(1, min(batch_size, max(per_stream, 1)) + 1) if per_stream % b == 0]
    if divisors and divisors[-1] >= batch_size // 4:
        batch_size = divisors[-1]
    cfg = dataclasses.replace(
        train_cfg,
        shard_dir=shard_dir,
        batch_size=batch_size,
        shuffle=False,
        text_dropout=0.0,
        image=dataclasses.replace(train_cfg.image, augment=False),
    )
    loader = ShardLoader(cfg)
    loader.set_epoch(0)
    return loader


def _gather(obj: Any) -> list[Any]:
    if dist.is_available() and dist.is_initialized():
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


@torch.no_grad()
def collect_embeddings(
    model: nn.Module, loader: ShardLoader, device: torch.device, precision: str = "fp32", max_samples: int = 0
) -> dict[str, Any]:
    """Embed a split: {"embeddings": {m: (N, max_dim)}, "present": {m: (N,)}, "labels": (N,), "keys": [N]}.

    Runs on every rank and returns the whole split on every rank (gathered, de-duplicated by key).
    """
    model = getattr(model, "module", model)  # DDP's wrapper
    was_training = model.training
    model.eval()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    local: dict[str, Any] = {
        "emb": {m: [] for m in model.towers},
        "present": {m: [] for m in model.towers},
        "labels": [],
        "keys": [],
    }
    seen = 0
    loader.set_epoch(0)
    try:
        for batch in loader:
            if max_samples and seen >= max_samples:
                break
            moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                z = model.embed(moved)
            size = len(batch["key"])
            for m, value in z.items():
                local["emb"][m].append(value.float().cpu())
                mask = batch.get(f"{BATCH_KEY[m]}_present")
                local["present"][m].append(
                    torch.ones(size, dtype=torch.bool) if mask is None else mask.bool().cpu()
                )
            label = batch.get("label")
            local["labels"].append(
                torch.full((size,), -1, dtype=torch.long) if label is None else label.long().cpu()
            )
            local["keys"].extend(batch["key"])
            seen += size
    finally:
        model.train(was_training)
    parts = _gather(
        {
            "emb": {m: torch.cat(v) if v else torch.empty(0) for m, v in local["emb"].items()},
            "present": {
                m: torch.cat(v) if v else torch.empty(0, dtype=torch.bool)
                for m, v in local["present"].items()
            },
            "labels": torch.cat(local["labels"]) if local["labels"] else torch.empty(0, dtype=torch.long),
            "keys": local["keys"],
        }
    )
    keep_rows: list[tuple[int, int]] = []
    keys: list[str] = []
    taken: set[str] = set()
    for rank, part in enumerate(parts):
        for row, key in enumerate(part["keys"]):
            if key not in taken:
                taken.add(key)
                keys.append(key)
                keep_rows.append((rank, row))
    if max_samples:
        keep_rows, keys = keep_rows[:max_samples], keys[:max_samples]

    def pick(getter: Any) -> torch.Tensor:
        return torch.stack([getter(parts[r])[i] for r, i in keep_rows]) if keep_rows else torch.empty(0)

    modalities = list(model.towers)
    return {
        "embeddings": {m: pick(lambda p, m=m: p["emb"][m]) for m in modalities},
        "present": {m: pick(lambda p, m=m: p["present"][m]) for m in modalities},
        "labels": pick(lambda p: p["labels"]),
        "keys": keys,
    }


def retrieval_result(collected: dict[str, Any], cfg: ExperimentConfig, dims: list[int]) -> dict[str, Any]:
    """Nested retrieval metrics of collected embeddings for the configured pairs at `dims`."""
    labels = collected["labels"]
    has_labels = labels.numel() > 0 and bool((labels >= 0).any())
    return evaluate_retrieval(
        collected["embeddings"],
        collected["present"],
        cfg.model.pairs,
        dims,
        labels if has_labels else None,
        cfg.eval.chunk_size,
    )


def eval_dims(cfg: ExperimentConfig, mrl_dims: list[int]) -> list[int]:
    """The dims to evaluate: eval.dims, else the MRL dims; each must fit the projection."""
    dims = list(cfg.eval.dims) if cfg.eval.dims is not None else list(mrl_dims)
    top = cfg.model.projection.max_dim
    bad = [d for d in dims if not 1 <= d <= top]
    if bad or not dims:
        raise ConfigError(
            f"eval.dims={dims} must be non-empty and within 1..{top} (model.projection.max_dim)"
        )
    return sorted(set(dims))


class RetrievalEvaluator:
    """eg-train's `evaluate_fn(model, step)`: retrieval on the validation split, flat metric names."""

    def __init__(
        self, cfg: ExperimentConfig, loader: ShardLoader, dims: list[int], device: torch.device
    ) -> None:
        self.cfg, self.loader, self.dims, self.device = cfg, loader, dims, device

    def __call__(self, model: nn.Module, step: int) -> dict[str, float]:
        """Return {"<pair>/<dim>/<dir>/<metric>": value, "retrieval/mean_recall@1": ...} (prefixed val/ by eg-train)."""
        collected = collect_embeddings(
            model, self.loader, self.device, self.cfg.train.precision, self.cfg.eval.max_val_samples
        )
        return flatten_metrics(retrieval_result(collected, self.cfg, self.dims))


def write_evaluation(
    collected: dict[str, Any],
    cfg: ExperimentConfig,
    dims: list[int],
    out_dir: str | Path,
    split: str,
    checkpoint: str = "",
    plot: bool = True,
) -> dict[str, Any]:
    """Compute the test metrics; write eval.json and embedding_space.png into `out_dir`; return the eval dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = retrieval_result(collected, cfg, dims)
    report = {
        "experiment_name": cfg.experiment_name,
        "split": split,
        "checkpoint": checkpoint,
        "num_samples": len(collected["keys"]),
        "pair_samples": pair_counts(collected["present"], cfg.model.pairs),
        "dims": dims,
        "retrieval": result,
        "summary": {k: v for k, v in flatten_metrics(result).items() if not math.isnan(v)},
    }
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    if plot and cfg.eval.plot_max_points > 0:
        labels = collected["labels"]
        shared = {m: e[collected["present"][m]].numpy() for m, e in collected["embeddings"].items()}
        shared = {
            m: torch.nn.functional.normalize(torch.from_numpy(v), dim=-1).numpy() for m, v in shared.items()
        }
        label_map = {
            m: labels[collected["present"][m]].numpy() if (labels >= 0).any() else None
            for m in collected["embeddings"]
        }
        plot_embedding_space(
            shared, label_map, out / "embedding_space.png", cfg.eval.plot_max_points, cfg.seed
        )
    return report


def print_report(report: dict[str, Any]) -> None:
    """Print the eval table with a one-line header."""
    print(
        f"\nheld-out retrieval ({report['split']}, {report['num_samples']} samples, "
        f"pairs: {report['pair_samples']}):"
    )
    print(format_table(report["retrieval"]))


def evaluate_checkpoint(cfg: ExperimentConfig, checkpoint: str, split_dir: str = "") -> dict[str, Any]:
    """Rebuild the model from `cfg`, load `checkpoint`'s weights, evaluate the test split (or `split_dir`).

    Rewrites outputs/<experiment_name>/eval.json and embedding_space.png; returns the eval dict.
    """
    from eg_train import init_distributed, load_model_weights

    from apps.alignment import AlignmentModel
    from apps.stage1 import prepare

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    info = init_distributed(cfg.train.device)
    torch.manual_seed(cfg.seed)
    towers = prepare(cfg, info.is_main)
    model = AlignmentModel(cfg, towers)
    meta = load_model_weights(model, checkpoint)
    model.to(info.device)
    loader_cfg = train_loader_config(cfg, towers)
    shard_dir = split_dir or cfg.data.test_dir
    loader = eval_loader(
        loader_cfg, shard_dir, cfg.eval.batch_size, "--split-dir" if split_dir else "data.test_dir"
    )
    collected = collect_embeddings(model, loader, info.device, cfg.train.precision)
    report: dict[str, Any] = {}
    if info.is_main:
        report = write_evaluation(
            collected,
            cfg,
            eval_dims(cfg, model.mrl_dims),
            cfg.train.output_dir,
            split=Path(shard_dir).name,
            checkpoint=str(checkpoint),
        )
        report["checkpoint_step"] = meta.get("step")
        (Path(cfg.train.output_dir) / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
        print_report(report)
    return report
