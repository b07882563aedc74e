"""Command-line entry points of the apps: argument parsing, dispatch on the config's stage, and the
one-line handling of user errors.

`apps/train/__main__.py` and `apps/evaluate/__main__.py` are thin scripts that call into here, so that the
parsing is testable in-process and user errors (a bad config key, a missing data path, a corrupt checkpoint)
print one line without a traceback and exit with status 2. Bugs are not caught: they stay loud.

A YAML's top-level `stage:` key (default `alignment`) names the stage package under apps/ that owns the
config tree and the run; each stage package exposes `CONFIG`, `train(cfg)` and `evaluate(cfg, checkpoint,
split_dir)`. Stages are imported by name, so no stage imports another through here.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from apps.common.config import ConfigError, load_config, read_yaml, to_yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGES = {"alignment": "apps.alignment", "qa": "apps.qa"}
CONFIGS_DIR = REPO_ROOT / "configs"
USER_ERROR_EXIT = 2


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception classes that mean "the user asked for something that can't be done", one per package."""
    from eg_data import DataError
    from eg_decoders import DecoderError
    from eg_encoders import EncoderError
    from eg_losses import LossError
    from eg_resampler import ResamplerError
    from eg_train import TrainError

    return (ConfigError, DataError, DecoderError, EncoderError, LossError, ResamplerError, TrainError)


def run_guarded(main: Callable[[], int | None]) -> int:
    """Run `main`; a user error becomes `error: <one line>` on stderr and exit status 2."""
    try:
        return main() or 0
    except user_error_types() as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return USER_ERROR_EXIT


def _config_listing() -> str:
    """The configs in configs/, each with the first comment line of its file as a description."""
    lines = ["configs:"]
    for path in sorted(CONFIGS_DIR.glob("*.yaml")):
        first = path.read_text().splitlines()[:1]
        about = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
        lines.append(f"  configs/{path.name:<28} {about}")
    return "\n".join(lines) if len(lines) > 1 else "configs: none found in configs/"


def config_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The arguments every app shares: --config FILE and --set KEY=VALUE (repeatable)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=_config_listing(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", required=True, metavar="FILE", help="experiment YAML, e.g. configs/demo.yaml"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value by its dotted key, e.g. --set train.max_steps=100 (repeatable)",
    )
    return parser


def stage_of(path: str | Path, overrides: Sequence[str]) -> tuple[ModuleType, Any]:
    """The stage package named by the YAML's `stage:` key (or a `--set stage=...`), and the loaded config."""
    stage = read_yaml(Path(path)).get("stage", "alignment")
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.strip() == "stage":
            stage = value.strip()
    if stage not in STAGES:
        raise ConfigError(f"{path}: stage={stage!r} is not one of {', '.join(STAGES)}")
    module = importlib.import_module(STAGES[stage])
    return module, load_config(module.CONFIG, path, overrides)


def train_main(argv: Sequence[str] | None = None) -> int:
    """`uv run apps/train --config FILE [--set a.b=value ...] [--print-config]`."""
    parser = config_parser("apps/train", "Train an Edge Glass experiment described by a YAML config.")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)

    def main() -> int:
        stage, cfg = stage_of(args.config, args.overrides)
        if args.print_config:
            print(to_yaml(cfg), end="")
            return 0
        from eg_train import run_lock

        # one run per checkpoint folder, taken before the run writes anything (rank 0 under torchrun); a second
        # run is refused here in one line naming the folder and the holder's PID (RunLockedError, exit 2)
        with run_lock(cfg.train.checkpoint_dir):
            stage.train(cfg)
        return 0

    return run_guarded(main)


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """`uv run apps/evaluate --config FILE --checkpoint PATH [--split-dir DIR] [--set a.b=value ...]`."""
    parser = config_parser("apps/evaluate", "Held-out evaluation of a checkpoint (retrieval or QA).")
    parser.add_argument(
        "--checkpoint", required=True, metavar="PATH", help="e.g. checkpoints/demo/checkpoint_best.pt"
    )
    parser.add_argument(
        "--split-dir", default="", metavar="DIR", help="shard folder to evaluate (default data.test_dir)"
    )
    args = parser.parse_args(argv)

    def main() -> int:
        stage, cfg = stage_of(args.config, args.overrides)
        stage.evaluate(cfg, args.checkpoint, args.split_dir)
        return 0

    return run_guarded(main)
