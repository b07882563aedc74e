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


def label_colours(values: list[int]) -> dict[int, tuple[float, float, float, float]]:
    """A distinct colour per label: tab10 up to 10 labels, tab20 (hues first, then their light twins) up to
    20, evenly spaced on a perceptual colormap beyond that (distinct but no longer nameable in a legend)."""
    values = sorted(set(values))
    if len(values) <= 10:
        cmap = plt.get_cmap("tab10")
        return {v: cmap(i) for i, v in enumerate(values)}
    if len(values) <= 20:
        cmap = plt.get_cmap("tab20")
        order = list(range(0, 20, 2)) + list(range(1, 20, 2))  # ten strong hues, then ten light ones
        return {v: cmap(order[i]) for i, v in enumerate(values)}
    cmap = plt.get_cmap("turbo")
    return {v: cmap(i / (len(values) - 1)) for i, v in enumerate(values)}


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
    cmap = plt.get_cmap("tab10")  # modalities, when unlabelled
    label_values = sorted({int(v) for _, lab in chosen.values() if lab is not None for v in lab if v >= 0})
    colour_of = label_colours(label_values)
    grey = (0.5, 0.5, 0.5, 1.0)
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
                    [colour_of.get(int(v), grey) for v in group_labels]
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
    right = 0.97
    if label_values and len(label_values) <= 20:
        handles = [
            plt.Line2D([], [], marker="o", linestyle="", color=colour_of[v], label=str(v))
            for v in label_values
        ]
        columns = 1 if len(label_values) <= 10 else 2
        fig.legend(handles=handles, title="label", loc="upper right", fontsize=8, ncol=columns)
        right = 0.94 if columns == 1 else 0.90
    elif label_values:
        fig.text(0.99, 0.99, f"{len(label_values)} labels (colour scale)", ha="right", va="top", fontsize=8)
    fig.suptitle("Held-out embeddings in the shared space")
    fig.tight_layout(rect=(0, 0, right, 0.97))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
