"""One run per checkpoint folder: an exclusive flock on `<checkpoint_dir>/run.lock` held while a run trains.

A second run on the same folder is refused at once (RunLockedError, one line naming the folder and the PID
written in the lock file by its holder). The lock is `flock(2)` through filelock's UnixFileLock, so the
kernel drops it when its process dies: a run that was SIGKILLed never blocks the next one. Under torchrun
only rank 0 holds it. Reading a checkpoint (evaluate, search, ask) takes no lock.

The lock is re-entrant within a process (a filelock singleton per path): the apps take it before they
write anything, and the Trainer's own `fit()` then finds it held.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from filelock import Timeout, UnixFileLock

from eg_train.distributed import env_rank
from eg_train.errors import TrainError

LOCK_NAME = "run.lock"


class RunLockedError(TrainError):
    """Another live process trains into the same checkpoint folder."""


def _write_pid(fd: int) -> None:
    """filelock's on_acquired hook: the holder's PID replaces whatever a dead holder left in the file."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def holder_pid(folder: str | Path) -> int | None:
    """The PID the lock file of `folder` names (the live holder's while it is locked), if readable."""
    try:
        return int((Path(folder) / LOCK_NAME).read_text().strip())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def run_lock(folder: str | Path, rank: int | None = None) -> Iterator[None]:
    """Hold the run lock of `folder` (created if absent) for the `with` block; a no-op on ranks other than 0
    (`rank` defaults to torchrun's RANK). Raises RunLockedError when another process holds it."""
    if (env_rank() if rank is None else rank) != 0:
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = UnixFileLock(
        str(folder / LOCK_NAME),
        blocking=False,
        is_singleton=True,  # the same instance for the same path in this process: re-entrant
        thread_local=False,
        fallback_to_soft=False,  # only a kernel lock dies with its process
        on_acquired=_write_pid,
    )
    try:
        lock.acquire()
    except Timeout:
        pid = holder_pid(folder)
        raise RunLockedError(
            f"{folder} is in use by another training run (PID {pid if pid else 'unknown'}, lock "
            f"{folder / LOCK_NAME}); wait for it to end, or train into another checkpoint folder"
        ) from None
    try:
        yield
    finally:
        lock.release()
