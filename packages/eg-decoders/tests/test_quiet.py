"""bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" line is dropped once eg_decoders
is imported, and nothing else bitsandbytes logs is (the filter is on one logger, for one message)."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys

import pytest
from eg_decoders.quiet import BITSANDBYTES_CPU_LOGGER, KERNELS_WARNING, drop_bitsandbytes_kernels_warning

KERNELS_LINE = KERNELS_WARNING + ": %s. Please make sure you already `pip install kernels`"


def test_only_the_kernels_warning_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    drop_bitsandbytes_kernels_warning()
    drop_bitsandbytes_kernels_warning()  # idempotent: one filter
    logger = logging.getLogger(BITSANDBYTES_CPU_LOGGER)
    assert len(logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger=BITSANDBYTES_CPU_LOGGER):
        logger.warning(KERNELS_LINE, "No module named 'kernels'")
        logger.warning("some other bitsandbytes warning")
        logging.getLogger("bitsandbytes.cextension").warning(KERNELS_LINE, "elsewhere")
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        (BITSANDBYTES_CPU_LOGGER, "some other bitsandbytes warning"),
        ("bitsandbytes.cextension", KERNELS_LINE % "elsewhere"),
    ]


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs eg-decoders[qwen]")
def test_importing_bitsandbytes_after_eg_decoders_is_silent() -> None:
    """On a CPU with AVX512-BF16 (the line's condition), plain `import bitsandbytes` prints it; after
    eg_decoders it does not. Elsewhere both are silent and the check still holds."""
    script = "import eg_decoders, bitsandbytes, logging; logging.getLogger('bitsandbytes').warning('ours')"
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == ["ours"]  # bitsandbytes' other records still pass
