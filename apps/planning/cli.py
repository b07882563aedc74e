"""`uv run apps/plan --config configs/X.yaml [--gpus N] [--gpu h100|h200|a100] [--mfu 0.4] [--json]
[--stage1-config FILE] [--set KEY=VALUE ...]`: argument parsing and output of the plan (apps/planning/plan.py)."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Sequence

from apps.common.cli import config_parser, run_guarded
from apps.planning.architectures import GPUS


def _quiet() -> None:
    """Third-party chatter about the deliberately weightless build stays out of the terminal (the plan's
    own notes say what was built from what)."""
    warnings.filterwarnings("ignore")
    for name in (
        "root",
        "transformers",
        "sentence_transformers",
        "bitsandbytes",
        "torch._subclasses.fake_tensor",
    ):
        logging.getLogger(name if name != "root" else None).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def plan_main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, plan the config, print the table (or JSON)."""
    parser = config_parser(
        "apps/plan", "Plan an experiment at real size: memory per GPU, largest batch, FLOPs, time."
    )
    parser.add_argument(
        "--gpus", type=int, default=1, help="GPUs under DDP (the per-GPU batch is the config's)"
    )
    parser.add_argument(
        "--gpu", default="h100", choices=sorted(GPUS), help="the GPU whose largest batch is verified"
    )
    parser.add_argument(
        "--mfu", type=float, default=0.4, help="assumed model FLOPs utilization (default 0.4)"
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument(
        "--stage1-config",
        default=None,
        metavar="FILE",
        help="stage 2: plan the towers from this stage-1 config",
    )
    args = parser.parse_args(argv)

    def main() -> int:
        _quiet()
        from apps.planning.plan import make_plan
        from apps.planning.report import format_plan

        plan = make_plan(args.config, args.overrides, args.gpus, args.gpu, args.mfu, args.stage1_config)
        print(json.dumps(plan.to_dict(), indent=1) if args.json else format_plan(plan))
        return 0

    return run_guarded(main)


if __name__ == "__main__":
    sys.exit(plan_main())
