"""embedding_space.png: PCA and t-SNE views of held-out embeddings in the shared (projected) space.

One row per modality (its own 2-D fit) and a last row fitting all modalities together, where an aligned
model shows each label's vision, audio and text points in one cluster. Points are coloured by label when
the data has labels; the joint row marks modalities by shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs write files, never open windows
import matplotlib.pyplot as plt
import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

MARKERS = ("o", "^", "s", "D", "v")


def _project(points: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """2-D PCA and t-SNE of (N, D) points; t-SNE perplexity is capped for small N."""
    pca = PCA(n_components=2, random_state=seed).fit_transform(points)
    perplexity = float(min(30.0, max(2.0, (len(points) - 1) / 3.0)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)
    return pca, tsne


def plot_embedding_space(
    embeddings: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray | None],
    path: str | Path,
    max_points: int = 400,
    seed: int = 0,
) -> Path:
    """Draw PCA and t-SNE of each modality's (N_m, D) embeddings (and of all together) into ``path``.

    ``labels[m]`` is (N_m,) ints (negative = unlabelled) or None. At most ``max_points`` per modality
    are drawn (a seeded subsample) so t-SNE stays a few seconds on CPU.
    """
    rng = np.random.default_rng(seed)
    chosen: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for name, points in embeddings.items():
        points = np.asarray(points, dtype=np.float32)
        keep = np.sort(rng.permutation(len(points))[:max_points])
        point_labels = labels.get(name)
        chosen[name] = (points[keep], None if point_labels is None else np.asarray(point_labels)[keep])
    rows = list(chosen) + (["all"] if len(chosen) > 1 else [])
    fig, axes = plt.subplots(len(rows), 2, figsize=(10, 4.2 * len(rows)), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for row, name in enumerate(rows):
        if name == "all":
            points = np.concatenate([p for p, _ in chosen.values()])
            groups = [(m, len(p), lab) for m, (p, lab) in chosen.items()]
        else:
            points = chosen[name][0]
            groups = [(name, len(points), chosen[name][1])]
        if len(points) < 4:
            for ax in axes[row]:
                ax.set_title(f"{name}: too few points ({len(points)})")
                ax.axis("off")
            continue
        views = _project(points, seed)
        for col, (view, method) in enumerate(zip(views, ("PCA", "t-SNE"))):
            ax = axes[row][col]
            offset = 0
            for index, (modality, count, group_labels) in enumerate(groups):
                xy = view[offset : offset + count]
                offset += count
                colours = np.array(
                    [cmap(int(v) % 10) if v >= 0 else (0.5, 0.5, 0.5, 1.0) for v in group_labels]
                    if group_labels is not None
                    else [cmap(index)] * count
                )  # (count, 4) RGBA
                ax.scatter(
                    xy[:, 0],
                    xy[:, 1],
                    s=9,
                    c=colours,
                    marker=MARKERS[index % len(MARKERS)],
                    alpha=0.75,
                    label=modality,
                    linewidths=0,
                )
            ax.set_title(f"{name}: {method}")
            ax.set_xticks([])
            ax.set_yticks([])
            if len(groups) > 1:
                ax.legend(loc="best", fontsize=8, markerscale=1.5)
    label_values = sorted({int(v) for _, lab in chosen.values() if lab is not None for v in lab if v >= 0})
    if label_values and len(label_values) <= 20:
        handles = [
            plt.Line2D([], [], marker="o", linestyle="", color=cmap(v % 10), label=str(v))
            for v in label_values
        ]
        fig.legend(handles=handles, title="label", loc="upper right", fontsize=8)
    fig.suptitle("Held-out embeddings in the shared space")
    fig.tight_layout(rect=(0, 0, 0.94, 0.97))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
