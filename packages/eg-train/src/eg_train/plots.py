"""training_curves.png and loss_components.png from metrics.csv rows (matplotlib, no global backend), and
the PlotDrawer that keeps drawing them within 1% of a run's wall time."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eg_train.metrics import FIXED_COLUMNS

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
    train solid, validation dashed with markers, one legend for the figure. Fixed margins instead of
    tight_layout, and one legend instead of one per panel, halve the drawing's cost (0.5 -> 0.25 s of CPU
    for the demo's 9 panels)."""
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
    legend: dict[str, Any] = {}
    for ax, key in zip(axes, parts):
        xs, ys = _series(rows, key)
        (legend["train"],) = ax.plot(xs, ys, "-", color="C0")
        vx, vy = _series(rows, f"val/{key}")
        if vx:
            (legend["validation"],) = ax.plot(vx, vy, "o--", color="C1", markersize=4)
        ax.set_title(key, fontsize="medium")
        ax.set_xlabel("optimizer step")
        ax.grid(True, alpha=0.3)
    for ax in axes[len(parts) :]:
        ax.axis("off")
    if not parts:
        axes[0].text(
            0.5, 0.5, "the model reported no named loss parts", ha="center", transform=axes[0].transAxes
        )
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="upper right", fontsize="small")
    fig.suptitle("Loss components")
    height = 3.2 * nrows + 0.6  # inches: 0.5 for the x labels below, 0.55 for the title above
    fig.subplots_adjust(
        left=0.07, right=0.98, bottom=0.5 / height, top=1 - 0.62 / height, hspace=0.5, wspace=0.25
    )
    fig.savefig(path)


PLOT_BUDGET = 0.01  # drawings at validations take at most 1% of a run's wall time
FIRST_DRAWING_S = 1.0  # what a first drawing is assumed to cost (matplotlib's import included)


class PlotDrawer:
    """Draws both PNGs into `output_dir` on the caller's thread, within a time budget.

    `maybe_draw(rows)` (at a validation) draws only while the drawings so far plus the last one's cost stay
    within `budget` of the wall time since `restart_clock()`, so a long run pays at most 1% for its plots
    however often it validates (a drawing costs 0.3-0.6 s of CPU on one core; on a background thread it
    slowed the training steps about as much, through the GIL). `finish(rows)` draws the rows the last
    drawing missed, whatever the budget. Both return whether they drew (to send the images to wandb).
    """

    def __init__(
        self, output_dir: Path, budget: float = PLOT_BUDGET, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.images = {
            "training_curves": output_dir / "training_curves.png",
            "loss_components": output_dir / "loss_components.png",
        }
        self.budget, self.clock = budget, clock
        self.t0 = clock()
        self.spent, self.last_cost = 0.0, FIRST_DRAWING_S
        self.num_drawn = -1  # rows in the last drawing
        self.num_skipped = 0

    def restart_clock(self) -> None:
        """Count the budget's wall time from now on."""
        self.t0 = self.clock()

    def _draw(self, rows: list[dict]) -> None:
        start = self.clock()
        draw_training_curves(rows, self.images["training_curves"])
        draw_loss_components(rows, self.images["loss_components"])
        self.last_cost = self.clock() - start
        self.spent += self.last_cost
        self.num_drawn = len(rows)

    def maybe_draw(self, rows: list[dict]) -> bool:
        """Draw `rows` if the budget allows it now."""
        if self.spent + self.last_cost > self.budget * (self.clock() - self.t0):
            self.num_skipped += 1
            return False
        self._draw(rows)
        return True

    def finish(self, rows: list[dict]) -> bool:
        """Draw `rows` unless the last drawing already showed all of them."""
        if self.num_drawn == len(rows):
            return False
        self._draw(rows)
        return True
