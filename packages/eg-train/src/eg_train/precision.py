"""Mixed precision: the autocast context and GradScaler for the configured dtype, on CPU or CUDA."""

from __future__ import annotations

import contextlib

import torch

from eg_train.errors import TrainError

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_dtype(precision: str) -> torch.dtype:
    """torch dtype for fp32 | bf16 | fp16."""
    if precision not in _DTYPES:
        raise TrainError(f"precision={precision!r} is not one of fp32, bf16, fp16")
    return _DTYPES[precision]


def check_precision(precision: str, device: torch.device) -> None:
    """Fail early when the device cannot run the configured dtype (never fall back silently)."""
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise TrainError("precision=bf16 but this GPU has no bf16 support; use fp16 or fp32")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """autocast with exactly the configured dtype; a no-op context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision_dtype(precision))


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (bf16/fp32 keep fp32's exponent range)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
