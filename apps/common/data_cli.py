"""`uv run apps/data COMMAND`: prepare datasets as webdataset shards, configured the way experiments are.

Each command's options are the fields of an eg-data config dataclass, set from an optional YAML file
(`--config`) and dotted `--set KEY=VALUE` overrides through the same loader as `apps/train`, so a bad value
is refused with one line naming the key before anything is downloaded or written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from apps.common.cli import run_guarded
from apps.common.config import load_config


@dataclass
class DemoDataConfig:
    """The offline digits demo set (eg-data's `build_demo_dataset` arguments)."""

    image_size: int = 32
    """Stored image side in pixels (>= 8)."""
    seed: int = 0
    """Seed of the train/val/test split, the caption templates and the voices that speak them."""

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")


def _keys_help(schema: type) -> str:
    """`key (default)` for every field of `schema`: the --set keys a command takes."""
    fields = [f"{f.name}={_default(f)!r}" for f in dataclasses.fields(schema)]
    return "--set keys (defaults): " + ", ".join(fields)


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()  # type: ignore[misc]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: `demo`, `urls`, `speak` and `audio-captions`, each with --config FILE and
    repeatable --set KEY=VALUE; `demo-zeroshot` (--input, --out)."""
    from eg_data import AudioCaptionsConfig, DownloadConfig, SpeakConfig

    parser = argparse.ArgumentParser(prog="apps/data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="build the offline digits demo dataset (no-op when complete)",
        epilog=_keys_help(DemoDataConfig),
    )
    demo.add_argument("--out", default="data/demo", help="output directory (default: data/demo)")
    urls = sub.add_parser(
        "urls",
        help="download a URL list (parquet, CSV, JSONL) into shards (resumable)",
        epilog=_keys_help(DownloadConfig),
    )
    urls.add_argument("--input", required=True, help="a .parquet, .csv or .jsonl URL list")
    urls.add_argument("--out", required=True, help="output shard directory")
    speak = sub.add_parser(
        "speak",
        help="add spoken captions ({key}.flac, eSpeak NG) to shards, written as new shards (resumable)",
        epilog=_keys_help(SpeakConfig),
    )
    speak.add_argument(
        "--input", required=True, help="shard directory whose captions are spoken (not modified)"
    )
    speak.add_argument("--out", required=True, help="output shard directory")
    captions = sub.add_parser(
        "audio-captions",
        help="audio files + captions listed in a CSV/JSONL (Clotho, AudioCaps) into shards (resumable)",
        epilog=_keys_help(AudioCaptionsConfig),
    )
    captions.add_argument("--input", required=True, help="a .csv or .jsonl table of audio files and captions")
    captions.add_argument("--audio-dir", required=True, help="folder the table's file paths are relative to")
    captions.add_argument("--out", required=True, help="output shard directory")
    zeroshot = sub.add_parser(
        "demo-zeroshot",
        help="the demo's splits as a CLIP_benchmark zero-shot folder (image + spoken caption + cls per digit)",
    )
    zeroshot.add_argument("--input", default="data/demo", help="the demo dataset (default: data/demo)")
    zeroshot.add_argument("--out", default="data/demo_zeroshot", help="output (default: data/demo_zeroshot)")
    for command in (demo, urls, speak, captions):
        command.add_argument("--config", metavar="FILE", help="YAML of the command's settings (optional)")
        command.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override one setting, e.g. --set num_workers=8 (repeatable)",
        )
    return parser.parse_args(argv)


def data_main(argv: Sequence[str] | None = None) -> int:
    """Run one `apps/data` command; prints its report as JSON; user errors exit 2 with one line."""
    args = parse_args(argv)

    def main() -> int:
        import eg_data

        if args.command == "demo-zeroshot":
            from apps.common.zeroshot_data import write_demo_zeroshot

            report = write_demo_zeroshot(args.input, args.out)
        elif args.command == "demo":
            cfg = load_config(DemoDataConfig, args.config, args.overrides)
            report = eg_data.build_demo_dataset(args.out, image_size=cfg.image_size, seed=cfg.seed)
        elif args.command == "urls":
            cfg = load_config(eg_data.DownloadConfig, args.config, args.overrides)
            report = eg_data.download_urls(args.input, args.out, cfg)
        elif args.command == "speak":
            cfg = load_config(eg_data.SpeakConfig, args.config, args.overrides)
            report = eg_data.speak_shards(args.input, args.out, cfg)
        else:
            cfg = load_config(eg_data.AudioCaptionsConfig, args.config, args.overrides)
            report = eg_data.import_audio_captions(args.input, args.audio_dir, args.out, cfg)
        print(json.dumps(report, indent=1, sort_keys=True))
        return 0

    return run_guarded(main)
