"""Run logging on rank 0: metrics.csv (resume-safe), tensorboard, optional wandb; the logging window."""

from __future__ import annotations

import csv
import io
import math
import os
import time
from pathlib import Path
from typing import Any

from eg_train.errors import TrainError

FIXED_COLUMNS = [
    "step",
    "epoch",
    "samples_seen",
    "lr",
    "loss",
    "grad_norm",
    "samples_per_s",
    "data_wait_frac",
    "skipped_steps",
]
TIME_COLUMNS = ("samples_per_s", "data_wait_frac", "mfu")  # wall-clock measurements: differ between runs
WANDB_MISSING = "wandb.enabled is true but wandb is not installed; pip install 'eg-train[wandb]'"


def import_wandb() -> Any:
    """The wandb module, or TrainError naming the extra to install."""
    try:
        import wandb
    except ImportError:
        raise TrainError(WANDB_MISSING) from None
    return wandb


def progress_bar(total: int, initial: int, enabled: bool) -> Any:
    """The tqdm bar of the training steps (rank 0)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, disable=not enabled)


def _cell(value: Any) -> str:
    if value is None:
        return ""  # an absent metric stays empty, never 0.0
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


def _parse(cell: str) -> float | None:
    if cell == "":
        return None
    return float(cell)


class MetricsCSV:
    """One row per logged step. Columns only grow (the file is rewritten when a new one appears).

    On resume, rows after the resumed step are dropped, so appending never duplicates a step.
    `columns`: further columns known before the first row (e.g. the data report's), in that order.
    """

    def __init__(self, path: Path, resume_step: int | None, columns: list[str] | None = None) -> None:
        self.path = path
        self.columns: list[str] = list(FIXED_COLUMNS)
        self.rows: list[dict[str, float | None]] = []
        if resume_step is not None and path.is_file():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                for name in reader.fieldnames or []:
                    if name not in self.columns:
                        self.columns.append(name)
                for raw in reader:
                    if None in raw.values() or None in raw:
                        continue  # a line cut short by a kill mid-write
                    row = {k: _parse(v) for k, v in raw.items() if k is not None and v is not None}
                    if row.get("step") is not None and row["step"] <= resume_step:
                        self.rows.append(row)
        self.columns.extend(c for c in columns or [] if c not in self.columns)
        self._rewrite()

    def _rewrite(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: _cell(_as_int(k, row.get(k))) for k in self.columns})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(buf.getvalue())
        os.replace(tmp, self.path)

    def append(self, row: dict[str, float | None]) -> None:
        """Add a row; rewrite the file if it brings a new column, else append one line."""
        self.rows.append(dict(row))
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns.extend(sorted(new))
            self._rewrite()
            return
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, lineterminator="\n")
            writer.writerow({k: _cell(_as_int(k, row.get(k))) for k in self.columns})


def _as_int(key: str, value: Any) -> Any:
    integral = key in ("step", "epoch", "samples_seen", "skipped_steps") or key.startswith("data/")
    if integral and value is not None and math.isfinite(value):
        return int(value)
    return value


class RunLoggers:
    """metrics.csv + tensorboard + wandb behind one `log(step, metrics)` call (create on rank 0 only)."""

    def __init__(
        self,
        output_dir: Path,
        resume_step: int | None,
        tensorboard: bool,
        wandb_cfg: Any,
        run_config: dict[str, Any],
        wandb_run_id: str | None,
        columns: list[str] | None = None,
    ) -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        self.csv = MetricsCSV(output_dir / "metrics.csv", resume_step, columns)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a killed run wrote after the checkpoint we resume from (or, for a
            # fresh run, everything an earlier run left in the same folder)
            purge = resume_step + 1 if resume_step is not None else 0
            self.tb = SummaryWriter(log_dir=str(output_dir / "tensorboard"), purge_step=purge)
        self.wandb_run = None
        self._wandb: Any = None
        if wandb_cfg is not None and wandb_cfg.enabled:
            self._wandb = wandb = import_wandb()  # the optional extra, imported only when enabled
            self.wandb_run = wandb.init(
                project=wandb_cfg.project,
                name=wandb_cfg.run_name or None,
                entity=wandb_cfg.entity or None,
                config=run_config,
                id=wandb_run_id,
                resume="allow",
                dir=str(output_dir),
            )

    @property
    def wandb_run_id(self) -> str | None:
        """The wandb run id, saved in checkpoints so a resumed run continues the same wandb run."""
        return self.wandb_run.id if self.wandb_run is not None else None

    def log(self, step: int, row: dict[str, float | None]) -> None:
        """Write one row; None values are left out of tensorboard/wandb and empty in the csv."""
        self.csv.append({"step": step, **row})
        present = {k: v for k, v in row.items() if v is not None and k not in ("step",)}
        if self.tb is not None:
            for k, v in present.items():
                self.tb.add_scalar(k if "/" in k else f"train/{k}", v, step)
            self.tb.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(present, step=step)

    def log_images(self, step: int, images: dict[str, Path]) -> None:
        """Send image files (the plots) to wandb; tensorboard and the csv keep scalars only."""
        if self.wandb_run is not None:
            self.wandb_run.log({k: self._wandb.Image(str(p)) for k, p in images.items()}, step=step)

    def close(self) -> None:
        """Flush and close every sink."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


class LogWindow:
    """Averages over the steps since the last logged row, with throughput and the data-wait fraction.

    Its sums (not the wall-clock parts) are saved in checkpoints, so the first row after a resume
    averages the same steps as the uninterrupted run's.
    """

    def __init__(self) -> None:
        self.reset()

    def restart_clock(self) -> None:
        """Measure throughput from now on (the window's sums are kept)."""
        self.t0, self.wait = time.perf_counter(), 0.0

    def reset(self) -> None:
        """Start a new window now."""
        self.t0, self.wait, self.samples = time.perf_counter(), 0.0, 0
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.parts: dict[str, list[float]] = {}

    def state_dict(self) -> dict[str, Any]:
        """The steps recorded since the last row (plain data for checkpoints)."""
        return {
            "samples": self.samples,
            "losses": list(self.losses),
            "grad_norms": list(self.grad_norms),
            "parts": {k: list(v) for k, v in self.parts.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the window saved by `state_dict` (its clock restarts now)."""
        self.reset()
        self.samples = int(state["samples"])
        self.losses = [float(v) for v in state["losses"]]
        self.grad_norms = [float(v) for v in state["grad_norms"]]
        self.parts = {k: [float(x) for x in v] for k, v in state["parts"].items()}

    def add_step(self, loss: float, parts: dict[str, float], grad_norm: float, samples: int) -> None:
        """Record one optimizer step; non-finite values are left out of the averages."""
        self.samples += samples
        if math.isfinite(loss):
            self.losses.append(loss)
            for k, v in parts.items():
                self.parts.setdefault(k, []).append(v)
        if math.isfinite(grad_norm):
            self.grad_norms.append(grad_norm)

    def row(self) -> dict[str, float]:
        """loss, grad_norm, samples_per_s, data_wait_frac and each part's mean; then reset."""
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        row = {
            "loss": _mean(self.losses),
            "grad_norm": _mean(self.grad_norms),
            "samples_per_s": self.samples / elapsed,
            "data_wait_frac": min(1.0, self.wait / elapsed),
        }
        row.update({k: _mean(v) for k, v in self.parts.items()})
        self.reset()
        return row


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
