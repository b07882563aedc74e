"""Third-party noise kept out of the user's terminal on the Qwen path, each silenced exactly and no more.

- bitsandbytes logs, when imported on a CPU with AVX512-BF16 and without the optional `kernels` package,
  "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'..." (a WARNING of
  the logger `bitsandbytes.backends.cpu.ops`, emitted while that module is imported). It only means CPU
  4-bit matmuls use bitsandbytes' own kernel instead of a downloadable faster one, which changes nothing we
  compute. `drop_bitsandbytes_kernels_warning()` puts a filter on that one logger that drops that one
  message; every other record of bitsandbytes passes.
- peft 0.21's `PeftModel` reads `model.is_gradient_checkpointing`, which transformers 5 made a deprecated
  alias that warns (FutureWarning "`is_gradient_checkpointing` is deprecated ...") on every LoRA wrap:
  `no_checkpointing_alias_warning()` ignores that one warning for the wrap only. (peft's own call of the
  deprecated `gradient_checkpointing_enable` is avoided in qwen.py instead.)
- transformers 5 draws a tqdm bar for every `from_pretrained` ("Loading weights") and `save_pretrained`
  ("Writing model shards"): `quiet_progress_bars()` turns them off for one load or save.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

BITSANDBYTES_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
KERNELS_WARNING = "Failed to load CPU gemm_4bit_forward from kernels-community"


class _DropMessage(logging.Filter):
    """Drops the records whose message template starts with `prefix`."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def drop_bitsandbytes_kernels_warning() -> None:
    """Filter bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" warning (once).

    Must run before bitsandbytes is imported (it logs while importing); loggers are made by name, so the
    filter waits on the logger bitsandbytes will fetch. Idempotent.
    """
    logger = logging.getLogger(BITSANDBYTES_CPU_LOGGER)
    if not any(isinstance(f, _DropMessage) and f.prefix == KERNELS_WARNING for f in logger.filters):
        logger.addFilter(_DropMessage(KERNELS_WARNING))


@contextmanager
def no_checkpointing_alias_warning() -> Iterator[None]:
    """Ignore transformers' FutureWarning for the `is_gradient_checkpointing` alias inside the block only."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Turn off transformers' (and huggingface_hub's) tqdm bars for one load or save, then restore them.

    Only the bars are silenced, not warnings or errors; if they were already off, they stay off.
    """
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if was_enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
