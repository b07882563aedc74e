"""Our zero-shot classification and retrieval figures beside clip-benchmark's own, on the same model and data.

`uv run benchmarks/bench_evaluations.py [--checkpoint checkpoints/demo/checkpoint_best.pt] [--demo data/demo]
[--out FILE] [--quick]`

The demo's test split is written in CLIP_benchmark's webdataset layout (the zero-shot folder of
`apps/data demo-zeroshot`, and as retrieval folders: every test image with its caption, and the subset whose
captions are distinct); clip-benchmark reads them with its own `build_dataset("wds/...")` and scores the
model through the clip-benchmark face (apps/alignment/clip_face.py) with its own
`zeroshot_classification.evaluate` and `zeroshot_retrieval.evaluate`. Ours: `apps/evaluate zeroshot`'s
`zeroshot_result` on the same folder, and the retrieval evaluation's `direction_metrics` on the Embedder's
embeddings of the same images and captions. Each tool's wall time is measured in the same run (ours first,
then theirs, per dim). Prints the table last; writes JSON (default outputs/evaluations/bench_evaluations.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts
from machine import machine_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/demo/checkpoint_best.pt")
    parser.add_argument("--demo", default="data/demo", help="the demo dataset (its test split is used)")
    parser.add_argument("--out", default="outputs/evaluations/bench_evaluations.json")
    parser.add_argument("--quick", action="store_true", help="the top dim only")
    args = parser.parse_args()

    import torch
    from eg_data import read_all
    from eg_data.transforms import decode_image

    from apps.alignment.clip_face import ClipBenchmarkFace, clip_benchmark_retrieval, clip_benchmark_zeroshot
    from apps.alignment.embed import Embedder
    from apps.alignment.zeroshot import zeroshot_result
    from apps.common.retrieval import direction_metrics, truncate_normalize
    from apps.common.zeroshot_data import read_split, task_of, write_demo_zeroshot, write_split

    info = machine_info(threads=1)
    torch.set_num_threads(1)
    embedder = Embedder.from_checkpoint(args.checkpoint)
    work = Path(tempfile.mkdtemp(prefix="bench_evaluations_"))
    write_demo_zeroshot(args.demo, work / "zeroshot", splits=("test",))
    raw = read_all(Path(args.demo) / "test")
    first: dict[bytes, int] = {}
    for i, r in enumerate(raw):
        first.setdefault(r["txt"], i)
    subsets = {"all": list(range(len(raw))), "distinct captions": sorted(first.values())}
    for name, rows in subsets.items():
        folder = work / name.replace(" ", "_")
        write_split(
            folder,
            "test",
            [{"key": raw[i]["__key__"], "png": raw[i]["png"], "txt": raw[i]["txt"]} for i in rows],
        )
        (folder / "dataset_type.txt").write_text("retrieval\n")
    classnames, templates = task_of(work / "zeroshot")
    images = [decode_image(r["png"]) for r in raw]
    captions = [r["txt"].decode() for r in raw]
    dims = [max(embedder.dims)] if args.quick else list(embedder.dims)

    rows: list[dict[str, Any]] = []
    timing = {"ours_s": 0.0, "clip_benchmark_s": 0.0}
    for dim in dims:
        face = ClipBenchmarkFace(embedder, dim)
        start = time.perf_counter()  # each tool reads the folder, embeds and scores
        split = read_split(work / "zeroshot", "test", len(classnames))
        ours = zeroshot_result(embedder, classnames, templates, split, [dim], ["vision"])["vision"]["dims"][
            str(dim)
        ]
        timing["ours_s"] += time.perf_counter() - start
        start = time.perf_counter()
        theirs = clip_benchmark_zeroshot(face, str(work / "zeroshot"), "test")
        timing["clip_benchmark_s"] += time.perf_counter() - start
        for metric in ("acc1", "acc5", "mean_per_class_recall"):
            rows.append({"task": "zero-shot, images", "data": f"demo test ({len(raw)})", "dim": dim,
                         "metric": metric, "ours": ours[metric], "clip_benchmark": theirs[metric]})  # fmt: skip
        for name, keep in subsets.items():
            a = truncate_normalize(embedder.embed_images([images[i] for i in keep]), dim)
            b = truncate_normalize(embedder.embed_texts([captions[i] for i in keep]), dim)
            v2t, t2v = direction_metrics(a, b), direction_metrics(b, a)
            theirs = clip_benchmark_retrieval(face, str(work / name.replace(" ", "_")), "test")
            for k in (1, 5, 10):
                for direction, mine, key in (("image->text", v2t, "text"), ("text->image", t2v, "image")):
                    rows.append({"task": f"retrieval {direction}", "data": f"{name} ({len(keep)})", "dim": dim,
                                 "metric": f"recall@{k}", "ours": mine[f"recall@{k}"],
                                 "clip_benchmark": theirs[f"{key}_retrieval_recall@{k}"]})  # fmt: skip
    report = {
        "machine": info,
        "checkpoint": args.checkpoint,
        "templates": templates,
        "rows": rows,
        "timing": timing,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"machine: {info}")
    print(
        f"zero-shot wall (images, {len(dims)} dims): ours {timing['ours_s']:.1f} s, clip-benchmark "
        f"{timing['clip_benchmark_s']:.1f} s ({timing['clip_benchmark_s'] / max(timing['ours_s'], 1e-9):.2f}x ours)"
    )
    print("| task | data | dim | metric | ours | clip-benchmark | ours - theirs |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['task']} | {r['data']} | {r['dim']} | {r['metric']} | {r['ours']:.4f} | "
              f"{r['clip_benchmark']:.4f} | {round(r['ours'] - r['clip_benchmark'], 4) + 0.0:+.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
