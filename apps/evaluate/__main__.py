"""`uv run apps/evaluate --config FILE --checkpoint PATH [--split-dir DIR] [--set k=v]`: recompute eval.json."""

import sys

from apps.common.cli import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
