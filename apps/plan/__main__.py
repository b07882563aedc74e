"""`uv run apps/plan --config configs/X.yaml [--gpus N] [--gpu h100|h200|a100] [--json]`: plan an experiment at real
size without a GPU (memory per GPU, largest batch, FLOPs, step and epoch time). See apps/planning/."""

import sys

from apps.planning.cli import plan_main

if __name__ == "__main__":
    sys.exit(plan_main())
