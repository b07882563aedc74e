"""Prepare datasets as webdataset shards.

`uv run apps/data demo --out data/demo` builds the offline digits demo set;
`uv run apps/data urls --input FILE --out DIR [--num-samples N]` downloads a URL list (parquet, CSV,
JSONL; e.g. PixMo-Cap) into shards. User errors print one line on stderr and exit with status 2.
"""

import argparse
import json
import sys

from eg_data import DataError, DownloadConfig, build_demo_dataset, download_urls


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: a `demo` and a `urls` subcommand."""
    parser = argparse.ArgumentParser(prog="apps/data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="build the offline digits demo dataset (no-op when complete)")
    demo.add_argument("--out", default="data/demo", help="output directory (default: data/demo)")
    demo.add_argument("--image-size", type=int, default=32, help="stored image side in pixels")
    urls = sub.add_parser("urls", help="download a URL list into shards (resumable)")
    urls.add_argument("--input", required=True, help="a .parquet, .csv or .jsonl URL list")
    urls.add_argument("--out", required=True, help="output shard directory")
    urls.add_argument("--num-samples", type=int, default=0, help="first N rows only (0: all)")
    urls.add_argument("--url-col", default="image_url", help="URL column (default: image_url)")
    urls.add_argument("--caption-col", default="caption", help="caption column (default: caption)")
    urls.add_argument("--samples-per-shard", type=int, default=1000)
    urls.add_argument("--threads", type=int, default=16)
    urls.add_argument("--timeout", type=float, default=10.0, help="seconds per connect/read")
    urls.add_argument("--retries", type=int, default=2)
    urls.add_argument("--max-bytes", type=int, default=20_000_000)
    urls.add_argument("--resize-max-side", type=int, default=0, help="downsize longer side (0: keep)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns the exit status."""
    args = parse_args(argv)
    try:
        if args.command == "demo":
            report = build_demo_dataset(args.out, image_size=args.image_size)
        else:
            cfg = DownloadConfig(
                url_col=args.url_col,
                caption_col=args.caption_col,
                num_samples=args.num_samples,
                samples_per_shard=args.samples_per_shard,
                num_threads=args.threads,
                timeout_s=args.timeout,
                retries=args.retries,
                max_bytes=args.max_bytes,
                resize_max_side=args.resize_max_side,
            )
            report = download_urls(args.input, args.out, cfg)
    except DataError as exn:
        print(f"error: {exn}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
