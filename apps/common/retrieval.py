"""Cross-modal retrieval evaluation at every Matryoshka dim: recall@k, median and mean rank, label-match@1,
and the ranked metrics mAP@k and NDCG@k, per sample (the paired item is the one relevant item) and, with
labels, label-aware (every gallery item of the query's class is relevant).

Row i of one modality's embeddings is paired with row i of the other's. Similarities are computed one
chunk of queries at a time, so memory is O(chunk x N) rather than O(N x N), which keeps a 100k-sample
held-out set evaluable on one GPU. Ties are ranked at their average position: a collapsed model whose
embeddings are all equal scores near chance instead of a perfect recall, while two identical captions
(equally correct) still count as a top-1 hit. mAP@k and NDCG@k are their expected values when the order
inside a group of tied scores is drawn at random (for NDCG this is scikit-learn's `ndcg_score` with
`ignore_ties=False`); without ties they are the usual definitions:
AP@k = sum_{i<=k} P@i * rel_i / min(R, k) and NDCG@k = DCG@k / IDCG@k with gain rel_i / log2(i + 1),
R being the number of relevant gallery items (at k >= N, AP@k is scikit-learn's `average_precision_score`).

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
RANKED_KS = (10,)  # mAP@k and NDCG@k
MEAN_RECALL_KEY = "retrieval/mean_recall@1"


def split_pair(pair: str, modalities: Sequence[str]) -> tuple[str, str]:
    """Split a pair name like ``"vision_text"`` into its two modality names (checked against ``modalities``)."""
    for first in modalities:
        if pair.startswith(first + "_") and pair[len(first) + 1 :] in modalities:
            return first, pair[len(first) + 1 :]
    raise ValueError(f"pair {pair!r} is not '<modality>_<modality>' over {sorted(modalities)}")


def ranked_metrics(
    sims: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int]
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Expected AP@k and NDCG@k of every query row of ``sims`` (C, N), ``relevant`` (C, N) bool marking its
    relevant gallery items, the order inside a group of tied scores drawn uniformly at random.

    Returns ``{k: (ap, ndcg)}``, each (C,) float64; a row without a relevant item gets NaN. Only the top
    max(ks) positions are sorted, so the cost is O(C x N), as for recall: the group of scores tied with the
    last kept one is the only one that reaches past them, and its size and relevant count come from the
    whole row. Inside a group of s items with r relevant, preceded by c relevant items, the item at offset j
    (1-based) is relevant with probability r/s and, given that, has c + 1 + (j - 1)(r - 1)/(s - 1) relevant
    items at or above it, which gives E[rel_i * P@i * i] exactly.
    """
    num_queries, num = sims.shape
    top = min(max(ks), num)
    values, order = sims.topk(top, dim=1)  # (C, K), sorted by score, descending
    rel_top = relevant.gather(1, order).double()  # (C, K); arbitrary inside the last group, not read there
    device = sims.device
    positions = torch.arange(top, device=device).expand(num_queries, top)  # (C, K), 0-based
    new_group = torch.ones_like(values, dtype=torch.bool)
    new_group[:, 1:] = values[:, 1:] != values[:, :-1]
    group = new_group.long().cumsum(dim=1) - 1  # (C, K) group index inside the kept positions
    start = (positions * new_group).cummax(dim=1).values  # (C, K) first position of the item's group
    size = torch.zeros_like(rel_top).scatter_add_(1, group, torch.ones_like(rel_top))
    hits = torch.zeros_like(rel_top).scatter_add_(1, group, rel_top)
    size, hits = size.gather(1, group), hits.gather(1, group)
    last = values[:, -1:]  # (C, 1): its group may reach past the kept positions; count it in the whole row
    in_last = values == last
    tied = sims == last  # (C, N)
    size = torch.where(in_last, tied.sum(dim=1, keepdim=True).double(), size)
    hits = torch.where(in_last, (tied & relevant).sum(dim=1, keepdim=True).double(), hits)
    before = (rel_top.cumsum(dim=1) - rel_top).gather(1, start)  # relevant items above the group (exact)
    offset = (positions - start).double()  # j - 1
    p_rel = hits / size
    others = torch.where(size > 1, (hits - 1).clamp(min=0) / (size - 1).clamp(min=1), torch.zeros_like(size))
    rel_times_hits_above = p_rel * (before + 1 + offset * others)  # E[rel_i * (relevant items in 1..i)]
    rank = positions.double() + 1
    discount = 1.0 / torch.log2(rank[0] + 1)  # (K,)
    ideal = discount.cumsum(dim=0)  # IDCG@m = ideal[m - 1]
    num_relevant = relevant.sum(dim=1).double()  # (C,)
    out = {}
    for k in ks:
        within = rank <= k
        cutoff = num_relevant.clamp(min=1, max=k)  # min(R, k)
        ap = (rel_times_hits_above / rank * within).sum(dim=1) / cutoff
        dcg = (p_rel * discount * within).sum(dim=1)
        ndcg = dcg / ideal[(cutoff.long() - 1).clamp(max=top - 1)]
        none = num_relevant == 0
        out[k] = (ap.masked_fill(none, math.nan).cpu(), ndcg.masked_fill(none, math.nan).cpu())
    return out


def direction_metrics(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    labels: torch.Tensor | None = None,
    chunk_size: int = 1024,
    ranked_ks: Sequence[int] = RANKED_KS,
) -> dict[str, float]:
    """Retrieve row i of ``gallery`` for row i of ``queries``: recall@1/5/10, median and mean rank, mAP@k and
    NDCG@k (k in ``ranked_ks``; the paired item is the one relevant item), and with labels label-match@1,
    label_map@k and label_ndcg@k.

    ``queries`` and ``gallery`` are (N, D) and compared by dot product (normalize them first for cosine).
    Ranks are 1-based (a perfect retrieval has median rank 1). ``labels`` (N,), when given, adds
    ``label_match@1``: the fraction of queries whose top-1 gallery item has the query's label, and the
    label-aware ranked metrics, where every gallery item with the query's label is relevant; entries below 0
    mean "no label": such a query is left out of those means and such a gallery item is never relevant.
    """
    assert queries.shape == gallery.shape and queries.dim() == 2, (queries.shape, gallery.shape)
    num = queries.shape[0]
    if num == 0:
        raise ValueError("retrieval needs at least one paired sample; the evaluation split gave none")
    ranks = torch.empty(num, dtype=torch.float64)
    top1 = torch.empty(num, dtype=torch.long)
    ranked = {k: torch.empty(2, num, dtype=torch.float64) for k in ranked_ks}
    label_ranked = {k: torch.empty(2, num, dtype=torch.float64) for k in ranked_ks}
    gallery = gallery.float()
    if labels is not None:
        labels = labels.long().cpu()
    for start in range(0, num, chunk_size):
        stop = min(start + chunk_size, num)
        sims = queries[start:stop].float() @ gallery.T  # (C, N)
        rows = torch.arange(stop - start)
        positive = sims[rows, torch.arange(start, stop)].unsqueeze(1)  # (C, 1)
        higher = (sims > positive).sum(dim=1).double()
        tied = (sims == positive).sum(dim=1).double() - 1.0  # the positive always ties with itself
        ranks[start:stop] = 1.0 + higher + 0.5 * tied
        top1[start:stop] = sims.argmax(dim=1)
        paired = torch.zeros_like(sims, dtype=torch.bool)
        paired[rows, torch.arange(start, stop)] = True
        for k, (ap, ndcg) in ranked_metrics(sims, paired, ranked_ks).items():
            ranked[k][0, start:stop], ranked[k][1, start:stop] = ap, ndcg
        if labels is not None:
            on_device = labels.to(sims.device)
            query_labels = on_device[start:stop].unsqueeze(1)  # (C, 1)
            same = (on_device.unsqueeze(0) == query_labels) & (query_labels >= 0)  # (C, N)
            for k, (ap, ndcg) in ranked_metrics(sims, same, ranked_ks).items():
                label_ranked[k][0, start:stop], label_ranked[k][1, start:stop] = ap, ndcg
    metrics = {f"recall@{k}": float((ranks <= k).double().mean()) for k in RECALL_KS}
    metrics["median_rank"] = float(ranks.median())
    metrics["mean_rank"] = float(ranks.mean())
    for k, (ap, ndcg) in ranked.items():
        metrics[f"map@{k}"], metrics[f"ndcg@{k}"] = float(ap.mean()), float(ndcg.mean())
    if labels is not None:
        known = labels >= 0
        if bool(known.any()):
            hits = labels[top1] == labels
            metrics["label_match@1"] = float(hits[known].double().mean())
            for k, (ap, ndcg) in label_ranked.items():
                metrics[f"label_map@{k}"] = float(ap[known].mean())
                metrics[f"label_ndcg@{k}"] = float(ndcg[known].mean())
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
    """A fixed-width text table: one row per pair, dim and direction; R@1/5/10, median and mean rank, mAP@10,
    NDCG@10, and the label-aware label@1, mAP@10 and NDCG@10 ("-" without labels)."""
    k = RANKED_KS[-1]
    header = (
        f"{'pair':<14}{'dim':>6}  {'direction':<18}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'MedR':>7}{'MnR':>7}"
        f"{f'mAP@{k}':>8}{f'NDCG@{k}':>9}{'label@1':>9}{f'l-mAP@{k}':>10}{f'l-NDCG@{k}':>11}"
    )
    lines = [header, "-" * len(header)]

    def cell(m: Mapping[str, float], key: str, width: int, digits: int = 3) -> str:
        value = m.get(key, math.nan)
        return f"{'-' if math.isnan(value) else f'{value:.{digits}f}':>{width}}"

    for pair, per_dim in result.items():
        for dim in sorted(per_dim, key=int):
            for direction, m in per_dim[dim].items():
                lines.append(
                    f"{pair:<14}{dim:>6}  {direction:<18}{m['recall@1']:>7.3f}{m['recall@5']:>7.3f}"
                    f"{m['recall@10']:>7.3f}{m['median_rank']:>7.1f}{cell(m, 'mean_rank', 7, 1)}"
                    f"{cell(m, f'map@{k}', 8)}{cell(m, f'ndcg@{k}', 9)}{cell(m, 'label_match@1', 9)}"
                    f"{cell(m, f'label_map@{k}', 10)}{cell(m, f'label_ndcg@{k}', 11)}"
                )
    return "\n".join(lines)
