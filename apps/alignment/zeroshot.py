"""Zero-shot classification of a stage-1 model, images and audio, at every trained Matryoshka dim: the text
classifier from prompt templates, top-1 / top-5 accuracy and mean per-class recall, the confusion matrix,
the report (JSON + printed table), and `ZeroShotValidation`, which runs it at each validation of training.

The classifier is CLIP's (open_clip's zero_shot.py, clip_benchmark's `zero_shot_classifier`): each class's
prompts (every template filled with its name) are embedded, L2-normalized, averaged and renormalized; a
sample's logits are its normalized embedding against those class vectors. At a Matryoshka dim d every
embedding is first cut to its first d features and renormalized (`truncate_normalize`, the retrieval
evaluation's view), so one pass through the towers serves every dim. Top-5 is reported for 5 classes or
more (as clip_benchmark does); mean per-class recall is scikit-learn's balanced accuracy (the mean over
the classes present of the fraction of each class predicted as itself).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from apps.common.retrieval import truncate_normalize
from apps.common.zeroshot_data import BenchmarkSplit, decode_media, fill

ZEROSHOT_MODALITIES = ("vision", "audio")
MEAN_ACC1_KEY = "zeroshot/mean_acc1"
METRICS = ("acc1", "acc5", "mean_per_class_recall")


def embed_items(encoders: Any, modality: str, items: Sequence[Any]) -> torch.Tensor:
    """Images (PIL) or clips (16 kHz waves) or texts -> (N, max_dim) unit-norm embeddings at the top dim,
    through the encoders' own `embed_images` / `embed_audio` / `embed_texts` (an Embedder or an export)."""
    embed = {"vision": encoders.embed_images, "audio": encoders.embed_audio, "text": encoders.embed_texts}
    return embed[modality](list(items)).float()


def class_embeddings(encoders: Any, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Every class's prompts embedded at the top dim: (C, T, max_dim), unit norm."""
    prompts = [fill(t, name) for name in classnames for t in templates]
    emb = embed_items(encoders, "text", prompts)  # (C * T, D)
    return emb.reshape(len(classnames), len(templates), -1)


def text_classifier(class_emb: torch.Tensor, dim: int) -> torch.Tensor:
    """(C, T, D) prompt embeddings -> (C, dim) class vectors: each prompt at `dim` normalized, the mean
    over templates renormalized."""
    return torch.nn.functional.normalize(truncate_normalize(class_emb, dim).mean(dim=1), dim=-1)


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """acc1, acc5 (only with >= 5 classes) and mean_per_class_recall of (N, C) logits against (N,) targets."""
    num_classes = logits.shape[1]
    ranked = logits.topk(min(5, num_classes), dim=1).indices  # (N, k), best first
    hit = ranked == targets.unsqueeze(1)
    metrics = {"acc1": float(hit[:, 0].double().mean())}
    if num_classes >= 5:
        metrics["acc5"] = float(hit[:, :5].any(dim=1).double().mean())
    predicted = ranked[:, 0]
    recalls = [
        float((predicted[targets == c] == c).double().mean()) for c in targets.unique().tolist()
    ]  # balanced accuracy: classes absent from the targets are left out, as scikit-learn does
    metrics["mean_per_class_recall"] = sum(recalls) / len(recalls)
    return metrics


def confusion(logits: torch.Tensor, targets: torch.Tensor) -> list[list[int]]:
    """(C, C) counts: row = true class, column = predicted class (top-1)."""
    num_classes = logits.shape[1]
    flat = targets * num_classes + logits.argmax(dim=1)
    counts = torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    return counts.tolist()


def zeroshot_result(
    encoders: Any,
    classnames: Sequence[str],
    templates: Sequence[str],
    split: BenchmarkSplit,
    dims: Sequence[int],
    modalities: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Zero-shot metrics of `split` for every modality the model and the split both have (or those named):
    {modality: {"num_samples", "skipped" (undecodable keys), "dims": {str(dim): metrics},
    "confusion": counts at the top dim}}."""
    class_emb = class_embeddings(encoders, classnames, templates)
    wanted = [m for m in (modalities or ZEROSHOT_MODALITIES) if m in encoders.modalities]
    result: dict[str, Any] = {}
    for modality in wanted:
        samples = split.having(modality)
        if not samples:
            continue
        items, kept, bad = decode_media(samples, modality)
        if not items:
            result[modality] = {"num_samples": 0, "skipped": bad, "dims": {}, "confusion": []}
            continue
        emb = embed_items(encoders, modality, items)  # (N, max_dim)
        targets = torch.tensor([samples[i].label for i in kept])
        per_dim, logits = {}, None
        for dim in sorted(dims):
            logits = truncate_normalize(emb, dim) @ text_classifier(class_emb, dim).T  # (N, C)
            per_dim[str(dim)] = classification_metrics(logits, targets)
        result[modality] = {
            "num_samples": len(kept),
            "skipped": bad,
            "dims": per_dim,
            "confusion": confusion(logits, targets),  # the top dim (the loop's last)
        }
    return result


def flatten_zeroshot(result: dict[str, Any]) -> dict[str, float]:
    """`zeroshot/<modality>/<dim>/<metric>` and `zeroshot/mean_acc1` (mean over modalities, top dim)."""
    flat: dict[str, float] = {}
    top_acc = []
    for modality, section in result.items():
        if not section["dims"]:
            continue
        for dim, metrics in section["dims"].items():
            for name, value in metrics.items():
                flat[f"zeroshot/{modality}/{dim}/{name}"] = value
        top_acc.append(section["dims"][max(section["dims"], key=int)]["acc1"])
    if top_acc:
        flat[MEAN_ACC1_KEY] = sum(top_acc) / len(top_acc)
    return flat


def format_zeroshot_table(result: dict[str, Any]) -> str:
    """One row per modality and dim: top-1, top-5 ("-" under 5 classes), mean per-class recall."""
    header = f"{'modality':<10}{'dim':>6}{'top-1':>8}{'top-5':>8}{'per-class recall':>18}"
    lines = [header, "-" * len(header)]
    for modality, section in result.items():
        for dim in sorted(section["dims"], key=int):
            m = section["dims"][dim]
            top5 = f"{m['acc5']:.3f}" if "acc5" in m else "-"
            lines.append(
                f"{modality:<10}{dim:>6}{m['acc1']:>8.3f}{top5:>8}{m['mean_per_class_recall']:>18.3f}"
            )
    return "\n".join(lines)


def plot_confusion(counts: list[list[int]], classnames: Sequence[str], path: str | Path, title: str) -> Path:
    """The confusion matrix as a PNG: rows true, columns predicted, each row as fractions of its class;
    class names on the axes up to 40 classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    matrix = np.asarray(counts, dtype=np.float64)
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.35 * len(classnames), 14)
    fig, ax = plt.subplots(figsize=(size + 1.5, size), dpi=110)
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if len(classnames) <= 40:
        ticks = range(len(classnames))
        ax.set_xticks(ticks, classnames, rotation=90, fontsize=8)
        ax.set_yticks(ticks, classnames, fontsize=8)
        if len(classnames) <= 15:
            for (r, c), n in np.ndenumerate(matrix):
                if n:
                    ax.text(c, r, int(n), ha="center", va="center", fontsize=7,
                            color="white" if rows[r, c] > 0.5 else "black")  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


class ZeroShotValidation:
    """Zero-shot classification at each validation of a training run (`eval.zeroshot`): the split is read
    once, when the run starts (a bad folder is a ConfigError naming eval.zeroshot.dataset); each call embeds it with the current towers. Flat names as `flatten_zeroshot`'s (eg-train
    prefixes `val/`), plus `zeroshot/skipped` (undecodable samples)."""

    def __init__(self, cfg: Any) -> None:
        from apps.common.config import ConfigError
        from apps.common.zeroshot_data import BenchmarkDataError, read_split, task_of

        self.cfg, zs = cfg, cfg.eval.zeroshot
        try:
            self.classnames, self.templates = task_of(zs.dataset, templates=zs.templates)
            self.split = read_split(zs.dataset, zs.split, len(self.classnames), zs.max_samples)
        except BenchmarkDataError as exc:
            raise ConfigError(f"eval.zeroshot.dataset={zs.dataset!r}: {exc}") from None

    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        """The zero-shot metrics of `model` (the unwrapped AlignmentModel) at `step`."""
        from apps.alignment.build import Aligned
        from apps.alignment.embed import Embedder
        from apps.alignment.evaluate import eval_dims

        cfg = self.cfg
        dims = eval_dims(cfg, model.mrl_dims)  # the retrieval validation's dims
        was_training = model.training
        model.eval()
        try:
            encoders = Embedder(Aligned(config=cfg, model=model, checkpoint="", step=step))
            result = zeroshot_result(encoders, self.classnames, self.templates, self.split, dims)
        finally:
            model.train(was_training)
        flat = flatten_zeroshot(result)
        flat["zeroshot/skipped"] = float(sum(len(s["skipped"]) for s in result.values()))
        return {k: v for k, v in flat.items() if not math.isnan(v)}


def with_zeroshot(held_out: Any, zeroshot: ZeroShotValidation | None) -> Any:
    """eg-train's `evaluate_fn`: the held-out retrieval validation (or None) and the zero-shot one (or
    None), their metrics merged; None when both are."""
    parts = [fn for fn in (held_out, zeroshot) if fn is not None]
    if not parts:
        return None

    def evaluate(model: torch.nn.Module, step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for fn in parts:
            metrics.update(fn(model, step))
        return metrics

    return evaluate
