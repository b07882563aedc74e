"""The Trainer: DDP, autocast, accumulation, non-finite guard, validation, checkpoints, exact resume."""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from collections.abc import Iterable
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
    batch_size,
    data_length,
    has_position,
    move_to_device,
    open_epoch,
    split_output,
)
from eg_train.datareport import DataReporter
from eg_train.distributed import (
    all_reduce_sum,
    barrier,
    broadcast_object,
    init_distributed,
    is_distributed,
    seed_everything,
    shutdown_distributed,
)
from eg_train.errors import TrainError
from eg_train.metrics import LogWindow, RunLoggers, import_wandb
from eg_train.plots import PlotDrawer
from eg_train.precision import autocast, check_precision, make_grad_scaler
from eg_train.schedule import build_optimizer, build_scheduler
from eg_train.validation import BestTracker, EvaluateFn, run_validation


class Trainer:
    """Trains `model` (forward(batch dict) -> dict with `loss` and named scalar parts) on `train_data`.

    `param_groups`: AdamW groups (dicts with `params`, optional `lr`/`weight_decay`; lr 0 freezes).
    `evaluate_fn(model, step) -> {name: value}` runs at each validation on every rank, with the unwrapped
    model in eval mode under torch.no_grad(); its metrics are logged as `val/<name>` (rank 0's values).
    `run_config`: the resolved experiment config (plain dict), stored in every checkpoint.
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
        self.data_positioned = has_position(train_data)
        self.reporter = DataReporter(train_data)
        self.run_config = run_config or {}
        self.optimizer = build_optimizer(self.model, config, param_groups)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.steps_per_epoch = self._steps_per_epoch()
        self.epoch_limit = config.epochs if config.max_steps == 0 else 0  # max_steps overrides epochs
        self.total_steps = self._total_steps()
        self.scheduler = build_scheduler(self.optimizer, config, self.total_steps)
        self.scaler = make_grad_scaler(config.precision, self.device)
        self.forward_model: nn.Module = self.model
        self.best = BestTracker(config.best_metric, config.best_mode)
        self.output_dir, self.checkpoint_dir = Path(config.output_dir), Path(config.checkpoint_dir)
        self.step = self.epoch = self.batch_in_epoch = self.samples_seen = 0
        self.num_skipped_steps = self.consecutive_nonfinite = self.num_failed_saves = 0
        self.epoch_start_rng: dict[str, Any] | None = None
        self.last_val: dict[str, float] = {}
        self.loggers: RunLoggers | None = None
        self.wandb_run_id: str | None = None
        self.window = LogWindow()  # saved in checkpoints: the next row averages the same steps
        self._last_val_step = self._last_save_step = self._last_written_step = -1
        self._warned_best = False
        self._pbar: Any = None
        self.writer = ck.CheckpointWriter()  # checkpoint files are written off the training loop
        self.plotter = PlotDrawer(self.output_dir)  # plots at validations within 1% of the wall time

    # ---- sizing -------------------------------------------------------------------------------
    def _steps_per_epoch(self) -> int | None:
        n = data_length(self.train_data)
        if n is None:
            return None
        if n == 0:
            raise TrainError("train data has length 0; check the dataset path and the batch size")
        return math.ceil(n / self.cfg.grad_accum_steps)  # a short last group still makes a step

    def _total_steps(self) -> int:
        cfg, spe = self.cfg, self.steps_per_epoch
        if cfg.max_steps > 0:
            return cfg.max_steps
        if spe is None:
            raise TrainError("epochs needs train data with __len__ to size the schedule; set max_steps")
        return cfg.epochs * spe

    # ---- public -------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to max_steps/epochs (resuming per the config's `resume`); returns a summary dict."""
        failed = True
        try:
            resumed = self._resume()
            if is_distributed():
                ids = [self.device] if self.device.type == "cuda" else None
                self.forward_model = DistributedDataParallel(
                    self.model, device_ids=ids, find_unused_parameters=self.cfg.find_unused_parameters
                )
            if self.dist.is_main:
                self.loggers = RunLoggers(
                    self.output_dir,
                    self.step if resumed else None,
                    self.cfg.tensorboard,
                    self.cfg.wandb,
                    self.run_config or {"train": self.cfg.to_dict()},
                    self.wandb_run_id,
                    columns=self.reporter.columns(),
                )
                self.wandb_run_id = self.loggers.wandb_run_id
                from tqdm.auto import tqdm

                self._pbar = tqdm(
                    total=self.total_steps,
                    initial=self.step,
                    desc="train",
                    dynamic_ncols=True,
                    disable=not self.cfg.progress_bar,
                )
            self.model.train()
            self.window.restart_clock()
            self.plotter.restart_clock()
            while self.step < self.total_steps and not (self.epoch_limit and self.epoch >= self.epoch_limit):
                self._run_epoch()
            if self._last_save_step != self.step:
                self._save(best=False, final=True)
            self._draw_plots(final=True)  # while the final checkpoint is being written
            self._collect_write(final=True)
            # Every rank leaves fit() together: a rank that exits (and tears down its gloo/nccl group at exit)
            # while rank 0 still draws the plots made a peer abort ("terminate called without an active
            # exception") now and then in the 2-rank test.
            barrier()
            failed = False
            return self.summary()
        finally:
            self._collect_write()  # also after an error: a write in flight still completes
            self.writer.close()
            if self._pbar is not None:
                self._pbar.close()
            if self.loggers is not None:
                self.loggers.close()
            if failed and is_distributed():
                shutdown_distributed()  # let torchrun see the failure instead of peers hanging in a collective

    def summary(self) -> dict[str, Any]:
        """Where the run stands: steps, samples, best metric, skipped steps, last validation."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "samples_seen": self.samples_seen,
            "best_metric": self.best.metric,
            "best_value": self.best.value,
            "best_step": self.best.step,
            "num_skipped_steps": self.num_skipped_steps,
            "num_failed_saves": self.num_failed_saves,
            "last_validation": dict(self.last_val),
            "checkpoint_dir": str(self.checkpoint_dir),
            "output_dir": str(self.output_dir),
        }

    # ---- resume -------------------------------------------------------------------------------
    def _resume(self) -> bool:
        mode = self.cfg.resume
        found: tuple[Path, dict[str, Any]] | None = None
        if mode != "never":
            folder = self.checkpoint_dir if mode == "auto" else Path(mode)
            path = ck.select_resume_path(folder, explicit=mode != "auto") if self.dist.is_main else None
            path = broadcast_object(path)
            if path is not None:
                found = (Path(path), ck.load_checkpoint(path))
        if found is None:
            seed_everything(self.cfg.seed + self.dist.rank)
            return False
        path, c = found
        state.restore(self, path, c)
        self._last_save_step = self._last_val_step = self.step
        if self.dist.is_main:
            print(
                f"eg-train: resumed from {path} at step {self.step} (epoch {self.epoch}, "
                f"batch {self.batch_in_epoch})",
                flush=True,
            )
        return True

    # ---- epoch and step -----------------------------------------------------------------------
    def _open_epoch(self) -> BatchStream:
        if self.batch_in_epoch == 0:
            self.epoch_start_rng = ck.capture_rng_state(self.device)
            self.reporter.new_epoch()
        stream = open_epoch(
            self.train_data, self.epoch, self.batch_in_epoch, self.epoch_start_rng, self.device
        )
        self.reporter.hand_over()  # after set_epoch, before the first batch: the data continues the counts
        return stream

    def _run_epoch(self) -> None:
        stream = self._open_epoch()
        accum, micro, started = self.cfg.grad_accum_steps, 0, self.batch_in_epoch
        acc: dict[str, Any] = {"bad": torch.zeros((), device=self.device), "loss": 0.0, "parts": {}, "n": 0}
        while self.step < self.total_steps:
            t0 = time.perf_counter()
            item = stream.next()
            self.window.wait += time.perf_counter() - t0
            if item is None:
                if micro == 0 and self.batch_in_epoch == started and started == 0:
                    raise TrainError(f"train data yielded no batch in epoch {self.epoch}; check the dataset")
                if micro > 0:
                    self._finish_step(micro, acc, epoch_ended=True)
                else:  # the data ended before its length said: no step to attach the epoch's end to
                    self._report_data(self.reporter.gather(), self.epoch, partial=False)
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                return
            batch, last_in_epoch = item
            self.batch_in_epoch += 1
            sync = micro + 1 == accum or last_in_epoch
            self._micro_step(batch, sync, acc)
            micro += 1
            if sync:
                self._finish_step(micro, acc, epoch_ended=last_in_epoch)
                micro = 0
                acc = {"bad": torch.zeros((), device=self.device), "loss": 0.0, "parts": {}, "n": 0}
                if last_in_epoch:
                    return

    def _micro_step(self, batch: dict, sync: bool, acc: dict[str, Any]) -> None:
        batch = move_to_device(batch, self.device)
        acc["n"] += batch_size(batch)
        no_sync = isinstance(self.forward_model, DistributedDataParallel) and not sync
        with self.forward_model.no_sync() if no_sync else contextlib.nullcontext():
            with autocast(self.cfg.precision, self.device):
                out = self.forward_model(batch)
            loss, parts = split_output(out)
            if loss is None:
                raise TrainError("the model's forward returned no 'loss' in training mode")
            # micro-batch gradients are summed here and divided by their count before the update
            self.scaler.scale(loss.float()).backward()
        detached = loss.detach().float()
        acc["bad"] = acc["bad"] + (~torch.isfinite(detached)).float()
        acc["loss"] = acc["loss"] + detached
        for k, v in parts.items():
            acc["parts"][k] = acc["parts"].get(k, 0.0) + v.to(self.device)

    def _finish_step(self, micro: int, acc: dict[str, Any], epoch_ended: bool) -> None:
        cfg = self.cfg
        self.scaler.unscale_(self.optimizer)
        if micro > 1:
            for p in self.params:
                if p.grad is not None:
                    p.grad.div_(micro)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        names = sorted(acc["parts"])
        packed = torch.stack([acc["bad"], acc["loss"] / micro, *[acc["parts"][k] / micro for k in names]])
        values = all_reduce_sum(packed.float()).tolist()
        world = self.dist.world_size
        loss = values[1] / world
        parts = {k: v / world for k, v in zip(names, values[2:])}
        grad_norm_f = float(grad_norm)
        nonfinite = values[0] > 0 or (not math.isfinite(grad_norm_f) and cfg.precision != "fp16")
        if nonfinite:
            self.scaler.update()  # the update is skipped; fp16 also lowers its loss scale
            self.num_skipped_steps += 1
            self.consecutive_nonfinite += 1
        else:
            self.scaler.step(self.optimizer)  # fp16 overflow (inf grad norm): GradScaler skips it itself
            self.scaler.update()
            self.consecutive_nonfinite = 0
            if not math.isfinite(grad_norm_f):
                self.num_skipped_steps += 1
        self.model.zero_grad(set_to_none=True)  # also params outside the optimizer (warned about)
        lr = max(g["lr"] for g in self.optimizer.param_groups)
        self.scheduler.step()
        self.step += 1
        self.samples_seen += acc["n"] * world
        step_epoch = self.epoch
        if epoch_ended:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self._after_step(loss, parts, grad_norm_f, lr, acc["n"] * world, epoch_ended, nonfinite, step_epoch)

    # ---- logging, validation, saving ----------------------------------------------------------
    def _after_step(
        self,
        loss: float,
        parts: dict[str, float],
        grad_norm: float,
        lr: float,
        samples: int,
        epoch_ended: bool,
        nonfinite: bool,
        step_epoch: int,
    ) -> None:
        cfg = self.cfg
        if self.writer.done():
            self._collect_write()  # report a failed background write at the next step
        self.window.add_step(loss, parts, grad_norm, samples)
        final = self.step >= self.total_steps or bool(
            self.epoch_limit and epoch_ended and self.epoch >= self.epoch_limit
        )
        row: dict[str, float | None] = {}
        row_due = self.step % cfg.log_every == 0 or final or nonfinite
        report = self.reporter.gather() if row_due or epoch_ended or final else None  # collective
        if row_due:
            row = {
                "epoch": step_epoch,
                "samples_seen": self.samples_seen,
                "lr": lr,
                "skipped_steps": self.num_skipped_steps,
                **self.window.row(),
                **(DataReporter.row(report) if report else {}),
            }
            if nonfinite:
                row["loss"] = loss  # show the bad value on the skipped step's row
            if self._pbar is not None:
                self._pbar.set_postfix(
                    loss=f"{row['loss']:.4f}",
                    lr=f"{lr:.2e}",
                    sps=f"{row['samples_per_s']:.1f}",
                    refresh=False,
                )
        has_val = self.val_data is not None or self.evaluate_fn is not None
        improved = False
        if has_val and (
            (cfg.val_every and self.step % cfg.val_every == 0)
            or (epoch_ended and cfg.val_at_epoch_end)
            or final
        ):
            self.last_val = run_validation(
                self.model, self.val_data, self.evaluate_fn, self.step, cfg.precision, self.device
            )
            self._last_val_step = self.step
            row.update(self.last_val)
            improved = bool(broadcast_object(self.best.update(self.last_val, self.step)))
            if self.best.lookup(self.last_val) is None and not self._warned_best and self.dist.is_main:
                self._warned_best = True
                warnings.warn(
                    f"best_metric={cfg.best_metric!r} is not among the validation metrics "
                    f"{sorted(self.last_val)}; checkpoint_best.pt is not written",
                    stacklevel=2,
                )
        if row and self.loggers is not None:
            self.loggers.log(self.step, row)
        if epoch_ended or final:
            self._report_data(report, step_epoch, partial=not epoch_ended)
        if self._pbar is not None:
            self._pbar.update(1)
        if self.consecutive_nonfinite >= cfg.max_consecutive_nonfinite:
            # stop before saving, so checkpoint_latest.pt stays the last state written by a good run
            kept = self.checkpoint_dir / ck.LATEST if self._last_save_step >= 0 else "(none yet)"
            raise TrainError(
                f"training stopped at step {self.step}: {self.consecutive_nonfinite} consecutive "
                f"non-finite steps (loss={loss}, grad_norm={grad_norm}); last good checkpoint "
                f"{kept} kept; lower lr or check the data"
            )
        if (cfg.save_every and self.step % cfg.save_every == 0) or epoch_ended or final or improved:
            save_latest = bool((cfg.save_every and self.step % cfg.save_every == 0) or epoch_ended or final)
            self._save(best=improved, latest=save_latest, final=final)
        if self._last_val_step == self.step:
            self._draw_plots(final=False)

    def _report_data(self, report: dict[str, Any] | None, epoch: int, partial: bool) -> None:
        """One summary line for the epoch when the data skipped any sample."""
        line = DataReporter.summary(report, epoch, partial) if report else None
        if line and self.dist.is_main:
            from tqdm.auto import tqdm

            tqdm.write(f"eg-train: {line}", file=sys.stdout)  # keeps the progress bar intact
            sys.stdout.flush()

    def _save(self, best: bool, latest: bool = True, final: bool = False) -> None:
        """Capture and serialize the run state (a collective), then write it on the writer thread.

        With `async_save`, training is blocked only while the state is captured and serialized (about one
        torch.save); the atomic writes and fsyncs overlap the next steps, and fit() waits for the final one.
        A failed write (disk full...) warns when its outcome is collected and training goes on, with the
        earlier files intact; a failed final write raises TrainError."""
        contents = state.capture(self)
        if latest:
            self._last_save_step = self.step
        if contents is None:
            return
        data = ck.serialize(contents)
        self._collect_write()  # one write at a time; the previous one's failure is reported first
        self.writer.submit(self.checkpoint_dir, data, self.step, latest, best, self.cfg.keep_last_n)
        if not self.cfg.async_save:
            self._collect_write(final=final)

    def _collect_write(self, final: bool = False) -> None:
        """Wait for the checkpoint write in flight (if any) and account for its outcome."""
        outcome = self.writer.wait()
        if outcome is None:
            return
        if outcome.error is None:
            if outcome.latest:
                self._last_written_step = outcome.step
            return
        self.num_failed_saves += 1
        kept = f"step {self._last_written_step}" if self._last_written_step >= 0 else "none yet"
        if final:
            raise TrainError(
                f"the final checkpoint (step {outcome.step}) could not be written to "
                f"{self.checkpoint_dir}: {outcome.error}; the newest one there is from {kept}"
            ) from None
        warnings.warn(
            f"checkpoint for step {outcome.step} not written to {self.checkpoint_dir} ({outcome.error}); "
            f"the earlier files are intact (latest: {kept}); training continues "
            f"({self.num_failed_saves} failed saves so far)",
            stacklevel=3,
        )

    def _draw_plots(self, final: bool) -> None:
        """At a validation, draw if the plot budget allows; at the end, draw the rows not drawn yet."""
        if self.loggers is None or not self.cfg.plots:
            return
        rows = self.loggers.csv.rows
        if self.plotter.finish(rows) if final else self.plotter.maybe_draw(rows):
            self.loggers.log_images(self.step, self.plotter.images)
