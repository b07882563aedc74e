"""`apps/export --checkpoint CKPT --out DIR`'s command line: a stage-1 checkpoint goes to
apps/alignment/export.py, a stage-2 (QA) one to apps/qa/export.py (which builds on the stage-1 export), and
`--onnx` to apps/alignment/export_onnx.py. It lives in stage 2 because it dispatches to both stages (stage 1
never imports stage 2)."""

from __future__ import annotations

from pathlib import Path

from eg_encoders.pretrained import WEIGHTS_NAME

from apps.alignment.export import ExportError, export_stage1


def export_main(argv: list[str] | None = None) -> int:
    """`apps/export --checkpoint CKPT --out DIR`: write the folder, print what was written; user errors are
    one line, exit 2."""
    import argparse

    from apps.common.cli import run_guarded

    parser = argparse.ArgumentParser(
        prog="apps/export", description="a trained checkpoint as a self-contained folder (docs/export.md)"
    )
    parser.add_argument(
        "--checkpoint", metavar="CKPT", help="a stage-1 or stage-2 (QA) checkpoint (.pt) to export"
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="a new folder (with --onnx alone: an export)"
    )
    parser.add_argument("--onnx", action="store_true", help="also write ONNX fp32 + int8 graphs to DIR/onnx")
    parser.add_argument(
        "--dim", type=int, help="the Matryoshka dim of the ONNX graphs (default the smallest)"
    )
    parser.add_argument(
        "--split-dir", metavar="DIR", help="held-out shards for the ONNX R@1 (default data.test_dir)"
    )
    args = parser.parse_args(argv)

    def main() -> int:
        if args.checkpoint is None and not args.onnx:
            raise ExportError("--checkpoint is required (only --onnx may run on an existing export folder)")
        if args.checkpoint is not None and _is_stage2(args.checkpoint):
            from apps.qa.export import export_stage2

            qa = export_stage2(args.checkpoint, args.out)
            print(
                f"exported the stage-2 {qa['decoder']} model of {args.checkpoint} (step {qa['source']['step']}) "
                f"to {args.out}: towers, {', '.join(qa['files'])}"
            )
        elif args.checkpoint is not None:
            config = export_stage1(args.checkpoint, args.out)
            size = (Path(args.out) / WEIGHTS_NAME).stat().st_size
            print(
                f"exported {', '.join(config['towers'])} towers of {args.checkpoint} (step "
                f"{config['source']['step']}) to {args.out}: {WEIGHTS_NAME} {size / 1e6:.1f} MB, dims "
                f"{config['dims']}"
            )
        if args.onnx:
            from apps.alignment.export_onnx import format_report, onnx_report

            split = args.split_dir or _test_dir(Path(args.out))
            print(format_report(onnx_report(args.out, split, args.dim)))
        return 0

    return run_guarded(main)


def _is_stage2(checkpoint: str) -> bool:
    """Whether `checkpoint` is a readable stage-2 (QA) checkpoint (anything else goes to the stage-1 export,
    which names what is wrong with it)."""
    if not Path(checkpoint).is_file():
        return False
    from eg_train import TrainError

    from apps.qa.export import is_stage2

    try:
        return is_stage2(checkpoint)
    except TrainError:  # unreadable (FormatError is one too): export_stage1 reports it in one line
        return False


def _test_dir(folder: Path) -> str:
    """data.test_dir of the run config stored in an export folder."""
    from eg_encoders.pretrained import read_config

    test_dir = ((read_config(folder).get("run_config") or {}).get("data") or {}).get("test_dir")
    if not test_dir:
        raise ExportError(f"{folder / 'config.json'}: run_config has no data.test_dir; pass --split-dir")
    return str(test_dir)
