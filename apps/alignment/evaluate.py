"""Held-out retrieval evaluation of an AlignmentModel: embedding collection across ranks, eval.json, the
printed table and embedding_space.png; `evaluate_checkpoint` for `apps/evaluate`.

Each rank embeds its share of the split; the shares are gathered and de-duplicated by sample key (eg-data
may repeat a sample so that every rank gets the same number of batches), so the metrics are those of the
whole split whatever the world size.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from eg_data import ShardLoader, merge_data_reports
from eg_train import all_gather_objects
from torch import nn

from apps.alignment.config import BATCH_KEY, AlignmentConfig
from apps.common.config import ConfigError
from apps.common.loaders import eval_loader, loader_for_encoders
from apps.common.plots import plot_embedding_space
from apps.common.retrieval import evaluate_retrieval, flatten_metrics, format_table, pair_counts


@torch.no_grad()
def collect_embeddings(
    model: nn.Module, loader: ShardLoader, device: torch.device, precision: str = "fp32", max_samples: int = 0
) -> dict[str, Any]:
    """Embed a split: {"embeddings": {m: (N, max_dim)}, "present": {m: (N,)}, "labels": (N,), "keys": [N]}.

    Runs on every rank and returns the whole split on every rank (gathered), with `data`: the split's
    sample and bad-sample counts summed over ranks (eg-data's data_report).
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
    parts = all_gather_objects(
        {
            "emb": {m: torch.cat(v) if v else torch.empty(0) for m, v in local["emb"].items()},
            "present": {
                m: torch.cat(v) if v else torch.empty(0, dtype=torch.bool)
                for m, v in local["present"].items()
            },
            "labels": torch.cat(local["labels"]) if local["labels"] else torch.empty(0, dtype=torch.long),
            "keys": local["keys"],
            "data": loader.data_report(),
        }
    )
    # eg-data's eval mode gives every sample to exactly one rank and worker: concatenate, then order by key
    # so that the rows (and the plot's subsample) are the same whatever the world size and worker count.
    rows = sorted((key, rank, row) for rank, part in enumerate(parts) for row, key in enumerate(part["keys"]))
    if max_samples:
        rows = rows[:max_samples]

    def pick(getter: Any) -> torch.Tensor:
        return torch.stack([getter(parts[r])[i] for _, r, i in rows]) if rows else torch.empty(0)

    modalities = list(model.towers)
    return {
        "embeddings": {m: pick(lambda p, m=m: p["emb"][m]) for m in modalities},
        "present": {m: pick(lambda p, m=m: p["present"][m]) for m in modalities},
        "labels": pick(lambda p: p["labels"]),
        "keys": [key for key, _, _ in rows],
        "data": merge_data_reports(p["data"] for p in parts),
    }


def retrieval_result(collected: dict[str, Any], cfg: AlignmentConfig, dims: list[int]) -> dict[str, Any]:
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


def eval_dims(cfg: AlignmentConfig, mrl_dims: list[int]) -> list[int]:
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
        self, cfg: AlignmentConfig, loader: ShardLoader, dims: list[int], device: torch.device
    ) -> None:
        self.cfg, self.loader, self.dims, self.device = cfg, loader, dims, device

    def __call__(self, model: nn.Module, step: int) -> dict[str, float]:
        """{"<pair>/<dim>/<dir>/<metric>": value, "retrieval/mean_recall@1": ..., "data/samples": n,
        "data/bad/<reason>": n} (prefixed val/ by eg-train): the split's bad samples are reported too."""
        collected = collect_embeddings(
            model, self.loader, self.device, self.cfg.train.precision, self.cfg.eval.max_val_samples
        )
        metrics = flatten_metrics(retrieval_result(collected, self.cfg, self.dims))
        data = collected["data"]
        metrics["data/samples"] = float(data["samples"])
        metrics.update({f"data/bad/{reason}": float(n) for reason, n in data["bad"].items()})
        return metrics


def write_evaluation(
    collected: dict[str, Any],
    cfg: AlignmentConfig,
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
        "data": collected["data"],
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
    bad = {reason: n for reason, n in report["data"]["bad"].items() if n}
    if bad:
        examples = report["data"]["examples"]
        listed = ", ".join(f"{reason} {n} (e.g. {examples.get(reason, '?')!r})" for reason, n in bad.items())
        print(f"skipped {sum(bad.values())} unreadable samples of the {report['split']} split: {listed}")


def encoders_of(model: nn.Module) -> dict[str, Any]:
    """{modality: encoder} of an AlignmentModel, for `loader_for_encoders`."""
    return {name: tower.encoder for name, tower in getattr(model, "module", model).towers.items()}


def evaluate_checkpoint(cfg: AlignmentConfig, checkpoint: str, split_dir: str = "") -> dict[str, Any]:
    """Rebuild the model from `cfg`, load `checkpoint`'s weights, evaluate the test split (or `split_dir`).

    Writes nothing but its results: outputs/<experiment_name>/eval.json and embedding_space.png.
    Returns the eval dict (on rank 0; {} elsewhere).
    """
    from eg_train import init_distributed, load_model_weights

    from apps.alignment.build import build_model

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    info = init_distributed(cfg.train.device)
    model = build_model(cfg)
    meta = load_model_weights(model, checkpoint)
    model.to(info.device)
    loader_cfg = loader_for_encoders(cfg.data.train, encoders_of(model), "data.train")
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
