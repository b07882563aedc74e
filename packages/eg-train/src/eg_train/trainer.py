"""The Trainer: DDP, autocast, accumulation, non-finite guard, validation, checkpoints, exact resume."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from eg_train import checkpoint as ck
from eg_train import state
from eg_train.config import TrainerConfig
from eg_train.data import (
    BatchStream,
    StepSums,
    batch_size,
    has_position,
    move_to_device,
    open_epoch,
    split_output,
    steps_per_epoch,
    total_steps,
)
from eg_train.datareport import DataReporter
from eg_train.distributed import (
    barrier,
    broadcast_object,
    init_distributed,
    is_distributed,
    seed_everything,
    shutdown_distributed,
    wrap_ddp,
)
from eg_train.elastic import SampleKeyLog, keep_order
from eg_train.errors import TrainError
from eg_train.metrics import LogWindow, RunLoggers, import_wandb, progress_bar
from eg_train.plots import PlotDrawer
from eg_train.precision import autocast, check_precision, make_grad_scaler
from eg_train.runlock import run_lock
from eg_train.saving import CheckpointSaver
from eg_train.schedule import build_optimizer, build_scheduler
from eg_train.state import RunState, StateParts
from eg_train.throughput import device_peak, mfu
from eg_train.validation import BestTracker, EvaluateFn, run_validation


@dataclass
class StepResult:
    """One optimizer step as the bookkeeping after it sees it (loss and parts averaged over ranks)."""

    loss: float
    parts: dict[str, float]
    grad_norm: float
    lr: float  # the largest group lr the step used
    samples: int  # summed over ranks
    epoch: int  # the epoch the step belongs to
    epoch_ended: bool
    nonfinite: bool
    final: bool  # the run's last step


class Trainer:
    """Trains `model` (forward(batch dict) -> dict with `loss` and named scalar parts) on `train_data`.

    `param_groups`: AdamW groups (dicts with `params`, optional `lr`/`weight_decay`; lr 0 freezes).
    `evaluate_fn(model, step) -> {name: value}` runs at each validation on every rank, with the unwrapped
    model in eval mode under torch.no_grad(); its metrics are logged as `val/<name>` (rank 0's values).
    `run_config`: the resolved experiment config (plain dict), stored in every checkpoint.
    `flops_per_sample`: model FLOPs of one sample's forward + backward (e.g. from
    `eg_train.throughput.train_step_flops` / batch size); when given, rows carry `mfu` against the device's
    peak (throughput.device_peak, found once at start and said in one line) and the bar shows it by sps.
    When `train_data` has `data_report()` (see datareport.py), its bad-sample counts are logged; with
    `restore_data_report(report)` too, a resume hands it the counts saved at the checkpoint.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainerConfig,
        train_data: Iterable,
        val_data: Iterable | None = None,
        param_groups: list[dict[str, Any]] | None = None,
        evaluate_fn: EvaluateFn | None = None,
        run_config: dict[str, Any] | None = None,
        flops_per_sample: float | None = None,
    ) -> None:
        config.validate()
        if config.wandb.enabled:
            import_wandb()  # a missing extra fails now, in one line, not at the first log
        self.cfg = config
        self.dist = init_distributed(config.device)
        self.device = self.dist.device
        check_precision(config.precision, self.device)
        self.model = model.to(self.device)
        self.train_data, self.val_data, self.evaluate_fn = train_data, val_data, evaluate_fn
        self.reporter = DataReporter(train_data)
        self.run_config = run_config or {}
        self.optimizer = build_optimizer(self.model, config, param_groups)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.steps_per_epoch = steps_per_epoch(train_data, config.grad_accum_steps)
        self.epoch_limit = config.epochs if config.max_steps == 0 else 0  # max_steps overrides epochs
        self.total_steps = total_steps(config.max_steps, config.epochs, self.steps_per_epoch)
        self.scheduler = build_scheduler(self.optimizer, config, self.total_steps)
        self.scaler = make_grad_scaler(config.precision, self.device)
        self.forward_model: nn.Module = self.model
        self.best = BestTracker(config.best_metric, config.best_mode)
        self.output_dir, self.checkpoint_dir = Path(config.output_dir), Path(config.checkpoint_dir)
        self.run = RunState()
        self.window = LogWindow()  # saved in checkpoints: the next row averages the same steps
        self.parts = StateParts(
            self.run,
            self.model,
            self.optimizer,
            self.scheduler,
            self.scaler,
            self.window,
            self.best,
            self.reporter,
            self.dist,
            config,
            self.run_config,
            has_position(train_data),
            train_data,
        )
        self.last_val: dict[str, float] = {}
        self.loggers: RunLoggers | None = None
        self._last_val_step = self._last_save_step = -1
        self._pbar: Any = None
        self.flops_per_sample, self.peak_flops = flops_per_sample, 0.0  # mfu column when flops are given
        self.saver = CheckpointSaver(self.checkpoint_dir, config.keep_last_n, config.async_save)
        self.plotter = PlotDrawer(self.output_dir)  # plots at validations within 1% of the wall time
        self.key_log = SampleKeyLog(self.output_dir, self.dist.is_main) if config.log_sample_keys else None

    # ---- public -------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to max_steps/epochs (resuming per the config's `resume`); returns a summary dict.

        Holds the checkpoint folder's run lock meanwhile (rank 0): RunLockedError when another run has it."""
        with run_lock(self.checkpoint_dir, self.dist.rank):
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        failed = True
        try:
            resumed = self._resume()
            if self.key_log is not None:
                self.key_log.start(self.run.step if resumed else None)
            self.forward_model = wrap_ddp(self.model, self.device, self.cfg.find_unused_parameters)
            if self.dist.is_main:
                self._open_loggers(resumed)
            self.model.train()
            self.window.restart_clock()
            self.plotter.restart_clock()
            run = self.run
            while run.step < self.total_steps and not (self.epoch_limit and run.epoch >= self.epoch_limit):
                self._run_epoch()
            if self._last_save_step != run.step:
                self._save(best=False, final=True)
            self._draw_plots(final=True)  # while the final checkpoint is being written
            self.saver.collect(final=True)
            # Every rank leaves fit() together: a rank that exits (and tears down its gloo/nccl group at exit)
            # while rank 0 still draws the plots made a peer abort ("terminate called without an active
            # exception") now and then in the 2-rank test.
            barrier()
            failed = False
            return self.summary()
        finally:
            self.saver.collect()  # also after an error: a write in flight still completes
            self.saver.close()
            if self._pbar is not None:
                self._pbar.close()
            if self.loggers is not None:
                self.loggers.close()
            if failed and is_distributed():
                shutdown_distributed()  # let torchrun see the failure instead of peers hanging in a collective

    def summary(self) -> dict[str, Any]:
        """Where the run stands: steps, samples, best metric, skipped steps, last validation."""
        return {
            "step": self.run.step,
            "epoch": self.run.epoch,
            "samples_seen": self.run.samples_seen,
            "best_metric": self.best.metric,
            "best_value": self.best.value,
            "best_step": self.best.step,
            "num_skipped_steps": self.run.num_skipped_steps,
            "num_failed_saves": self.saver.num_failed_saves,
            "last_validation": dict(self.last_val),
            "checkpoint_dir": str(self.checkpoint_dir),
            "output_dir": str(self.output_dir),
        }

    # ---- start --------------------------------------------------------------------------------
    def _resume(self) -> bool:
        found = state.find_resume(self.cfg.resume, self.checkpoint_dir, self.dist.is_main)
        if found is None:
            seed_everything(self.cfg.seed + self.dist.rank)
            return False
        path, c = found
        # before anything is restored: the data reads the checkpoint's order (or the resume is refused)
        kept = keep_order(self.train_data, c, path, self.dist.world_size, self.cfg.grad_accum_steps)
        if kept:
            self._resize()
        note = state.restore(self.parts, path, c)
        run = self.run
        self._last_save_step = self._last_val_step = run.step
        self._say(f"resumed from {path} at step {run.step} (epoch {run.epoch}, batch {run.batch_in_epoch})")
        for line in (kept, note):
            if line:
                self._say(line)
        return True

    def _resize(self) -> None:
        """Steps per epoch (and an epochs-long run's schedule) after the data took a checkpoint's order."""
        self.steps_per_epoch = steps_per_epoch(self.train_data, self.cfg.grad_accum_steps)
        total = total_steps(self.cfg.max_steps, self.cfg.epochs, self.steps_per_epoch)
        if total != self.total_steps:
            self.total_steps = total
            self.scheduler = self.parts.scheduler = build_scheduler(self.optimizer, self.cfg, total)

    def _open_loggers(self, resumed: bool) -> None:
        """metrics.csv, tensorboard, wandb and the progress bar (rank 0)."""
        self.loggers = RunLoggers(
            self.output_dir,
            self.run.step if resumed else None,
            self.cfg.tensorboard,
            self.cfg.wandb,
            self.run_config or {"train": self.cfg.to_dict()},
            self.run.wandb_run_id,
            columns=self.reporter.columns(),
        )
        self.run.wandb_run_id = self.loggers.wandb_run_id
        self._pbar = progress_bar(self.total_steps, self.run.step, self.cfg.progress_bar)
        if self.flops_per_sample:
            self.peak_flops, source = device_peak(self.device, self.cfg.precision)  # once, at start
            self._say(f"mfu against {self.peak_flops / 1e12:.3g} TFLOP/s ({source})")

    # ---- epoch and step -----------------------------------------------------------------------
    def _open_epoch(self) -> BatchStream:
        run = self.run
        if run.batch_in_epoch == 0:
            run.epoch_start_rng = ck.capture_rng_state(self.device)
            self.reporter.new_epoch()
        stream = open_epoch(self.train_data, run.epoch, run.batch_in_epoch, run.epoch_start_rng, self.device)
        self.reporter.hand_over()  # after set_epoch, before the first batch: the data continues the counts
        return stream

    def _run_epoch(self) -> None:
        stream, run = self._open_epoch(), self.run
        started, sums = run.batch_in_epoch, StepSums(self.device)
        while run.step < self.total_steps:
            t0 = time.perf_counter()
            item = stream.next()
            self.window.wait += time.perf_counter() - t0
            if item is None:
                if sums.micro == 0 and run.batch_in_epoch == started and started == 0:
                    raise TrainError(f"train data yielded no batch in epoch {run.epoch}; check the dataset")
                if sums.micro > 0:
                    self._finish_step(sums, epoch_ended=True)
                else:  # the data ended before its length said: no step to attach the epoch's end to
                    self._report_data(self.reporter.gather(), run.epoch, partial=False)
                    run.epoch, run.batch_in_epoch = run.epoch + 1, 0
                return
            batch, last_in_epoch = item
            run.batch_in_epoch += 1
            sync = sums.micro + 1 == self.cfg.grad_accum_steps or last_in_epoch
            self._micro_step(batch, sync, sums)
            if sync:
                self._finish_step(sums, epoch_ended=last_in_epoch)
                sums = StepSums(self.device)
                if last_in_epoch:
                    return

    def _micro_step(self, batch: dict, sync: bool, sums: StepSums) -> None:
        batch = move_to_device(batch, self.device)
        samples = batch_size(batch)
        no_sync = isinstance(self.forward_model, DistributedDataParallel) and not sync
        with self.forward_model.no_sync() if no_sync else contextlib.nullcontext():
            with autocast(self.cfg.precision, self.device):
                out = self.forward_model(batch)
            loss, parts = split_output(out)
            if loss is None:
                raise TrainError("the model's forward returned no 'loss' in training mode")
            # micro-batch gradients are summed here and divided by their count before the update
            self.scaler.scale(loss.float()).backward()
        sums.add(loss, parts, samples)
        if self.key_log is not None:
            self.key_log.add(batch)

    def _finish_step(self, sums: StepSums, epoch_ended: bool) -> None:
        cfg, run, micro = self.cfg, self.run, sums.micro
        self.scaler.unscale_(self.optimizer)
        if micro > 1:
            for p in self.params:
                if p.grad is not None:
                    p.grad.div_(micro)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        world = self.dist.world_size
        bad_loss, loss, parts = sums.reduce(world)  # a collective
        nonfinite = bad_loss or (not math.isfinite(grad_norm) and cfg.precision != "fp16")
        if nonfinite:
            self.scaler.update()  # the update is skipped; fp16 also lowers its loss scale
            run.num_skipped_steps += 1
            run.consecutive_nonfinite += 1
        else:
            self.scaler.step(self.optimizer)  # fp16 overflow (inf grad norm): GradScaler skips it itself
            self.scaler.update()
            run.consecutive_nonfinite = 0
            if not math.isfinite(grad_norm):
                run.num_skipped_steps += 1
        self.model.zero_grad(set_to_none=True)  # also params outside the optimizer (warned about)
        lr = max(g["lr"] for g in self.optimizer.param_groups)
        self.scheduler.step()
        run.step += 1
        run.samples_seen += sums.samples * world
        if self.key_log is not None:
            self.key_log.step(run.step)  # a collective
        step_epoch = run.epoch
        if epoch_ended:
            run.epoch, run.batch_in_epoch = run.epoch + 1, 0
        final = run.step >= self.total_steps or bool(
            self.epoch_limit and epoch_ended and run.epoch >= self.epoch_limit
        )
        samples = sums.samples * world
        self._after_step(
            StepResult(loss, parts, grad_norm, lr, samples, step_epoch, epoch_ended, nonfinite, final)
        )

    # ---- after a step: logging, validation and best, the non-finite stop, saving ---------------
    def _after_step(self, s: StepResult) -> None:
        self.saver.poll()  # report a failed background write at the next step
        self.window.add_step(s.loss, s.parts, s.grad_norm, s.samples)
        row_due = self.run.step % self.cfg.log_every == 0 or s.final or s.nonfinite
        report = self.reporter.gather() if row_due or s.epoch_ended or s.final else None  # collective
        row = self._train_row(s, report) if row_due else {}
        improved = self._validate_if_due(s, row)
        if row and self.loggers is not None:
            self.loggers.log(self.run.step, row)
        if s.epoch_ended or s.final:
            self._report_data(report, s.epoch, partial=not s.epoch_ended)
        if self._pbar is not None:
            self._pbar.update(1)
        self._stop_if_nonfinite(s)
        self._save_if_due(s, improved)
        if self._last_val_step == self.run.step:
            self._draw_plots(final=False)

    def _train_row(self, s: StepResult, report: dict[str, Any] | None) -> dict[str, float | None]:
        """The metrics row of this step: the logging window's means, the counters, the data report."""
        row: dict[str, float | None] = {
            "epoch": s.epoch,
            "samples_seen": self.run.samples_seen,
            "lr": s.lr,
            "skipped_steps": self.run.num_skipped_steps,
            **self.window.row(),
            **(DataReporter.row(report) if report else {}),
        }
        if s.nonfinite:
            row["loss"] = s.loss  # show the bad value on the skipped step's row
        extra = {}
        if self.flops_per_sample and self.peak_flops:
            row["mfu"] = mfu(self.flops_per_sample, row["samples_per_s"], self.peak_flops)
            extra["mfu"] = f"{row['mfu']:.2%}"
        if self._pbar is not None:
            sps = f"{row['samples_per_s']:.1f}"
            self._pbar.set_postfix(
                loss=f"{row['loss']:.4f}", lr=f"{s.lr:.2e}", sps=sps, **extra, refresh=False
            )
        return row

    def _validate_if_due(self, s: StepResult, row: dict[str, float | None]) -> bool:
        """Validate when due (adding the metrics to `row`); True when the best metric improved."""
        cfg, step = self.cfg, self.run.step
        if self.val_data is None and self.evaluate_fn is None:
            return False
        due = (cfg.val_every and step % cfg.val_every == 0) or (s.epoch_ended and cfg.val_at_epoch_end)
        if not (due or s.final):
            return False
        self.last_val = run_validation(
            self.model, self.val_data, self.evaluate_fn, step, cfg.precision, self.device
        )
        self._last_val_step = step
        row.update(self.last_val)
        improved = bool(broadcast_object(self.best.update(self.last_val, step)))
        if self.dist.is_main:
            self.best.warn_if_untracked(self.last_val)
        return improved

    def _stop_if_nonfinite(self, s: StepResult) -> None:
        """Stop before saving, so checkpoint_latest.pt stays the last state written by a good run."""
        run = self.run
        if run.consecutive_nonfinite >= self.cfg.max_consecutive_nonfinite:
            kept = self.checkpoint_dir / ck.LATEST if self._last_save_step >= 0 else "(none yet)"
            raise TrainError(
                f"training stopped at step {run.step}: {run.consecutive_nonfinite} consecutive "
                f"non-finite steps (loss={s.loss}, grad_norm={s.grad_norm}); last good checkpoint "
                f"{kept} kept; lower lr or check the data"
            )

    def _save_if_due(self, s: StepResult, improved: bool) -> None:
        every = self.cfg.save_every
        latest = bool((every and self.run.step % every == 0) or s.epoch_ended or s.final)
        if latest or improved:
            self._save(best=improved, latest=latest, final=s.final)

    def _save(self, best: bool, latest: bool = True, final: bool = False) -> None:
        """Capture the run state (a collective) and hand it to the saver (rank 0 writes)."""
        contents = state.capture(self.parts)
        if latest:
            self._last_save_step = self.run.step
        if contents is not None:
            self.saver.submit(contents, self.run.step, latest, best, final)

    def _report_data(self, report: dict[str, Any] | None, epoch: int, partial: bool) -> None:
        """One summary line for the epoch when the data skipped any sample."""
        line = DataReporter.summary(report, epoch, partial) if report else None
        if line:
            self._say(line)

    def _say(self, line: str) -> None:
        """One line of our own on rank 0's stdout, above the progress bar."""
        if self.dist.is_main:
            from tqdm.auto import tqdm

            tqdm.write(f"eg-train: {line}", file=sys.stdout)  # keeps the progress bar intact
            sys.stdout.flush()

    def _draw_plots(self, final: bool) -> None:
        """At a validation, draw if the plot budget allows; at the end, draw the rows not drawn yet."""
        if self.loggers is None or not self.cfg.plots:
            return
        rows = self.loggers.csv.rows
        if self.plotter.finish(rows) if final else self.plotter.maybe_draw(rows):
            self.loggers.log_images(self.run.step, self.plotter.images)
