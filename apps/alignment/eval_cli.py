"""`uv run apps/evaluate ...`: the retrieval evaluation of a config's test split (`--config --checkpoint`,
unchanged: apps.common.cli.evaluate_main) and the standard evaluations on a CLIP_benchmark folder,

    uv run apps/evaluate zeroshot --checkpoint CKPT --dataset DIR [--split test] [--templates FILE] [--dim D]
    uv run apps/evaluate linear-probe --checkpoint CKPT --dataset DIR [--dim D]

each writing a JSON report (`--out FILE`; default outputs/<experiment>/<command>_<dataset>_<split>.json)
and printing its table. User errors (a missing class-names file, a template without `{c}`, a class in the
shards outside classnames.txt, a dim the model was not trained at) are one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from apps.common.cli import evaluate_main, run_guarded

COMMANDS = ("zeroshot", "linear-probe")


def load_encoders(path: str | Path, device: str = "cpu") -> Any:
    """The embedding face of a trained stage-1 model: an apps Embedder over a checkpoint (.pt); its
    `embed_images` / `embed_audio` / `embed_texts`, `dims` and `modalities` are all the evaluations use."""
    import torch

    from apps.alignment.embed import Embedder, InputError

    if not Path(path).exists():
        raise InputError(f"--checkpoint {str(path)!r} does not exist")
    embedder = Embedder.from_checkpoint(path, device=device)
    if embedder.aligned.config.num_threads:
        torch.set_num_threads(embedder.aligned.config.num_threads)
    return embedder


def model_name(encoders: Any, checkpoint: str | Path) -> str:
    """The experiment name stored with the model (its outputs/ folder), else the checkpoint's file stem."""
    aligned = getattr(encoders, "aligned", None)
    return aligned.config.experiment_name if aligned is not None else Path(checkpoint).stem


def chosen_dims(encoders: Any, dim: int | None) -> list[int]:
    """[--dim] checked against the model's trained dims, or all of them."""
    return [encoders.check_dim(dim)] if dim is not None else list(encoders.dims)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="a stage-1 checkpoint (.pt)")
    parser.add_argument("--dataset", required=True, metavar="DIR", help="a folder in CLIP_benchmark's layout")
    parser.add_argument("--classnames", metavar="FILE", help="class names (default DIR/classnames.txt)")
    parser.add_argument("--dim", type=int, help="one Matryoshka dim (default: every trained dim)")
    parser.add_argument(
        "--modality", choices=("vision", "audio"), action="append", help="only these (default: all the model "
        "and the shards have; repeatable)",
    )  # fmt: skip
    parser.add_argument("--max-samples", type=int, default=0, help="first N samples of each split (0 = all)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--out", metavar="FILE", help="JSON report path")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The command line of the two subcommands."""
    parser = argparse.ArgumentParser(prog="apps/evaluate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    zeroshot = sub.add_parser("zeroshot", help="zero-shot classification, images and audio, at every dim")
    _common(zeroshot)
    zeroshot.add_argument("--split", default="test", help="split folder under DIR (default test)")
    zeroshot.add_argument(
        "--templates", metavar="FILE", help="prompt templates, `{c}` = class name (default "
        "DIR/zeroshot_classification_templates.txt; openclip:imagenet = open_clip's 80)",
    )  # fmt: skip
    probe = sub.add_parser("linear-probe", help="logistic regression on frozen embeddings, at every dim")
    _common(probe)
    probe.add_argument("--train-split", default="train")
    probe.add_argument("--val-split", default="val", help="chooses the regularization C")
    probe.add_argument("--test-split", default="test")
    return parser.parse_args(argv)


def _write(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def run_zeroshot(args: argparse.Namespace) -> dict[str, Any]:
    """`apps/evaluate zeroshot`: read, embed, score, write the JSON and the confusion PNGs, print."""
    from apps.alignment.zeroshot import (
        flatten_zeroshot,
        format_zeroshot_table,
        plot_confusion,
        zeroshot_result,
    )
    from apps.common.zeroshot_data import read_split, task_of

    classnames, templates = task_of(args.dataset, args.classnames, args.templates)
    split = read_split(args.dataset, args.split, len(classnames), args.max_samples)  # before the model loads
    encoders = load_encoders(args.checkpoint, args.device)
    dims = chosen_dims(encoders, args.dim)
    result = zeroshot_result(encoders, classnames, templates, split, dims, args.modality)
    dataset = Path(args.dataset).name
    out = Path(
        args.out or f"outputs/{model_name(encoders, args.checkpoint)}/zeroshot_{dataset}_{args.split}.json"
    )
    for modality, section in result.items():
        if section["confusion"]:
            png = out.with_name(f"{out.stem}_{modality}_confusion.png")
            title = f"{modality} zero-shot, {dataset}/{args.split}, dim {max(section['dims'], key=int)}"
            section["confusion_png"] = str(plot_confusion(section["confusion"], classnames, png, title))
        if len(classnames) > 100:
            section.pop("confusion")  # the PNG shows it; a 1000 x 1000 list would swamp the JSON
    report = {
        "checkpoint": str(args.checkpoint),
        "dataset": str(args.dataset),
        "split": args.split,
        "num_samples": len(split.samples),
        "num_classes": len(classnames),
        "num_templates": len(templates),
        "templates": templates,
        "dims": dims,
        "zeroshot": result,
        "summary": flatten_zeroshot(result),
    }
    _write(report, out)
    print(
        f"zero-shot classification ({args.dataset}, {args.split} split, {len(split.samples)} samples, "
        f"{len(classnames)} classes, {len(templates)} templates):"
    )
    print(format_zeroshot_table(result))
    for modality, section in result.items():
        if section["skipped"]:
            print(
                f"skipped {len(section['skipped'])} undecodable {modality} samples (e.g. {section['skipped'][0]!r})"
            )
    print(f"wrote {out}")
    return report


def run_linear_probe(args: argparse.Namespace) -> dict[str, Any]:
    """`apps/evaluate linear-probe`: embed the three splits, fit and score at every dim, write, print."""
    from apps.alignment.linear_probe import format_probe_table, linear_probe_result
    from apps.common.zeroshot_data import CLASSNAMES_FILE, read_classnames, read_split

    classnames = read_classnames(args.classnames or Path(args.dataset) / CLASSNAMES_FILE)
    splits = [args.train_split, args.val_split, args.test_split]
    read = {name: read_split(args.dataset, name, len(classnames), args.max_samples) for name in splits}
    encoders = load_encoders(args.checkpoint, args.device)
    dims = chosen_dims(encoders, args.dim)
    result = linear_probe_result(encoders, *(read[name] for name in splits), dims, args.modality)
    dataset = Path(args.dataset).name
    out = Path(args.out or f"outputs/{model_name(encoders, args.checkpoint)}/linear_probe_{dataset}.json")
    report = {
        "checkpoint": str(args.checkpoint),
        "dataset": str(args.dataset),
        "splits": {name: len(read[name].samples) for name in splits},
        "num_classes": len(classnames),
        "dims": dims,
        "linear_probe": result,
    }
    _write(report, out)
    print(f"linear probe ({args.dataset}: train {report['splits'][args.train_split]}, val (chooses C) "
          f"{report['splits'][args.val_split]}, test {report['splits'][args.test_split]} samples):")  # fmt: skip
    print(format_probe_table(result))
    print(f"wrote {out}")
    return report


def evaluate_dispatch(argv: Sequence[str] | None = None) -> int:
    """`apps/evaluate zeroshot|linear-probe ...`, else the config retrieval evaluation (`--config`)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        if argv and argv[0] in ("-h", "--help"):
            print(__doc__)
        return evaluate_main(argv)
    args = parse(argv)
    run = run_zeroshot if args.command == "zeroshot" else run_linear_probe

    def main() -> int:
        run(args)
        return 0

    return run_guarded(main)
