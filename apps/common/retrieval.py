"""Cross-modal retrieval evaluation: recall@k, median rank and label-match@1 at every Matryoshka dim.

Row i of one modality's embeddings is paired with row i of the other's. Similarities are computed one
chunk of queries at a time, so memory is O(chunk x N) rather than O(N x N), which keeps a 100k-sample
held-out set evaluable on one GPU. Ties are ranked at their average position: a collapsed model whose
embeddings are all equal scores near chance instead of a perfect recall, while two identical captions
(equally correct) still count as a top-1 hit.

The flat metric names, used by the trainer's metrics.csv and best-checkpoint selection, are
``"{pair}/{dim}/{query}_to_{gallery}/{metric}"``, e.g. ``"vision_text/512/vision_to_text/recall@1"``,
plus ``"retrieval/mean_recall@1"`` (mean over every pair and direction at the largest dim).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

RECALL_KS = (1, 5, 10)
MEAN_RECALL_KEY = "retrieval/mean_recall@1"


def split_pair(pair: str, modalities: Sequence[str]) -> tuple[str, str]:
    """Split a pair name like ``"vision_text"`` into its two modality names (checked against ``modalities``)."""
    for first in modalities:
        if pair.startswith(first + "_") and pair[len(first) + 1 :] in modalities:
            return first, pair[len(first) + 1 :]
    raise ValueError(f"pair {pair!r} is not '<modality>_<modality>' over {sorted(modalities)}")


def direction_metrics(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    labels: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Retrieve row i of ``gallery`` for row i of ``queries``; return recall@1/5/10, median rank, label-match@1.

    ``queries`` and ``gallery`` are (N, D) and compared by dot product (normalize them first for cosine).
    Ranks are 1-based (a perfect retrieval has median rank 1). ``labels`` (N,), when given, adds
    ``label_match@1``: the fraction of queries whose top-1 gallery item has the query's label; entries
    below 0 mean "no label" and are left out of that fraction.
    """
    assert queries.shape == gallery.shape and queries.dim() == 2, (queries.shape, gallery.shape)
    num = queries.shape[0]
    if num == 0:
        raise ValueError("retrieval needs at least one paired sample; the evaluation split gave none")
    ranks = torch.empty(num, dtype=torch.float64)
    top1 = torch.empty(num, dtype=torch.long)
    gallery = gallery.float()
    for start in range(0, num, chunk_size):
        stop = min(start + chunk_size, num)
        sims = queries[start:stop].float() @ gallery.T  # (C, N)
        rows = torch.arange(stop - start)
        positive = sims[rows, torch.arange(start, stop)].unsqueeze(1)  # (C, 1)
        higher = (sims > positive).sum(dim=1).double()
        tied = (sims == positive).sum(dim=1).double() - 1.0  # the positive always ties with itself
        ranks[start:stop] = 1.0 + higher + 0.5 * tied
        top1[start:stop] = sims.argmax(dim=1)
    metrics = {f"recall@{k}": float((ranks <= k).double().mean()) for k in RECALL_KS}
    metrics["median_rank"] = float(ranks.median())
    if labels is not None:
        labels = labels.long().cpu()
        known = labels >= 0
        if bool(known.any()):
            hits = labels[top1] == labels
            metrics["label_match@1"] = float(hits[known].double().mean())
    return metrics


def truncate_normalize(embeddings: torch.Tensor, dim: int) -> torch.Tensor:
    """The Matryoshka view of ``embeddings`` (N, D) at ``dim``: first ``dim`` features, L2-normalized."""
    assert 1 <= dim <= embeddings.shape[-1], (dim, embeddings.shape)
    return F.normalize(embeddings[..., :dim].float(), dim=-1)


def evaluate_retrieval(
    embeddings: Mapping[str, torch.Tensor],
    present: Mapping[str, torch.Tensor],
    pairs: Sequence[str],
    dims: Sequence[int],
    labels: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Retrieval in both directions for every pair at every Matryoshka dim.

    ``embeddings[m]`` is (N, D) for modality m over the same N samples; ``present[m]`` (N,) bool marks
    the samples that really have m (a pair uses the samples where both are present). Returns
    ``{pair: {str(dim): {"a_to_b": metrics, "b_to_a": metrics}}}``; :func:`pair_counts` gives the number
    of samples behind each pair. A pair without a single sample that has both sides (a split of a source
    that lacks one) is left out of the result; its count is 0.
    """
    modalities = list(embeddings)
    result: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for pair in pairs:
        first, second = split_pair(pair, modalities)
        keep = present[first].bool().cpu() & present[second].bool().cpu()
        if not bool(keep.any()):
            continue
        a, b = embeddings[first][keep], embeddings[second][keep]
        pair_labels = labels[keep] if labels is not None else None
        per_dim: dict[str, dict[str, dict[str, float]]] = {}
        for dim in dims:
            a_d, b_d = truncate_normalize(a, dim), truncate_normalize(b, dim)
            per_dim[str(dim)] = {
                f"{first}_to_{second}": direction_metrics(a_d, b_d, pair_labels, chunk_size),
                f"{second}_to_{first}": direction_metrics(b_d, a_d, pair_labels, chunk_size),
            }
        result[pair] = per_dim
    return result


def pair_counts(present: Mapping[str, torch.Tensor], pairs: Sequence[str]) -> dict[str, int]:
    """Number of samples each pair is evaluated on (both modalities present)."""
    modalities = list(present)
    counts = {}
    for pair in pairs:
        first, second = split_pair(pair, modalities)
        counts[pair] = int((present[first].bool() & present[second].bool()).sum())
    return counts


def flatten_metrics(
    result: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]],
) -> dict[str, float]:
    """Flat ``"{pair}/{dim}/{direction}/{metric}"`` names plus the headline mean recall@1 at the top dim."""
    flat: dict[str, float] = {}
    top_recalls = []
    for pair, per_dim in result.items():
        top_dim = max(per_dim, key=int)
        for dim, directions in per_dim.items():
            for direction, metrics in directions.items():
                for name, value in metrics.items():
                    flat[f"{pair}/{dim}/{direction}/{name}"] = value
                if dim == top_dim:
                    top_recalls.append(metrics["recall@1"])
    if top_recalls:
        flat[MEAN_RECALL_KEY] = sum(top_recalls) / len(top_recalls)
    return flat


def format_table(result: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]]) -> str:
    """A fixed-width text table: one row per pair, dim and direction; R@1/5/10, median rank, label@1."""
    header = (
        f"{'pair':<14}{'dim':>6}  {'direction':<18}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'MedR':>7}{'label@1':>9}"
    )
    lines = [header, "-" * len(header)]
    for pair, per_dim in result.items():
        for dim in sorted(per_dim, key=int):
            for direction, m in per_dim[dim].items():
                label = m.get("label_match@1", math.nan)
                label_text = "-" if math.isnan(label) else f"{label:.3f}"
                lines.append(
                    f"{pair:<14}{dim:>6}  {direction:<18}{m['recall@1']:>7.3f}{m['recall@5']:>7.3f}"
                    f"{m['recall@10']:>7.3f}{m['median_rank']:>7.1f}{label_text:>9}"
                )
    return "\n".join(lines)
