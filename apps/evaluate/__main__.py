"""`uv run apps/evaluate --config FILE --checkpoint PATH [--split-dir DIR] [--set k=v]`: recompute eval.json."""

import sys

from apps.cli import config_parser, run_guarded


def main() -> int:
    """Parse the arguments, then evaluate the checkpoint with user errors as one line and exit 2."""
    parser = config_parser("apps/evaluate", "Held-out retrieval evaluation of a stage-1 checkpoint.")
    parser.add_argument(
        "--checkpoint", required=True, metavar="PATH", help="e.g. checkpoints/demo/checkpoint_best.pt"
    )
    parser.add_argument(
        "--split-dir", default="", metavar="DIR", help="shard folder to evaluate (default data.test_dir)"
    )
    args = parser.parse_args()

    def evaluate() -> int:
        from apps.config import load_config
        from apps.evaluation import evaluate_checkpoint
        from apps.experiment import ExperimentConfig

        evaluate_checkpoint(
            load_config(ExperimentConfig, args.config, args.overrides), args.checkpoint, args.split_dir
        )
        return 0

    return run_guarded(evaluate)


if __name__ == "__main__":
    sys.exit(main())
