"""`uv run apps/evaluate --config FILE --checkpoint PATH [--split-dir DIR] [--set k=v]`: recompute eval.json;
`uv run apps/evaluate zeroshot|linear-probe --checkpoint PATH --dataset DIR ...`: the standard evaluations
on a CLIP_benchmark folder (apps/alignment/eval_cli.py)."""

import sys

from apps.alignment.eval_cli import evaluate_dispatch

if __name__ == "__main__":
    sys.exit(evaluate_dispatch())
