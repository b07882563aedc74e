"""training_curves.png and loss_components.png from metrics.csv rows (matplotlib, no global backend), and
the PlotDrawer that draws them off the training loop's thread."""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from .metrics import FIXED_COLUMNS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TRAIN_LABEL = "train loss (window mean)"  # each train point averages the steps since the previous row
VAL_LABEL = "val loss"


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in rows:
        v = row.get(key)
        if v is not None and math.isfinite(v) and row.get("step") is not None:
            xs.append(row["step"])
            ys.append(v)
    return xs, ys


def draw_training_curves(rows: list[dict], path: Path) -> None:
    """Write `training_curves_figure(rows)` to `path`."""
    training_curves_figure(rows).savefig(path)


def training_curves_figure(rows: list[dict]) -> Figure:
    """Train loss (mean over each logging window) and validation loss, labelled apart in the legend (log
    scale when positive and spanning decades), with the learning rate underneath."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 7), dpi=110)
    FigureCanvasAgg(fig)
    ax_loss, ax_lr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for key, label, style in (("loss", TRAIN_LABEL, "-"), ("val/loss", VAL_LABEL, "o-")):
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
    return fig


def draw_loss_components(rows: list[dict], path: Path) -> None:
    """One panel per named loss part (own y scale, since parts differ by orders of magnitude);
    train solid, validation dashed with markers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    parts: list[str] = []
    for row in rows:
        for k in row:
            if k not in FIXED_COLUMNS and not k.startswith(("val/", "data/")) and k not in parts:
                parts.append(k)
    ncols = min(3, max(1, len(parts)))
    nrows = max(1, math.ceil(len(parts) / ncols))
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows + 0.6), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, key in zip(axes, parts):
        xs, ys = _series(rows, key)
        ax.plot(xs, ys, "-", color="C0", label="train")
        vx, vy = _series(rows, f"val/{key}")
        if vx:
            ax.plot(vx, vy, "o--", color="C1", label="validation", markersize=4)
        ax.set_title(key, fontsize="medium")
        ax.set_xlabel("optimizer step")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper right", fontsize="small")
    for ax in axes[len(parts) :]:
        ax.axis("off")
    if not parts:
        axes[0].text(
            0.5, 0.5, "the model reported no named loss parts", ha="center", transform=axes[0].transAxes
        )
    fig.suptitle("Loss components")
    fig.tight_layout()
    fig.savefig(path)


class PlotDrawer:
    """Draws both PNGs into `output_dir` on one background thread, so a validation does not wait for
    matplotlib (about 0.3 s a drawing on one core; it grows with the run's length).

    `start(rows)` snapshots the rows (they are only ever appended) and draws them in the background; a
    request while a drawing runs is skipped, `finish(rows)` draws whatever the last drawing missed.
    `poll()` and `finish()` return True once per finished drawing (to send the images to wandb).
    Matplotlib's object-oriented API with its own Agg canvas per figure keeps no global state to share.
    """

    def __init__(self, output_dir: Path) -> None:
        self.images = {
            "training_curves": output_dir / "training_curves.png",
            "loss_components": output_dir / "loss_components.png",
        }
        self._pool: ThreadPoolExecutor | None = None
        self._future: Future | None = None
        self._num_drawn = -1  # rows in the last finished drawing
        self._unreported = False

    def _draw(self, rows: list[dict]) -> int:
        draw_training_curves(rows, self.images["training_curves"])
        draw_loss_components(rows, self.images["loss_components"])
        return len(rows)

    def _reap(self) -> None:
        future, self._future = self._future, None
        if future is not None:
            self._num_drawn = future.result()  # waits; a drawing's exception is a bug: raised here
            self._unreported = True

    def start(self, rows: list[dict]) -> None:
        """Draw `rows` in the background unless a drawing is still running."""
        if self._future is not None:
            if not self._future.done():
                return
            self._reap()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eg-train-plots")
        self._future = self._pool.submit(self._draw, list(rows))

    def poll(self) -> bool:
        """True once after each drawing has finished."""
        if self._future is not None and self._future.done():
            self._reap()
        reported, self._unreported = self._unreported, False
        return reported

    def finish(self, rows: list[dict]) -> bool:
        """Wait for the running drawing, draw `rows` here if it missed any, and stop the thread."""
        self._reap()
        if self._num_drawn != len(rows):
            self._num_drawn = self._draw(list(rows))
            self._unreported = True
        self.close()
        return self.poll()

    def close(self) -> None:
        """Stop the thread (a running drawing is finished first)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
