"""training_curves.png and loss_components.png from metrics.csv rows (matplotlib, no global backend)."""

from __future__ import annotations

import math
from pathlib import Path

from .metrics import FIXED_COLUMNS


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in rows:
        v = row.get(key)
        if v is not None and math.isfinite(v) and row.get("step") is not None:
            xs.append(row["step"])
            ys.append(v)
    return xs, ys


def draw_training_curves(rows: list[dict], path: Path) -> None:
    """Train and validation loss (log scale when positive) with the learning rate underneath."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 7), dpi=110)
    FigureCanvasAgg(fig)
    ax_loss, ax_lr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for key, label, style in (("loss", "train loss", "-"), ("val/loss", "validation loss", "o-")):
        xs, ys = _series(rows, key)
        if xs:
            ax_loss.plot(xs, ys, style, label=label, markersize=4)
    values = [v for k in ("loss", "val/loss") for v in _series(rows, k)[1]]
    if values and min(values) > 0 and max(values) / min(values) > 20:
        ax_loss.set_yscale("log")  # long runs span decades; a linear axis flattens the tail
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("Training curves")
    ax_loss.grid(True, alpha=0.3)
    if ax_loss.get_legend_handles_labels()[0]:
        ax_loss.legend(loc="upper right")
    xs, ys = _series(rows, "lr")
    ax_lr.plot(xs, ys, color="tab:green", label="learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.set_ylabel("lr")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax_lr.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def draw_loss_components(rows: list[dict], path: Path) -> None:
    """One line per named loss part (train solid, validation dashed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train_parts: list[str] = []
    for row in rows:
        for k in row:
            if k not in FIXED_COLUMNS and not k.startswith("val/") and k not in train_parts:
                train_parts.append(k)
    fig = Figure(figsize=(9, 5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, key in enumerate(train_parts):
        color = f"C{i % 10}"
        xs, ys = _series(rows, key)
        if xs:
            ax.plot(xs, ys, "-", color=color, label=key)
        vx, vy = _series(rows, f"val/{key}")
        if vx:
            ax.plot(vx, vy, "o--", color=color, label=f"val/{key}", markersize=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss component")
    ax.set_title("Loss components")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize="small")
    else:
        ax.text(0.5, 0.5, "the model reported no named loss parts", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path)
