"""Retrieval metrics against known rankings, chunking invariance, Matryoshka truncation, the plot."""

from __future__ import annotations

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
