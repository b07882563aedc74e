"""Linear probes of a stage-1 model: scikit-learn's LogisticRegression on frozen embeddings, images and
audio, at every trained Matryoshka dim.

For each modality and dim the embeddings (cut to the dim and renormalized, as the retrieval evaluation
views them) of the train split fit one multinomial logistic regression per C in `C_GRID`; the C with the
best validation top-1 accuracy (the smaller C on a tie: more regularized) is kept and that model is
scored on the test split (top-1 accuracy and mean per-class recall). The val split only chooses C; it is
never trained on, so the test figure is that of a model chosen without seeing the test split. A fit that
stops at `max_iter` before converging is counted and reported (`not_converged`), not hidden.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from apps.alignment.zeroshot import ZEROSHOT_MODALITIES, embed_items
from apps.common.retrieval import truncate_normalize
from apps.common.zeroshot_data import BenchmarkSplit, decode_media

C_GRID = tuple(float(c) for c in np.logspace(-2, 4, 7))  # 0.01 ... 10,000 (inverse L2 strength)
MAX_ITER = 1000


def _embed_split(
    encoders: Any, split: BenchmarkSplit, modality: str
) -> tuple[torch.Tensor, np.ndarray, list]:
    samples = split.having(modality)
    items, kept, bad = decode_media(samples, modality)
    emb = embed_items(encoders, modality, items) if items else torch.empty(0, 0)
    return emb, np.asarray([samples[i].label for i in kept], dtype=np.int64), bad


def mean_per_class_recall(predicted: np.ndarray, targets: np.ndarray) -> float:
    """Balanced accuracy: the mean over the classes present in `targets` of each class's recall."""
    return float(np.mean([(predicted[targets == c] == c).mean() for c in np.unique(targets)]))


def probe_at_dim(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    grid: Sequence[float] = C_GRID,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit on `train` (features (N, D), labels (N,)) for each C of `grid`, keep the best on `val`, score it
    on `test`: {"C", "val_acc1", "acc1", "mean_per_class_recall", "not_converged"}."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    best: tuple[float, float, Any] | None = None
    not_converged = 0
    for c in grid:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model = LogisticRegression(C=c, max_iter=MAX_ITER, random_state=seed).fit(*train)
        not_converged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        val_acc = float((model.predict(val[0]) == val[1]).mean())
        if best is None or val_acc > best[1]:
            best = (c, val_acc, model)
    assert best is not None
    c, val_acc, model = best
    predicted = model.predict(test[0])
    return {
        "C": c,
        "val_acc1": val_acc,
        "acc1": float((predicted == test[1]).mean()),
        "mean_per_class_recall": mean_per_class_recall(predicted, test[1]),
        "not_converged": not_converged,
    }


def linear_probe_result(
    encoders: Any,
    train: BenchmarkSplit,
    val: BenchmarkSplit,
    test: BenchmarkSplit,
    dims: Sequence[int],
    modalities: Sequence[str] | None = None,
) -> dict[str, Any]:
    """{modality: {"num_samples": {train, val, test}, "skipped", "dims": {str(dim): probe_at_dim(...)}}} for
    every modality the model and all three splits have (or those named)."""
    result: dict[str, Any] = {}
    for modality in modalities or ZEROSHOT_MODALITIES:
        if modality not in encoders.modalities or not all(s.having(modality) for s in (train, val, test)):
            continue
        parts = {
            name: _embed_split(encoders, s, modality)
            for name, s in zip(("train", "val", "test"), (train, val, test))
        }
        per_dim = {}
        for dim in sorted(dims):
            views = {name: (truncate_normalize(e, dim).numpy(), y) for name, (e, y, _) in parts.items()}
            per_dim[str(dim)] = probe_at_dim(views["train"], views["val"], views["test"])
        result[modality] = {
            "num_samples": {name: len(y) for name, (_, y, _) in parts.items()},
            "skipped": [key for _, _, bad in parts.values() for key in bad],
            "dims": per_dim,
        }
    return result


def format_probe_table(result: dict[str, Any]) -> str:
    """One row per modality and dim: the chosen C, val top-1, test top-1, test mean per-class recall."""
    header = f"{'modality':<10}{'dim':>6}{'C':>10}{'val top-1':>11}{'top-1':>8}{'per-class recall':>18}"
    lines = [header, "-" * len(header)]
    for modality, section in result.items():
        for dim in sorted(section["dims"], key=int):
            m = section["dims"][dim]
            lines.append(
                f"{modality:<10}{dim:>6}{m['C']:>10g}{m['val_acc1']:>11.3f}{m['acc1']:>8.3f}"
                f"{m['mean_per_class_recall']:>18.3f}"
            )
        fits = sum(m["not_converged"] for m in section["dims"].values())
        if fits:
            lines.append(f"{modality}: {fits} fits stopped at max_iter={MAX_ITER} before converging")
    return "\n".join(lines)
