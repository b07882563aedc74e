"""Hardware efficiency: model FLOPs per sample (FlopCounterMode), the device's peak, and the MFU of a row.

MFU = flops_per_sample * samples_per_s / peak. The peak of a GPU is the vendor's dense bf16 tensor-core
figure from a small table; on a CPU (or a GPU not in the table) it is a matmul measured once per process
at the run's dtype, so the CPU figure is relative to what torch.mm reaches here, not a datasheet.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from eg_train.data import batch_size, move_to_device

# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, from the vendors' datasheets; first match wins
# (so "H100 PCIe" is tested before the SXM figure that "H100" alone gets).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.4e12),
    ("H100 PCIe", 756.0e12),
    ("H100 NVL", 835.0e12),
    ("H100", 989.4e12),
    ("A100", 312.0e12),
)


def table_peak(device_name: str) -> float | None:
    """The table's dense bf16 peak for a CUDA device name (torch.cuda.get_device_name), or None."""
    for key, peak in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


@functools.cache
def measured_matmul_peak(device_type: str, dtype: torch.dtype, n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` n x n x n torch.mm on this device (measured once per process)."""
    device = torch.device(device_type)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)  # (n, n)
    b = torch.randn(n, n, generator=g).to(device, dtype)  # (n, n)
    torch.mm(a, b)  # warm-up: first-call dispatch and allocation are not the peak
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / max(best, 1e-12)


def device_peak(device: torch.device, precision: str) -> tuple[float, str]:
    """(peak FLOP/s, where it comes from) for the run's device: the bf16 table on a known GPU, else measured.

    On a CPU the matmul is measured at bf16 when the run is bf16 (AVX512-BF16 / AMX), else at fp32.
    """
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = table_peak(name)
        if peak is not None:
            return peak, f"{name} dense bf16 datasheet"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    label = "bf16" if dtype == torch.bfloat16 else "fp32"
    return measured_matmul_peak(device.type, dtype), f"measured {label} matmul on {device.type}"


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs torch's FlopCounterMode counts while `fn()` runs (matmuls, convolutions, attention)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def train_step_flops(model: torch.nn.Module, batch: dict, loss_key: str = "loss") -> int:
    """FLOPs of one forward + backward of `model(batch)[loss_key]`, leaving the run as it was.

    Counted in eval mode (dropout and its kin draw nothing, batch norm updates no running statistics, a
    model's own training-time draws are not taken; FlopCounterMode counts matmuls, convolutions and
    attention, which these do not change) under torch.random.fork_rng, so the global CPU and CUDA generators
    continue as if nothing ran. Each module's train/eval flag and each parameter's gradient are put back.
    """
    had_grad = {p: p.grad for p in model.parameters()}
    was_training = {m: m.training for m in model.modules()}
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})

    def step() -> None:
        model(batch)[loss_key].backward()

    try:
        with torch.random.fork_rng(devices=devices):
            model.eval()
            flops = count_flops(step)
    finally:
        for m, flag in was_training.items():
            m.training = flag  # per module: a frozen tower kept in eval stays in eval
        for p, g in had_grad.items():
            p.grad = g  # the measurement leaves the parameters' gradients as they were
    return flops


def flops_per_sample(model: torch.nn.Module, batch: dict, device: torch.device) -> float:
    """`train_step_flops` of `batch` (moved to `device`) over its size: the Trainer's `flops_per_sample`.

    Take the batch from a loader of its own (not the training one), so the training stream is not consumed.
    """
    batch = move_to_device(batch, device)
    return train_step_flops(model, batch) / batch_size(batch)


def mfu(flops_per_sample: float, samples_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilization: achieved model FLOP/s over the peak."""
    return flops_per_sample * samples_per_s / peak_flops
