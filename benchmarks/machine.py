"""What every benchmark records about the run: the machine, the software and the commit (for docs/benchmarks.md).

Imported by the benchmark scripts (benchmarks/ is a folder of scripts, not a package: each script puts its own
folder on sys.path first).
"""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

SHARED = "the machine is shared with other jobs: ratios are fair (alternated), absolute times noisy"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int | None = None, gpu: bool = False) -> dict[str, Any]:
    """nproc, CPU model, torch version, threads, date, commit and the 1-minute load average at the start (how
    busy the shared machine was); with `gpu`, the GPU's name and memory and the CUDA version."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True
    ).stdout.strip()
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "load_average_1min_at_start": os.getloadavg()[0],
        "shared": SHARED,
    }
    if threads is not None:
        info["threads"] = threads
    if gpu:
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
        info["cuda"] = torch.version.cuda
    return info
