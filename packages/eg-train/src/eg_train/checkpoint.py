"""Crash-safe checkpoints: atomic writes, plain-typed contents, RNG capture, fallback on corrupt files.

Reload rule for model weights (`load_model_weights` and resume): the model is rebuilt from its config
first (frozen pretrained parts come from their own weights), then the checkpoint's model state is
loaded. Every saved key must exist in the model with the same shape; when the checkpoint holds only
trainable parameters, buffers and module extra state (`model_state_kind == "trainable"`), every
parameter of the rebuilt model that requires grad, every buffer and every `_extra_state` must also be in
it. A "full" checkpoint is loaded with strict=True.
"""

from __future__ import annotations

import io
import os
import random
import re
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from eg_train.errors import TrainError

FORMAT = "eg-train/2"  # 2: module extra state, per-rank generators, logging window, data report
LATEST = "checkpoint_latest.pt"
BEST = "checkpoint_best.pt"
_STEP_FILE = re.compile(r"^checkpoint_step_(\d+)\.pt$")


class FormatError(TrainError):
    """A readable checkpoint from another eg-train format version: never silently skipped."""


def step_file_name(step: int) -> str:
    """Name of the keep-last-N file for `step`."""
    return f"checkpoint_step_{step:08d}.pt"


def capture_rng_state(device: torch.device) -> dict[str, Any]:
    """Python, numpy, torch and (on CUDA) the device's RNG states, as weights_only-loadable values."""
    version, state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    out: dict[str, Any] = {
        "python": {"version": version, "state": list(state), "gauss": gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Inverse of capture_rng_state."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    nps = state["numpy"]
    keys = nps["keys"].numpy().astype(np.uint32)
    np.random.set_state((nps["name"], keys, nps["pos"], nps["has_gauss"], nps["gauss"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def model_state(model: nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
    """The model's state dict, or only its trainable parameters + buffers (frozen backbones excluded)."""
    full = model.state_dict()
    if not trainable_only:
        return full
    keep = {n for n, p in model.named_parameters() if p.requires_grad}
    keep |= {n for n, _ in model.named_buffers()}
    return {k: v for k, v in full.items() if k in keep or _is_extra_state(k)}


def _is_extra_state(key: str) -> bool:
    """A module's get_extra_state() entry in a state dict (e.g. a loss's sampler generator)."""
    return key == "_extra_state" or key.endswith("._extra_state")


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], kind: str, source: str) -> None:
    """Load `state` into `model` by the module's reload rule; TrainError names `source` on mismatch."""
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise TrainError(
            f"{source}: keys not in the rebuilt model (e.g. {unknown[0]}); build the model "
            f"from the checkpoint's config before loading"
        )
    bad_shape = [
        k
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and tuple(getattr(own[k], "shape", ())) != tuple(v.shape)
    ]
    if bad_shape:
        k = bad_shape[0]
        raise TrainError(
            f"{source}: {k} has shape {tuple(state[k].shape)} but the model has "
            f"{tuple(own[k].shape)}; the model config differs from the checkpoint's"
        )
    if kind == "full":
        missing = [k for k in own if k not in state]
    else:
        need = [n for n, p in model.named_parameters() if p.requires_grad]
        need += [n for n, _ in model.named_buffers() if n in own] + [k for k in own if _is_extra_state(k)]
        missing = [n for n in need if n not in state]
    if missing:
        raise TrainError(
            f"{source}: model key {missing[0]} is missing from the checkpoint "
            f"({len(missing)} missing); the trainable modules differ from the saved run's"
        )
    model.load_state_dict(state, strict=False)


def serialize(obj: dict[str, Any]) -> bytes:
    """torch.save into memory, so one serialization can be written to several final names."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to a temp file in the same folder, flush + fsync, then os.replace onto `path`.

    A crash at any point leaves either the old file or the new one under `path`, never a partial one.
    An OSError (disk full, ...) removes the temp file and propagates; `path` keeps its old contents.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp.{os.getpid()}"
    try:
        write_synced(tmp, data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def write_synced(path: Path, data: bytes) -> None:
    """Write `data` to `path`, flush and fsync (the step where a full disk fails)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def remove_stale_temps(folder: Path) -> None:
    """Delete temp files left by a process killed mid-write."""
    if folder.is_dir():
        for p in folder.glob(".checkpoint_*.tmp.*"):
            p.unlink(missing_ok=True)


def prune_step_files(folder: Path, keep_last_n: int) -> None:
    """Keep only the `keep_last_n` newest checkpoint_step_*.pt files."""
    steps = sorted(
        (int(m.group(1)), p) for p in folder.glob("checkpoint_step_*.pt") if (m := _STEP_FILE.match(p.name))
    )
    for _, p in steps[: max(0, len(steps) - keep_last_n)]:
        p.unlink(missing_ok=True)


def write_checkpoint(
    folder: Path, data: bytes, step: int, latest: bool, best: bool, keep_last_n: int
) -> None:
    """Write serialized state as checkpoint_latest.pt (+ a step file when keep_last_n > 0) and/or best.

    checkpoint_latest.pt is written last: a resume starts from it and never redoes its step, so a crash
    after it but before the step file or best would lose those files for good (best's step included)."""
    names = [step_file_name(step)] if latest and keep_last_n > 0 else []
    if best:
        names.append(BEST)
    if latest:
        names.append(LATEST)
    for name in names:
        atomic_write(folder / name, data)
    if latest and keep_last_n > 0:
        prune_step_files(folder, keep_last_n)


@dataclass
class WriteOutcome:
    """How a background checkpoint write ended: `error` is None when every file was written."""

    step: int
    latest: bool
    error: OSError | None


class CheckpointWriter:
    """Runs `write_checkpoint` on one background thread, one write at a time.

    The trainer serializes the state itself (so the bytes are a snapshot and training may go on changing
    the tensors) and hands them over; the writes, fsyncs and renames then leave the training loop. Each
    file is still written atomically (temp file, fsync, rename, directory fsync), so a crash at any point
    leaves the previous checkpoint or the new one. `wait()` returns the outcome of the write in flight
    (OSError included, e.g. a full disk); any other exception is a bug and is raised there.
    """

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: tuple[Future, int, bool] | None = None

    def submit(
        self, folder: Path, data: bytes, step: int, latest: bool, best: bool, keep_last_n: int
    ) -> None:
        """Start writing `data` (call `wait()` first: one write at a time)."""
        if self._pending is not None:
            raise RuntimeError("CheckpointWriter.submit: the previous write was not waited for")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eg-train-checkpoint")
        future = self._pool.submit(write_checkpoint, folder, data, step, latest, best, keep_last_n)
        self._pending = (future, step, latest)

    def done(self) -> bool:
        """True when a write was submitted and has ended (its outcome is waiting for `wait()`)."""
        return self._pending is not None and self._pending[0].done()

    def wait(self) -> WriteOutcome | None:
        """Block until the write in flight ends and return its outcome (None when there is none)."""
        if self._pending is None:
            return None
        future, step, latest = self._pending
        self._pending = None
        try:
            future.result()
        except OSError as e:
            return WriteOutcome(step, latest, e)
        return WriteOutcome(step, latest, None)

    def close(self) -> None:
        """Wait for the thread to end (a write still in flight is finished first)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with torch.load(weights_only=True); TrainError names the file if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"checkpoint {path} does not exist; check the path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, ...: all mean "not a usable file"
        raise TrainError(f"checkpoint {path} is unreadable ({type(e).__name__}); it may be truncated") from e
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if isinstance(fmt, str) and fmt.startswith("eg-train/") and fmt != FORMAT:
        raise FormatError(
            f"checkpoint {path} has format {fmt!r}, this eg-train reads {FORMAT!r} (it lacks the module "
            f"extra state and run state needed for exact resume); retrain, or set resume=never"
        )
    if fmt != FORMAT or "model" not in ckpt:
        raise TrainError(f"checkpoint {path} is not an eg-train checkpoint (no format={FORMAT!r})")
    return ckpt


def load_model_weights(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's model weights into a model rebuilt from its config (see module rule).

    Returns the checkpoint's metadata: step, epoch, best metric, `config` and `run_config`.
    """
    ckpt = load_checkpoint(path)
    load_model_state(model, ckpt["model"], ckpt["model_state_kind"], str(path))
    keys = ("step", "epoch", "samples_seen", "best_metric", "best_value", "best_step", "config", "run_config")
    return {k: ckpt.get(k) for k in keys}


def resume_candidates(folder: Path) -> list[Path]:
    """Checkpoints to try, newest first: latest, then step files and best by modification time."""
    if not folder.is_dir():
        return []
    latest = folder / LATEST
    others = [p for p in folder.glob("checkpoint_*.pt") if p.name != LATEST]
    others.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
    return ([latest] if latest.is_file() else []) + others


def find_resume_checkpoint(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint in `folder`, warning about each unreadable one skipped.

    None when the folder has no checkpoint at all; TrainError when files exist but none is readable.
    """
    candidates = resume_candidates(folder)
    for path in candidates:
        try:
            return path, load_checkpoint(path)
        except FormatError:
            raise
        except TrainError as e:
            warnings.warn(f"{e}; falling back to the next newest checkpoint", stacklevel=2)
    if candidates:
        raise TrainError(f"no readable checkpoint in {folder}; delete the broken files or set resume=never")
    return None


def select_resume_path(target: Path, explicit: bool) -> str | None:
    """The checkpoint to resume from: a given file must be readable; in a folder, the newest readable one.

    Also removes temp files a killed run left in that folder.
    """
    if explicit and not target.is_dir():
        load_checkpoint(target)  # a named file gets no silent fallback
        return str(target)
    hit = find_resume_checkpoint(target)
    remove_stale_temps(target)
    return str(hit[0]) if hit else None
