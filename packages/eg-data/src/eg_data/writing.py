"""Output shards of the data commands that transform samples (`speak`, `audio-captions`): one job per
output shard, run in a process pool, each shard written atomically and skipped when a run is restarted.

A job writes `{name}.tar` under a name private to its process (`.{name}.{pid}.partial`), renames it into
place, then writes `{name}_stats.json` (img2dataset's stats file: `successes`, `count`, `failed`); the
stats file is the mark of a finished shard. A killed run leaves at most partial files, which the next
run removes once their process is gone, and redoes only the shards without stats. A stats file records
the job's fingerprint (what the shard is made from and the settings that shape it), so a shard made
from other input or settings is redone, never kept by mistake.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import soxr
import webdataset as wds

from eg_data.shards import ShardInfo, write_index
from eg_data.transforms import SAMPLE_RATE

STATS_SUFFIX = "_stats.json"
PARTIAL_SUFFIX = ".partial"


def fingerprint(*parts: Any) -> str:
    """A short digest of JSON-serializable parts (settings, input file sizes and times)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def file_stamp(path: str | Path) -> list[Any]:
    """[size, mtime_ns] of a file, or ["missing"]: enough to notice an input that changed."""
    try:
        stat = os.stat(path)
    except OSError:
        return ["missing"]
    return [stat.st_size, stat.st_mtime_ns]


def encode_flac(wave: np.ndarray, rate: int) -> tuple[bytes, float]:
    """Mono float audio at `rate` -> (16 kHz 16-bit FLAC bytes, seconds). 16 kHz is what the loader feeds
    whisper, so it never resamples these files."""
    if rate != SAMPLE_RATE:
        wave = soxr.resample(wave.astype(np.float32), rate, SAMPLE_RATE)
    wave = np.clip(wave, -1.0, 1.0)
    buf = io.BytesIO()
    soundfile.write(buf, wave, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue(), len(wave) / SAMPLE_RATE


class AudioLengths:
    """Durations of the audio written, against the audio encoder's context (`max_seconds`)."""

    def __init__(self, max_seconds: float):
        self.max_seconds = max_seconds
        self.count, self.total, self.longest, self.longest_key = 0, 0.0, 0.0, ""
        self.over, self.over_example = 0, ""

    def add(self, key: str, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        if seconds > self.longest:
            self.longest, self.longest_key = seconds, key
        if seconds > self.max_seconds:
            self.over += 1
            self.over_example = self.over_example or key

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.count,
            "seconds_total": round(self.total, 3),
            "seconds_max": round(self.longest, 3),
            "longest": self.longest_key,
            "over_max_seconds": self.over,
            "over_max_example": self.over_example,
        }


class Failures:
    """Samples that could not be written, counted by reason with the first example of each."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def add(self, reason: str, example: str, count: int = 1) -> None:
        self.counts[reason] += count
        self.examples.setdefault(reason, example)


class ShardOutput:
    """One output shard, written under a name private to this process and renamed into place by
    `commit`, which then writes the stats file that marks the shard finished."""

    def __init__(self, out_dir: str | Path, name: str):
        self.out = Path(out_dir)
        self.name = name
        self.partial = self.out / f".{name}.{os.getpid()}{PARTIAL_SUFFIX}"
        # A fixed mtime: the same input and settings give byte-identical shards (resumed or not).
        self._writer = wds.TarWriter(str(self.partial), encoder=False, mtime=0)
        self.count = 0

    def write(self, record: dict[str, Any]) -> None:
        """Append one sample: `__key__` and suffix -> bytes."""
        self._writer.write(record)
        self.count += 1

    def commit(self, stats: dict[str, Any]) -> dict[str, Any]:
        """Close the shard, move it into place and write its stats (with `successes`); returns them."""
        self._writer.close()
        os.replace(self.partial, self.out / f"{self.name}.tar")
        stats = {"successes": self.count, **stats}
        stats_path = self.out / f"{self.name}{STATS_SUFFIX}"
        tmp = stats_path.with_name(f".{stats_path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
        tmp.write_text(json.dumps(stats, indent=1, sort_keys=True))
        os.replace(tmp, stats_path)
        return stats

    def abort(self) -> None:
        self._writer.close()
        self.partial.unlink(missing_ok=True)


@dataclass
class ShardJob:
    """One output shard to make: its name (`{name}.tar`), its fingerprint, and what the worker needs."""

    name: str
    fingerprint: str
    payload: Any


def finished_stats(out: Path, job: ShardJob) -> dict[str, Any] | None:
    """The stats of a finished shard made by this very job (same fingerprint), else None."""
    path = out / f"{job.name}{STATS_SUFFIX}"
    try:
        stats = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stats, dict) or stats.get("fingerprint") != job.fingerprint:
        return None
    return stats if (out / f"{job.name}.tar").exists() else None


def _remove_stale_partials(out: Path) -> None:
    """Partial files of processes that are gone (a killed run); a live process's are left alone."""
    for path in out.glob(f".*{PARTIAL_SUFFIX}"):
        pid_text = path.name[: -len(PARTIAL_SUFFIX)].rsplit(".", 1)[-1]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, another user's


def resolve_workers(num_workers: int) -> int:
    """Processes to use: `num_workers`, or one per CPU this process may run on when 0."""
    if num_workers > 0:
        return num_workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_shard_jobs(
    out_dir: str | Path,
    jobs: Sequence[ShardJob],
    work: Callable[[str, ShardJob], dict[str, Any]],
    num_workers: int,
    label: str,
) -> tuple[list[dict[str, Any]], int, int]:
    """Run the jobs whose shard is not finished; returns (stats of every job in order, written, skipped).

    `work(out_dir, job)` writes one shard through `ShardOutput` and returns its stats; it must be a
    module-level function (the pool spawns fresh processes). With one worker it runs in this process.
    Progress goes to stderr, one line per shard.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out)
    stats: list[dict[str, Any] | None] = [finished_stats(out, job) for job in jobs]
    todo = [i for i, s in enumerate(stats) if s is None]
    skipped = len(jobs) - len(todo)
    workers = min(resolve_workers(num_workers), max(1, len(todo)))
    done = 0

    def progress(i: int) -> None:
        print(
            f"{label}: {jobs[i].name} written ({done}/{len(todo)}; {skipped} finished before)",
            file=sys.stderr,
            flush=True,
        )

    if workers <= 1:
        for i in todo:
            stats[i] = work(str(out), jobs[i])
            done += 1
            progress(i)
    else:
        # spawn: a fresh interpreter per worker (no forked copy of the parent's threads or libraries)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(work, str(out), jobs[i]): i for i in todo}
            for future in as_completed(futures):
                i = futures[future]
                stats[i] = future.result()
                done += 1
                progress(i)
    final = [s for s in stats if s is not None]
    assert len(final) == len(jobs)
    write_index(
        out, [ShardInfo(f"{j.name}.tar", int(s["successes"])) for j, s in zip(jobs, final) if s["successes"]]
    )
    return final, len(todo), skipped


def merge_stats(all_stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Totals over shards' stats: ok, failed (reason -> count), examples, audio lengths, and any other
    integer counters the shards report (e.g. kept_audio)."""
    ok = 0
    failed: Counter[str] = Counter()
    examples: dict[str, str] = {}
    counters: Counter[str] = Counter()
    audio: dict[str, Any] = {
        "files": 0,
        "seconds_total": 0.0,
        "seconds_max": 0.0,
        "longest": "",
        "over_max_seconds": 0,
        "over_max_example": "",
    }
    for stats in all_stats:
        ok += int(stats["successes"])
        failed.update(stats.get("failed", {}))
        for reason, example in stats.get("examples", {}).items():
            examples.setdefault(reason, example)
        for key, value in stats.get("counters", {}).items():
            counters[key] += int(value)
        lengths = stats.get("audio")
        if lengths:
            audio["files"] += lengths["files"]
            audio["seconds_total"] += lengths["seconds_total"]
            audio["over_max_seconds"] += lengths["over_max_seconds"]
            audio["over_max_example"] = audio["over_max_example"] or lengths["over_max_example"]
            if lengths["seconds_max"] > audio["seconds_max"]:
                audio["seconds_max"], audio["longest"] = lengths["seconds_max"], lengths["longest"]
    audio["seconds_total"] = round(audio["seconds_total"], 3)
    audio["seconds_mean"] = round(audio["seconds_total"] / audio["files"], 3) if audio["files"] else 0.0
    return {
        "ok": ok,
        "failed": dict(sorted(failed.items())),
        "examples": {r: examples[r] for r in sorted(examples)},
        **dict(sorted(counters.items())),
        "audio": audio,
    }
