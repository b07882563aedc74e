"""Held-out retrieval evaluation of an AlignmentModel: embedding collection across ranks, validation
(`HeldOutValidation`, eg-train's evaluate_fn), eval.json, the printed tables and embedding_space.png;
`evaluate_checkpoint` for `apps/evaluate`.

Each rank embeds its share of the split; the shares are gathered and ordered by sample key (eg-data's eval
mode gives every sample to exactly one rank and worker), so the metrics are those of the whole split
whatever the world size. A config has its own held-out split (data.val_dir / data.test_dir, every pair) and,
with a mixture, each source's (`sources[i].val_dir` / `test_dir`, the pairs whose sides the source has):
each is evaluated on its own; per-source results sit under `sources/<name>/` in metrics.csv (after `val/`)
and under `"sources": {name: ...}` in eval.json.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from eg_data import ShardLoader, merge_data_reports
from eg_train import all_gather_objects
from eg_train.validation import run_validation
from torch import nn

from apps.alignment.config import BATCH_KEY, AlignmentConfig
from apps.common.config import ConfigError
from apps.common.loaders import (
    HeldOut,
    check_shard_dir,
    eval_loader,
    held_out,
    loader_for_encoders,
    loss_loader,
)
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


def retrieval_result(
    collected: dict[str, Any], cfg: AlignmentConfig, dims: list[int], pairs: Sequence[str] | None = None
) -> dict[str, Any]:
    """Nested retrieval metrics of collected embeddings for `pairs` (default: model.pairs) at `dims`."""
    labels = collected["labels"]
    has_labels = labels.numel() > 0 and bool((labels >= 0).any())
    return evaluate_retrieval(
        collected["embeddings"],
        collected["present"],
        list(cfg.model.pairs if pairs is None else pairs),
        dims,
        labels if has_labels else None,
        cfg.eval.chunk_size,
    )


def metric_prefix(split: HeldOut) -> str:
    """Where a split's metrics sit: "" for the config's own split, `sources/<name>/` for a source's."""
    return f"sources/{split.source}/" if split.source else ""


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


class HeldOutValidation:
    """eg-train's `evaluate_fn(model, step)`: retrieval on every validation split; for each source's split
    also its loss (the config's own split's loss is eg-train's `val_data`). Flat names, prefixed `val/` by
    eg-train: `<pair>/<dim>/<dir>/<metric>`, `retrieval/mean_recall@1`, `data/samples`, `data/bad/<reason>`
    for data.val_dir; the same, plus `loss` and `<pair>/contrastive|mrl|logit_scale`, under
    `sources/<name>/` for each source's val_dir (only the pairs the source has)."""

    def __init__(
        self, cfg: AlignmentConfig, splits: list[HeldOut], dims: list[int], device: torch.device
    ) -> None:
        self.cfg, self.dims, self.device = cfg, dims, device
        batch = cfg.eval.batch_size
        self.splits = [
            (
                split,
                eval_loader(split.loader, split.shard_dir, batch, split.key),
                loss_loader(split.loader, split.shard_dir, batch, split.key) if split.source else None,
            )
            for split in splits
        ]

    def __call__(self, model: nn.Module, step: int) -> dict[str, float]:
        """The validation metrics of every split (see the class docstring)."""
        cfg, metrics = self.cfg, {}
        for split, retrieval, loss in self.splits:
            prefix, pairs = metric_prefix(split), cfg.pairs_having(split.has)
            if loss is not None:  # eg-train's own validation pass over the source's folder
                parts = run_validation(model, loss, None, step, cfg.train.precision, self.device)
                for name, value in parts.items():
                    name = name.removeprefix("val/")
                    if name == "loss" or name.split("/")[0] in pairs:  # not another pair's logit_scale
                        metrics[prefix + name] = value
            collected = collect_embeddings(
                model, retrieval, self.device, cfg.train.precision, cfg.eval.max_val_samples
            )
            flat = flatten_metrics(retrieval_result(collected, cfg, self.dims, pairs))
            data = collected["data"]
            flat["data/samples"] = float(data["samples"])
            flat.update({f"data/bad/{reason}": float(n) for reason, n in data["bad"].items()})
            metrics.update({prefix + k: v for k, v in flat.items()})
        return metrics


def collect_held_out(
    model: nn.Module, splits: list[HeldOut], cfg: AlignmentConfig, device: torch.device
) -> list[tuple[HeldOut, dict[str, Any]]]:
    """Every split's embeddings (`collect_embeddings`, whole split on every rank), in the order given."""
    return [
        (
            split,
            collect_embeddings(
                model,
                eval_loader(split.loader, split.shard_dir, cfg.eval.batch_size, split.key),
                device,
                cfg.train.precision,
            ),
        )
        for split in splits
    ]


def split_report(
    split: HeldOut, collected: dict[str, Any], cfg: AlignmentConfig, dims: list[int]
) -> dict[str, Any]:
    """One split's section of eval.json: its folder, sample and bad-sample counts, the samples behind each
    pair it evaluates (model.pairs for the config's own split, a source's own pairs), the metrics."""
    pairs = cfg.pairs_having(split.has)
    result = retrieval_result(collected, cfg, dims, pairs)
    return {
        "split_dir": split.shard_dir,
        "num_samples": len(collected["keys"]),
        "data": collected["data"],
        "pair_samples": pair_counts(collected["present"], pairs),
        "retrieval": result,
        "summary": {k: v for k, v in flatten_metrics(result).items() if not math.isnan(v)},
    }


def write_evaluation(
    results: list[tuple[HeldOut, dict[str, Any]]],
    cfg: AlignmentConfig,
    dims: list[int],
    out_dir: str | Path,
    split: str,
    checkpoint: str = "",
    plot: bool = True,
) -> dict[str, Any]:
    """Compute the metrics of every held-out split; write eval.json and embedding_space.png into `out_dir`;
    return the eval dict: the config's own split's section at the top level (when it has one) and each
    source's under "sources". The plot shows the own split, else the first source's."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "experiment_name": cfg.experiment_name,
        "split": split,
        "checkpoint": checkpoint,
        "dims": dims,
    }
    sources: dict[str, Any] = {}
    for held, collected in results:
        section = split_report(held, collected, cfg, dims)
        if held.source:
            sources[held.source] = section
        else:
            report.update(section)
    report["sources"] = sources
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    if plot and cfg.eval.plot_max_points > 0 and results:
        collected = next((c for h, c in results if not h.source), results[0][1])
        labels = collected["labels"]
        shared = {m: e[collected["present"][m]].numpy() for m, e in collected["embeddings"].items()}
        shared = {
            m: torch.nn.functional.normalize(torch.from_numpy(v), dim=-1).numpy()
            for m, v in shared.items()
            if len(v)
        }
        label_map = {
            m: labels[collected["present"][m]].numpy() if (labels >= 0).any() else None for m in shared
        }
        plot_embedding_space(
            shared, label_map, out / "embedding_space.png", cfg.eval.plot_max_points, cfg.seed
        )
    return report


def _print_split(section: dict[str, Any], split: str, source: str = "") -> None:
    where = f", source {source} ({split}: {section['split_dir']}" if source else f" ({split}"
    print(
        f"\nheld-out retrieval{where}, {section['num_samples']} samples, pairs: {section['pair_samples']}):"
    )
    print(format_table(section["retrieval"]))
    empty = [pair for pair, n in section["pair_samples"].items() if n == 0]
    if empty:
        print(f"not evaluated, no sample has both sides: {', '.join(empty)}")
    bad = {reason: n for reason, n in section["data"]["bad"].items() if n}
    if bad:
        examples = section["data"]["examples"]
        listed = ", ".join(f"{reason} {n} (e.g. {examples.get(reason, '?')!r})" for reason, n in bad.items())
        of = f"the {split} split of source {source}" if source else f"the {split} split"
        print(f"skipped {sum(bad.values())} unreadable samples of {of}: {listed}")


def print_report(report: dict[str, Any]) -> None:
    """Print the eval tables: the config's own split, then each source's, each under a one-line header
    naming the split (and the source), with its skipped samples by reason."""
    if "retrieval" in report:
        _print_split(report, report["split"])
    for name, section in report.get("sources", {}).items():
        _print_split(section, report["split"], name)


def encoders_of(model: nn.Module) -> dict[str, Any]:
    """{modality: encoder} of an AlignmentModel, for `loader_for_encoders`."""
    return {name: tower.encoder for name, tower in getattr(model, "module", model).towers.items()}


def evaluate_checkpoint(cfg: AlignmentConfig, checkpoint: str, split_dir: str = "") -> dict[str, Any]:
    """Rebuild the model from `cfg`, load `checkpoint`'s weights, evaluate the test splits: data.test_dir
    and each source's test_dir, or only `split_dir` (every pair) when given.

    Writes nothing but its results: outputs/<experiment_name>/eval.json and embedding_space.png.
    Returns the eval dict (on rank 0; {} elsewhere).
    """
    from eg_train import init_distributed, load_model_weights

    from apps.alignment.build import build_model

    def splits_of(loader_cfg: Any) -> list[HeldOut]:
        if split_dir:
            return [HeldOut("", "--split-dir", split_dir, loader_cfg, tuple(loader_cfg.modalities))]
        return held_out(loader_cfg, cfg.data.test_dir, "test")

    for split in splits_of(cfg.data.train):  # before anything is built
        check_shard_dir(split.key, split.shard_dir)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    info = init_distributed(cfg.train.device)
    model = build_model(cfg)
    meta = load_model_weights(model, checkpoint)
    model.to(info.device)
    loader_cfg = loader_for_encoders(cfg.data.train, encoders_of(model), "data.train")
    results = collect_held_out(model, splits_of(loader_cfg), cfg, info.device)
    report: dict[str, Any] = {}
    if info.is_main:
        report = write_evaluation(
            results,
            cfg,
            eval_dims(cfg, model.mrl_dims),
            cfg.train.output_dir,
            split=Path(split_dir).name if split_dir else "test",
            checkpoint=str(checkpoint),
        )
        report["checkpoint_step"] = meta.get("step")
        (Path(cfg.train.output_dir) / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
        print_report(report)
    return report
