"""Matryoshka funnel search against exact full-dim search: recall@10 and speed-up, at 10^4 and 10^6 vectors.

`uv run benchmarks/bench_search.py [--sizes 10000 1000000] [--dim 256] [--threads 1] [--out FILE]`

Synthetic MRL-like vectors (not a trained model): Gaussian with a decaying variance per dim,
var_j = (j + 1) ** -decay (decay 1: the first 32 of 256 dims hold 66% of the variance, so low dims carry
most of the signal, as a Matryoshka projection's do). Queries are database vectors plus noise of the same
spectrum at half the scale. The funnel (`MatryoshkaSearcher.search(..., shortlist_dim, shortlist)`) ranks
all vectors at a low dim, keeps a shortlist and re-ranks it at the full dim; recall@10 is the overlap of its
top 10 with exact full-dim search's top 10, averaged over the queries. Both run through the same searcher:
a torch matmul below `FAISS_MIN_VECTORS` vectors, faiss IndexFlatIP above. Times are the median of
`--repeats` runs of one batch of queries, after one warm-up run, on `--threads` threads.

With a stage-1 checkpoint (default checkpoints/demo/checkpoint_best.pt, when it exists), the demo index
(data/demo/test) is measured too: test captions -> images, recall@10 of the funnel against exact search,
and the text -> image top-1 label match of exact search next to the evaluation's label@1 at each dim.
Prints a table last and writes everything to JSON (default outputs/search/bench_search.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from apps.alignment.search import FAISS_MIN_VECTORS, MatryoshkaSearcher


def mrl_like(num: int, dim: int, decay: float, generator: torch.Generator) -> torch.Tensor:
    """(num, dim) Gaussian rows with variance (j + 1) ** -decay in dim j, generated in blocks."""
    scale = torch.arange(1, dim + 1, dtype=torch.float32) ** (-decay / 2)
    out = torch.empty(num, dim)
    for start in range(0, num, 100_000):
        block = out[start : start + 100_000]
        block.normal_(generator=generator).mul_(scale)
    return out


def timed(fn: Any, repeats: int) -> tuple[float, Any]:
    """Median seconds of `repeats` calls after one warm-up call, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def recall_at(found: torch.Tensor, exact: torch.Tensor) -> float:
    """Mean over queries of |found ∩ exact| / k: (Q, k) ids each."""
    hits = [len(set(f.tolist()) & set(e.tolist())) / exact.shape[1] for f, e in zip(found, exact)]
    return sum(hits) / len(hits)


def bench_synthetic(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for size in args.sizes:
        generator = torch.Generator().manual_seed(0)
        database = mrl_like(size, args.dim, args.decay, generator)  # (N, D)
        picks = torch.randint(0, size, (args.queries,), generator=generator)
        queries = database[picks] + 0.5 * mrl_like(args.queries, args.dim, args.decay, generator)  # (Q, D)
        searcher = MatryoshkaSearcher(database)
        backend = "faiss IndexFlatIP" if searcher.use_faiss else "torch matmul"
        exact_s, (_, exact_ids) = timed(
            lambda searcher=searcher, queries=queries: searcher.search(queries, k=args.k), args.repeats
        )
        rows.append(
            {
                "collection": f"synthetic {size:,}",
                "size": size,
                "backend": backend,
                "method": f"exact @{args.dim}",
                "recall@10": 1.0,
                "ms_per_query": 1000 * exact_s / args.queries,
                "speedup": 1.0,
            }
        )
        for shortlist_dim in args.shortlist_dims:
            for shortlist in args.shortlists:
                seconds, (_, ids) = timed(
                    lambda d=shortlist_dim, s=shortlist, searcher=searcher, queries=queries: searcher.search(
                        queries, k=args.k, shortlist_dim=d, shortlist=s
                    ),
                    args.repeats,
                )
                rows.append(
                    {
                        "collection": f"synthetic {size:,}",
                        "size": size,
                        "backend": backend,
                        "method": f"funnel @{shortlist_dim} x{shortlist} -> @{args.dim}",
                        "recall@10": recall_at(ids, exact_ids),
                        "ms_per_query": 1000 * seconds / args.queries,
                        "speedup": exact_s / seconds,
                    }
                )
                print(rows[-1], flush=True)
        searcher = database = None  # free ~3 GB at 10^6 before the next size
    return rows


def bench_demo(args: argparse.Namespace) -> dict[str, Any]:
    """The demo index: captions -> images with the funnel against exact search; label@1 against the eval's."""
    from eg_data import read_all

    from apps.alignment.embed import Embedder
    from apps.alignment.evaluate import collect_embeddings, retrieval_result
    from apps.alignment.search import index_shards
    from apps.common.loaders import eval_loader, loader_for_encoders

    embedder = Embedder.from_checkpoint(args.checkpoint)
    index = index_shards(embedder, args.demo_shards)
    vision = index.rows("vision")
    raw = {s["__key__"]: s for s in read_all(args.demo_shards)}
    keys = [index.keys[i] for i in vision]
    queries = embedder.project_texts([raw[k]["txt"].decode() for k in keys])  # (N, max_dim)
    labels = index.labels[vision]
    searcher = MatryoshkaSearcher(index.embeddings[vision])
    top = embedder.max_dim
    exact_s, (_, exact_ids) = timed(lambda: searcher.search(queries, k=args.k), args.repeats)
    rows = [
        {
            "collection": f"demo test ({len(vision)} images)",
            "size": len(vision),
            "backend": "torch matmul",
            "method": f"exact @{top}",
            "recall@10": 1.0,
            "ms_per_query": 1000 * exact_s / len(keys),
            "speedup": 1.0,
        }
    ]
    for shortlist_dim in [d for d in embedder.dims if d < top]:
        for shortlist in (20, 50):
            seconds, (_, ids) = timed(
                lambda d=shortlist_dim, s=shortlist: searcher.search(
                    queries, k=args.k, shortlist_dim=d, shortlist=s
                ),
                args.repeats,
            )
            rows.append(
                {
                    "collection": f"demo test ({len(vision)} images)",
                    "size": len(vision),
                    "backend": "torch matmul",
                    "method": f"funnel @{shortlist_dim} x{shortlist} -> @{top}",
                    "recall@10": recall_at(ids, exact_ids),
                    "ms_per_query": 1000 * seconds / len(keys),
                    "speedup": exact_s / seconds,
                }
            )
    # the evaluation's label@1 (text -> vision) at every dim, against exact search's top-1 on the index
    cfg = embedder.aligned.config
    encoders = {name: tower.encoder for name, tower in embedder.model.towers.items()}
    loader = eval_loader(
        loader_for_encoders(cfg.data.train, encoders, "data.train"),
        args.demo_shards,
        cfg.eval.batch_size,
        "x",
    )
    collected = collect_embeddings(embedder.model, loader, embedder.device, cfg.train.precision)
    evaluation = retrieval_result(collected, cfg, embedder.dims)["vision_text"]
    label_at_1 = {}
    for dim in embedder.dims:
        _, top1 = searcher.search(queries, k=1, dim=dim)
        label_at_1[str(dim)] = {
            "search": float((labels[top1[:, 0]] == labels).double().mean()),
            "evaluation": evaluation[str(dim)]["text_to_vision"]["label_match@1"],
        }
    return {"checkpoint": args.checkpoint, "step": embedder.aligned.step, "rows": rows, "label@1": label_at_1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256, help="full dim of the synthetic vectors")
    parser.add_argument("--decay", type=float, default=1.0, help="variance of dim j is (j+1)**-decay")
    parser.add_argument("--shortlist-dims", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--shortlists", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch and faiss threads")
    parser.add_argument("--checkpoint", default="checkpoints/demo/checkpoint_best.pt")
    parser.add_argument("--demo-shards", default="data/demo/test")
    parser.add_argument("--out", default="outputs/search/bench_search.json")
    args = parser.parse_args()

    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True
    ).stdout.strip()
    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} thread(s)",
        "faiss_min_vectors": FAISS_MIN_VECTORS,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "synthetic": bench_synthetic(args),
    }
    if Path(args.checkpoint).is_file() and Path(args.demo_shards).is_dir():
        report["demo"] = bench_demo(args)
    else:
        report["demo"] = f"skipped: {args.checkpoint} or {args.demo_shards} does not exist"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    rows = report["synthetic"] + (report["demo"]["rows"] if isinstance(report["demo"], dict) else [])
    print(f"\nsearch benchmark ({report['machine']}, commit {commit}, {report['date']}); JSON: {out}")
    print(f"{'collection':<26}{'backend':<19}{'method':<28}{'recall@10':>10}{'ms/query':>10}{'speed-up':>10}")
    for row in rows:
        print(
            f"{row['collection']:<26}{row['backend']:<19}{row['method']:<28}{row['recall@10']:>10.3f}"
            f"{row['ms_per_query']:>10.3f}{row['speedup']:>9.1f}x"
        )
    if isinstance(report["demo"], dict):
        print(
            f"\ndemo text -> image label@1 (exact search on the index vs the evaluation), step {report['demo']['step']}:"
        )
        for dim, pair in report["demo"]["label@1"].items():
            same = "equal" if pair["search"] == pair["evaluation"] else "DIFFERENT"
            print(f"  dim {dim:>4}: search {pair['search']:.4f}  evaluation {pair['evaluation']:.4f}  {same}")
    else:
        print(f"\ndemo: {report['demo']}")


if __name__ == "__main__":
    main()
