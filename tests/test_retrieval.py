"""Retrieval metrics against known rankings, chunking invariance, Matryoshka truncation, the plot; mAP@k and
NDCG@k (per sample and label-aware) against hand computations and scikit-learn, ties by brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from PIL import Image

from apps.common.plots import label_colours, plot_embedding_space
from apps.common.retrieval import (
    MEAN_RECALL_KEY,
    direction_metrics,
    evaluate_retrieval,
    flatten_metrics,
    format_table,
    pair_counts,
    ranked_metrics,
    split_pair,
)


def _gallery_with_ranks(ranks: list[int], num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries/gallery built so query i's positive sits at 1-based rank ``ranks[i]``.

    Scores are set directly: query i is the one-hot e_i over a gallery whose column i holds score
    values; we build the similarity matrix S and factor it as Q @ G^T with Q = I, G = S^T.
    """
    sims = torch.zeros(num, num)
    for i, rank in enumerate(ranks):
        others = [j for j in range(num) if j != i]
        # Distinct scores: the positive gets (num - rank), the others fill the rest in order.
        values = [float(v) for v in range(num, 0, -1)]
        pos_value = values.pop(rank - 1)
        sims[i, i] = pos_value
        for j, v in zip(others, values):
            sims[i, j] = v
    return torch.eye(num), sims.T.contiguous()  # Q @ G^T = I @ S = S


def test_known_ranks_give_hand_computed_recalls() -> None:
    ranks = [1, 2, 5, 7, 11, 1, 3, 12, 1, 6, 10, 4]
    queries, gallery = _gallery_with_ranks(ranks, len(ranks))
    m = direction_metrics(queries, gallery)
    n = len(ranks)
    assert m["recall@1"] == pytest.approx(sum(r <= 1 for r in ranks) / n)
    assert m["recall@5"] == pytest.approx(sum(r <= 5 for r in ranks) / n)
    assert m["recall@10"] == pytest.approx(sum(r <= 10 for r in ranks) / n)
    # torch.median returns the lower middle value for an even count.
    assert m["median_rank"] == sorted(ranks)[(n - 1) // 2]


def test_chunking_does_not_change_results() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(37, 8, generator=gen)
    b = a + 0.8 * torch.randn(37, 8, generator=gen)
    labels = torch.randint(0, 4, (37,), generator=gen)
    full = direction_metrics(a, b, labels, chunk_size=1000)
    for chunk in (1, 5, 36):
        assert direction_metrics(a, b, labels, chunk_size=chunk) == full


def test_ties_are_ranked_at_their_average_position() -> None:
    # A collapsed model: every embedding equal -> the positive ties with all N, average rank (N+1)/2.
    same = torch.ones(10, 4)
    m = direction_metrics(same, same)
    assert m["recall@1"] == 0.0
    assert m["median_rank"] == pytest.approx(5.5)
    # Two identical captions for two images: each image's positive ties with one other -> rank 1.5.
    gallery = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    queries = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    m = direction_metrics(queries, gallery)
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@5"] == 1.0


def test_label_match_counts_same_label_top1_and_skips_unlabelled() -> None:
    # Query 0's top-1 is gallery 1 (same label 7): a label hit but not a recall hit.
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    gallery = torch.tensor([[0.6, 0.0], [1.0, 0.1], [0.0, 1.0]])
    labels = torch.tensor([7, 7, 3])
    m = direction_metrics(queries, gallery, labels)
    # top1: q0 -> g1 (label 7 == 7), q1 -> g2 (3 != 7), q2 -> g1 (7 != 3)
    assert m["label_match@1"] == pytest.approx(1 / 3)
    # Unlabelled queries are left out: q0 hits, q1 misses, q2 is skipped.
    m = direction_metrics(queries, gallery, torch.tensor([7, 7, -1]))
    assert m["label_match@1"] == 0.5
    assert "label_match@1" not in direction_metrics(queries, gallery, torch.tensor([-1, -1, -1]))


def test_evaluate_retrieval_per_pair_dim_direction_and_presence() -> None:
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(20, 16, generator=gen)
    # vision and text are identical, so every dim retrieves perfectly; audio is unrelated noise.
    emb = {"vision": base.clone(), "text": base.clone(), "audio": torch.randn(20, 16, generator=gen)}
    present = {m: torch.ones(20, dtype=torch.bool) for m in emb}
    present["text"][:5] = False
    labels = torch.arange(20) % 4
    result = evaluate_retrieval(emb, present, ["vision_text", "audio_text"], [4, 16], labels, chunk_size=3)
    assert set(result) == {"vision_text", "audio_text"}
    assert set(result["vision_text"]) == {"4", "16"}
    assert set(result["vision_text"]["16"]) == {"vision_to_text", "text_to_vision"}
    assert result["vision_text"]["16"]["vision_to_text"]["recall@1"] == 1.0
    assert result["vision_text"]["16"]["text_to_vision"]["label_match@1"] == 1.0
    assert pair_counts(present, ["vision_text", "audio_text"]) == {"vision_text": 15, "audio_text": 15}
    flat = flatten_metrics(result)
    assert flat["vision_text/16/vision_to_text/recall@1"] == 1.0
    top = [result[p]["16"][d]["recall@1"] for p in result for d in result[p]["16"]]
    assert flat[MEAN_RECALL_KEY] == pytest.approx(sum(top) / len(top))
    table = format_table(result)
    assert "vision_to_text" in table and "audio_to_text" in table and "1.000" in table


def test_split_pair_names() -> None:
    assert split_pair("vision_text", ["vision", "audio", "text"]) == ("vision", "text")
    with pytest.raises(ValueError, match="pair"):
        split_pair("vision_depth", ["vision", "text"])


def test_embedding_space_plot_is_written(tmp_path) -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 8)
    centres = rng.normal(size=(3, 6))
    emb = {m: centres[labels] + 0.1 * rng.normal(size=(24, 6)) for m in ("vision", "text")}
    path = plot_embedding_space(
        emb, {"vision": labels, "text": None}, tmp_path / "embedding_space.png", max_points=20
    )
    with Image.open(path) as image:
        assert image.size[0] > 500 and image.size[1] > 500


def test_label_palette_keeps_twenty_labels_apart() -> None:
    """Up to 20 labels get 20 different colours (tab10 repeated past ten before: labels 0 and 10 matched)."""
    for count in (3, 10, 11, 20, 35):
        colours = label_colours(list(range(count)))
        assert len(set(colours.values())) == count, count
    twenty = label_colours(list(range(20)))
    assert twenty[0] != twenty[10]


def test_known_ranks_give_hand_computed_map_ndcg_and_mean_rank() -> None:
    # One relevant item per query: AP@10 = 1/rank within the top 10, NDCG@10 = 1/log2(rank + 1).
    ranks = [1, 2, 5, 7, 11, 1, 3, 12, 1, 6, 10, 4]
    queries, gallery = _gallery_with_ranks(ranks, len(ranks))
    m = direction_metrics(queries, gallery)
    assert m["mean_rank"] == pytest.approx(sum(ranks) / len(ranks))
    assert m["map@10"] == pytest.approx(sum(1 / r for r in ranks if r <= 10) / len(ranks))
    assert m["ndcg@10"] == pytest.approx(sum(1 / math.log2(r + 1) for r in ranks if r <= 10) / len(ranks))


def test_label_aware_map_and_ndcg_by_hand() -> None:
    # Query 0 (label 1) scores the gallery [0.9, 0.8, 0.7, 0.6, 0.5] whose labels are [1, 0, 1, 1, 0]:
    # relevant at ranks 1, 3, 4 (R = 3). AP@10 = (1/1 + 2/3 + 3/4) / 3 = 0.805556;
    # DCG = 1 + 1/log2(4) + 1/log2(5) = 1.930677, IDCG = 1 + 1/log2(3) + 1/log2(4) = 2.130930 -> 0.906025.
    # AP@2 = (1/1) / min(3, 2) = 0.5; NDCG@2 = 1 / (1 + 1/log2(3)) = 0.613147.
    sims = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]])
    relevant = torch.tensor([[True, False, True, True, False]])
    out = ranked_metrics(sims, relevant, (10, 2))
    assert float(out[10][0]) == pytest.approx(0.805556, abs=1e-6)
    assert float(out[10][1]) == pytest.approx(0.906025, abs=1e-6)
    assert float(out[2][0]) == pytest.approx(0.5)
    assert float(out[2][1]) == pytest.approx(0.613147, abs=1e-6)
    assert math.isnan(float(ranked_metrics(sims, ~torch.ones_like(relevant), (10,))[10][0]))  # no relevant


def test_label_aware_metrics_in_direction_metrics_by_hand() -> None:
    # 4 samples in 2-D, labels [0, 0, 1, -1]. Query 0 = (1, 0) against the gallery rows below scores
    # [1.0, 0.6, 0.8, -1.0]: its class-0 items (gallery 0 and 1) sit at ranks 1 and 3:
    # AP = (1 + 2/3) / 2 = 0.833333, NDCG = (1 + 1/log2(4)) / (1 + 1/log2(3)) = 0.919721.
    # Query 1 = (0, 1) scores [0.0, 0.8, 0.6, 0.0]: its class-0 items at ranks 1 and 3 (gallery 0 ties
    # gallery 3 at 0.0 for ranks 3-4, an unlabelled item: E[AP] = (1 + (1/2)(2/3) + (1/2)(2/4)) / 2 and
    # E[DCG] = 1 + (1/2)/log2(4) + (1/2)/log2(5)). Query 2 (label 1) finds its one item at rank 2 (AP 1/2,
    # NDCG 1/log2(3)): (0.6, 0.8) scores [0.6, 1.0, 0.96, -0.6]; query 3 is unlabelled and left out.
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.0, -1.0]])
    gallery = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [-1.0, 0.0]])
    m = direction_metrics(queries, gallery, torch.tensor([0, 0, 1, -1]))
    idcg2 = 1 + 1 / math.log2(3)
    ap = [(1 + 2 / 3) / 2, (1 + 0.5 * 2 / 3 + 0.5 * 2 / 4) / 2, 1 / 2]
    ndcg = [
        (1 + 1 / math.log2(4)) / idcg2,
        (1 + 0.5 / math.log2(4) + 0.5 / math.log2(5)) / idcg2,
        1 / math.log2(3),
    ]
    assert m["label_map@10"] == pytest.approx(sum(ap) / 3)
    assert m["label_ndcg@10"] == pytest.approx(sum(ndcg) / 3)


def test_map_and_ndcg_equal_scikit_learn_on_random_rankings() -> None:
    from sklearn.metrics import average_precision_score, ndcg_score

    gen = torch.Generator().manual_seed(3)
    num = 40
    sims = torch.randn(25, num, generator=gen)
    relevant = torch.rand(25, num, generator=gen) < 0.25
    relevant[:, 7] = True  # every query has a relevant item
    out = ranked_metrics(sims, relevant, (num, 10, 3))
    y_true, y_score = relevant.numpy().astype(float), sims.numpy()
    for i in range(25):
        assert float(out[num][0][i]) == pytest.approx(average_precision_score(y_true[i], y_score[i]))
        for k in (num, 10, 3):
            want = ndcg_score(y_true[i : i + 1], y_score[i : i + 1], k=k)
            assert float(out[k][1][i]) == pytest.approx(want)
    # Through direction_metrics: label-aware at k >= N is the mean of scikit-learn's per-query AP / NDCG.
    a = torch.randn(30, 6, generator=gen)
    b = a + torch.randn(30, 6, generator=gen)
    labels = torch.randint(0, 3, (30,), generator=gen)
    m = direction_metrics(a, b, labels, chunk_size=7, ranked_ks=(30,))
    scores = (a @ b.T).numpy()
    same = (labels[:, None] == labels[None, :]).numpy().astype(float)
    assert m["label_map@30"] == pytest.approx(
        np.mean([average_precision_score(same[i], scores[i]) for i in range(30)])
    )
    assert m["label_ndcg@30"] == pytest.approx(
        np.mean([ndcg_score(same[i : i + 1], scores[i : i + 1]) for i in range(30)])
    )
    eye = np.eye(30)
    assert m["map@30"] == pytest.approx(
        np.mean([average_precision_score(eye[i], scores[i]) for i in range(30)])
    )


def _brute_force(scores: list[float], relevant: list[bool], k: int) -> tuple[float, float]:
    """AP@k and NDCG@k averaged over every order of the tied scores (all permutations, stable within)."""
    num_rel = sum(relevant)
    idcg = sum(1 / math.log2(i + 2) for i in range(min(num_rel, k)))
    aps, ndcgs = [], []
    for perm in itertools.permutations(range(len(scores))):
        order = sorted(perm, key=lambda j: -scores[j])  # stable: perm decides the order inside a tie
        rel = [relevant[j] for j in order][:k]
        hits, ap, dcg = 0, 0.0, 0.0
        for i, r in enumerate(rel):
            if r:
                hits += 1
                ap += hits / (i + 1)
                dcg += 1 / math.log2(i + 2)
        aps.append(ap / min(num_rel, k))
        ndcgs.append(dcg / idcg)
    return float(np.mean(aps)), float(np.mean(ndcgs))


def test_ties_give_the_expected_map_and_ndcg_over_random_orders() -> None:
    from sklearn.metrics import ndcg_score

    cases = [
        ([3.0, 2.0, 2.0, 2.0, 1.0, 1.0, 0.0], [False, True, False, True, True, False, True]),
        ([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [True, False, False, True, False, False, False]),  # collapsed
        ([5.0, 4.0, 4.0, 3.0, 3.0, 3.0, 3.0], [True, True, False, False, True, True, False]),
    ]
    for scores, relevant in cases:
        sims, rel = torch.tensor([scores]), torch.tensor([relevant])
        for k in (1, 2, 3, 7):
            ap, ndcg = _brute_force(scores, relevant, k)
            out = ranked_metrics(sims, rel, (k,))[k]
            assert float(out[0][0]) == pytest.approx(ap), (scores, k)
            assert float(out[1][0]) == pytest.approx(ndcg), (scores, k)
            # scikit-learn's tie-averaged NDCG (ignore_ties=False) is the same expectation
            assert float(out[1][0]) == pytest.approx(ndcg_score(rel.numpy().astype(float), sims.numpy(), k=k))
    # A collapsed model retrieves its one paired item at a uniformly random rank: E[AP@10] = H_10 / 10.
    m = direction_metrics(torch.ones(10, 4), torch.ones(10, 4))
    assert m["map@10"] == pytest.approx(sum(1 / r for r in range(1, 11)) / 10)
    assert m["mean_rank"] == pytest.approx(5.5)


def test_table_shows_the_ranked_columns() -> None:
    gen = torch.Generator().manual_seed(2)
    a = torch.nn.functional.normalize(torch.randn(12, 4, generator=gen), dim=1)
    m = direction_metrics(a, a, torch.arange(12) % 3)
    table = format_table({"vision_text": {"4": {"vision_to_text": m}}})
    header, _, row = table.splitlines()
    assert header.split()[-7:] == ["MedR", "MnR", "mAP@10", "NDCG@10", "label@1", "l-mAP@10", "l-NDCG@10"]
    assert row.split()[-5:] == [
        f"{m[k]:.3f}" for k in ("map@10", "ndcg@10", "label_match@1", "label_map@10", "label_ndcg@10")
    ]
    assert m["map@10"] == 1.0 and m["ndcg@10"] == 1.0
