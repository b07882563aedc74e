"""The model FLOPs per training sample both stages hand eg-train's Trainer (its `mfu` column).

Counted once at start on the first batch of a loader of its own (the training settings, no workers): the
training loader is not touched, so the run reads the same batches as without the count, and
eg_train.throughput.flops_per_sample leaves the RNG, the train/eval flags and the gradients as they were.
"""

from __future__ import annotations

import dataclasses

import torch
from eg_data import LoaderConfig
from eg_train.throughput import flops_per_sample
from torch import nn


def training_flops_per_sample(
    model: nn.Module, loader_cfg: LoaderConfig, device: torch.device
) -> float | None:
    """FLOPs of one sample's forward + backward, from the first batch of a fresh loader; None when it is empty."""
    loader = dataclasses.replace(loader_cfg, num_workers=0).build()
    batches = iter(loader)
    try:
        batch = next(batches, None)
        return None if batch is None else flops_per_sample(model, batch, device)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # hands the batch buffers back before the training loader starts
