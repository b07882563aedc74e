"""eg-data's ShardLoader against a bare hand-written decode + transform loop, per worker, on two workloads.

`uv run benchmarks/bench_loader.py [--workloads demo photos] [--workers 1 0] [--pairs 3] [--region-s 10] [--quick]`

Workloads:
- demo: what configs/demo.yaml trains on (data/demo/train, the lead builds it; built here if missing): 32 px
  PNG digits, 4 s of FLAC speech to an 80-bin whisper log-mel, captions with 5% text dropout, batch 64.
- photos: 1,024 photo-sized 640x480 JPEGs (quality 90, ~150 KB: smooth random scenes with sensor-like grain,
  written once to outputs/benchmarks/photos) resized and center-cropped to 224 px, with captions, batch 64.

Contenders, alternated (the order flips every pair), each for timed regions of `--region-s` seconds or more:
- bare: the same decoding and transforms written by hand with PIL, soundfile and whisper on this thread,
  from the raw sample bytes already in memory (no tar reading, no order, no checks), then `torch.stack`
  into batches.
- loader: `ShardLoader` with `--workers` worker processes (1 torch thread each; 0 = in this process, which
  shows the loader's own work without the process boundary): reads the tars, follows the
  epoch's shuffled order, checks and counts bad samples, decodes, transforms, collates and crosses the
  process boundary. Epochs are repeated until the region is long enough; a worker's start-up at each epoch is
  timed apart ("steady" excludes it, "with start-up" includes it).

Ratio per worker = (loader samples/s / workers) / bare samples/s, median over the pairs; goal >= 0.9. Also
the CPU milliseconds per sample (bare: this process; loader: its worker processes once joined), which other
load on the machine disturbs less. Writes JSON (default outputs/benchmarks/bench_loader.json) and prints a
table last.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import soxr
import torch
from eg_data import (
    AudioTransformConfig,
    ImageTransformConfig,
    LoaderConfig,
    ShardLoader,
    ShardWriter,
    build_demo_dataset,
    read_all,
)
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info

GOAL = 0.9


def demo_config(shard_dir: str, workers: int) -> LoaderConfig:
    """The loader configs/demo.yaml trains with (its image size, audio context and text dropout)."""
    return LoaderConfig(
        shard_dir=shard_dir,
        batch_size=64,
        num_workers=workers,
        shuffle_buffer=2000,
        modalities=["image", "audio", "text"],
        required=["image", "audio", "text"],
        text_dropout=0.05,
        image=ImageTransformConfig(size=32),
        audio=AudioTransformConfig(n_mels=80, n_samples=64000),
    )


def photo_config(shard_dir: str, workers: int) -> LoaderConfig:
    """224 px photos with captions (a ViT-B/16 alignment run's loader)."""
    return LoaderConfig(
        shard_dir=shard_dir,
        batch_size=64,
        num_workers=workers,
        shuffle_buffer=1000,
        modalities=["image", "text"],
        required=["image", "text"],
        image=ImageTransformConfig(size=224),
    )


def write_photo_shards(root: Path, count: int = 1024) -> Path:
    """Shards of `count` deterministic 640x480 JPEG photos with captions (written once, then reused)."""
    if (root / "shards.json").exists():
        return root
    rng = np.random.default_rng(0)
    with ShardWriter(root, max_samples_per_shard=256) as writer:
        for i in range(count):
            scene = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
                (640, 480), Image.BICUBIC
            )
            grain = rng.normal(0, 12, (480, 640, 3))
            pixels = np.clip(np.asarray(scene, dtype=np.float64) + grain, 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
            writer.write(
                {
                    "key": f"photo-{i:05d}",
                    "image": buf.getvalue(),
                    "image_ext": "jpg",
                    "text": f"photo {i}",
                    "json": {"label": i % 10},
                }
            )
    return root


def bare_sample(raw: dict[str, Any], cfg: LoaderConfig) -> dict[str, Any]:
    """Decode and transform one sample by hand: PIL, numpy, soundfile, whisper."""
    from whisper.audio import log_mel_spectrogram

    out: dict[str, Any] = {"label": json.loads(raw["json"])["label"], "text": raw["txt"].decode().strip()}
    ext = "jpg" if "jpg" in raw else "png"
    with Image.open(io.BytesIO(raw[ext])) as img:
        img = img.convert("RGB")
    size = cfg.image.size
    w, h = img.size
    if min(w, h) != size:
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    pixels = np.asarray(img).transpose(2, 0, 1)  # (3, H, W) uint8
    std = np.asarray(cfg.image.std, dtype=np.float32)[:, None, None]
    image = np.empty(pixels.shape, dtype=np.float32)  # contiguous (3, H, W)
    np.multiply(pixels, np.float32(1 / 255) / std, out=image)  # (x / 255 - mean) / std
    image -= np.asarray(cfg.image.mean, dtype=np.float32)[:, None, None] / std
    out["image"] = torch.from_numpy(image)
    if "audio" in cfg.modalities:
        wave, rate = soundfile.read(io.BytesIO(raw["flac"]), dtype="float32", always_2d=True)  # (T, C)
        mono = wave.mean(axis=1)
        if rate != 16000:
            mono = soxr.resample(mono, rate, 16000).astype(np.float32)
        n = cfg.audio.n_samples
        audio = torch.zeros(n)
        valid = min(n, len(mono))
        audio[:valid] = torch.from_numpy(mono[:valid])
        out["audio"] = log_mel_spectrogram(audio, n_mels=cfg.audio.n_mels)  # (80, frames)
        out["audio_mask"] = torch.arange(out["audio"].shape[-1]) < -(-valid // 160)
    return out


def bare_region(raw: list[dict[str, Any]], cfg: LoaderConfig, region_s: float) -> dict[str, float]:
    """Batches of hand-decoded samples for `region_s` seconds (cycling over the samples)."""
    batch_size, count, i = cfg.batch_size, 0, 0
    start, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < region_s or count == 0:
        samples = [bare_sample(raw[(i + j) % len(raw)], cfg) for j in range(batch_size)]
        i += batch_size
        batch = {
            k: torch.stack([s[k] for s in samples])
            for k in ("image", "audio", "audio_mask")
            if k in samples[0]
        }
        batch["text"] = [s["text"] for s in samples]
        count += batch_size
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "samples": count,
        "samples_per_s": count / seconds,
        "cpu_ms_per_sample": 1e3 * (time.process_time() - cpu) / count,
    }


def _children_cpu() -> float:
    """CPU seconds of this process's finished children (the loader workers once joined)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def loader_region(loader: ShardLoader, region_s: float, epoch0: int) -> dict[str, float]:
    """Whole epochs of `loader` until `region_s` seconds have passed; start-up timed apart."""
    steady_s = startup_s = 0.0
    steady_samples = samples = epochs = 0
    children, cpu = _children_cpu(), time.process_time()
    while steady_s + startup_s < region_s or epochs == 0:
        loader.set_epoch(epoch0 + epochs)
        start = time.perf_counter()
        batches = iter(loader)
        first = next(batches)
        ready = time.perf_counter()
        samples += len(first["key"])
        batch = first
        for batch in batches:
            steady_samples += len(batch["key"])
        del batches, first, batch  # joins the workers, so their CPU time is counted
        gc.collect()
        startup_s += ready - start
        steady_s += time.perf_counter() - ready
        epochs += 1
    samples += steady_samples
    workers = loader.cfg.num_workers
    worker_cpu = _children_cpu() - children if workers else time.process_time() - cpu
    return {
        "seconds": steady_s + startup_s,
        "epochs": epochs,
        "samples": samples,
        "samples_per_s": steady_samples / steady_s,
        "samples_per_s_with_startup": samples / (steady_s + startup_s),
        "startup_s_per_epoch": startup_s / epochs,
        "cpu_ms_per_sample": 1e3 * worker_cpu / samples,
    }


def bench_workload(name: str, cfg: LoaderConfig, args: argparse.Namespace) -> dict[str, Any]:
    """Alternated pairs of bare and loader regions on one workload."""
    raw = read_all(cfg.shard_dir)
    bare_sample(raw[0], cfg)  # warm-up: imports whisper and loads its mel filters once
    loader = ShardLoader(cfg)
    workers = max(1, cfg.num_workers)
    runs: dict[str, list[dict[str, float]]] = {"bare": [], "loader": []}
    for pair in range(args.pairs):
        for who in ("bare", "loader") if pair % 2 == 0 else ("loader", "bare"):
            if who == "bare":
                runs[who].append(bare_region(raw, cfg, args.region_s))
            else:
                runs[who].append(loader_region(loader, args.region_s, epoch0=100 * pair))
            print(
                f"{name} ({cfg.num_workers} workers) pair {pair + 1} {who:>6}: {runs[who][-1]['samples_per_s']:8.1f} samples/s",
                flush=True,
            )
    ratios = [
        lo["samples_per_s"] / workers / b["samples_per_s"] for b, lo in zip(runs["bare"], runs["loader"])
    ]
    with_startup = [
        lo["samples_per_s_with_startup"] / workers / b["samples_per_s"]
        for b, lo in zip(runs["bare"], runs["loader"])
    ]
    cpu = [b["cpu_ms_per_sample"] / lo["cpu_ms_per_sample"] for b, lo in zip(runs["bare"], runs["loader"])]

    def med(who: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[who])

    return {
        "workload": name,
        "samples_in_split": len(raw),
        "workers": cfg.num_workers,
        "runs": runs,
        "bare_samples_per_s": med("bare", "samples_per_s"),
        "loader_samples_per_s": med("loader", "samples_per_s"),
        "loader_startup_s_per_epoch": med("loader", "startup_s_per_epoch"),
        "bare_cpu_ms_per_sample": med("bare", "cpu_ms_per_sample"),
        "loader_cpu_ms_per_sample": med("loader", "cpu_ms_per_sample"),
        "ratio_per_worker": statistics.median(ratios),
        "ratio_per_worker_with_startup": statistics.median(with_startup),
        "cpu_ratio": statistics.median(cpu),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns (and writes) the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["demo", "photos"], choices=["demo", "photos"])
    parser.add_argument("--data", default="data/demo", help="the demo dataset (built here if missing)")
    parser.add_argument("--photos", default="outputs/benchmarks/photos", help="where the photo shards go")
    parser.add_argument("--num-photos", type=int, default=1024)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 0], help="loader workers (0: in this process, no IPC)"
    )
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--region-s", type=float, default=10.0, help="minimum seconds per timed region")
    parser.add_argument("--out", default="outputs/benchmarks/bench_loader.json")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 pair, one batch or epoch each")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.region_s, args.workers = 1, 0.0, args.workers[:1]
    torch.set_num_threads(1)  # loader workers run single-threaded; compare like with like
    info = machine_info(1)
    results = []
    for name in args.workloads:
        for workers in args.workers:
            if name == "demo":
                if not (Path(args.data) / "train" / "shards.json").exists():
                    build_demo_dataset(args.data, image_size=32, seed=0)
                cfg = demo_config(str(Path(args.data) / "train"), workers)
            else:
                cfg = photo_config(str(write_photo_shards(Path(args.photos), args.num_photos)), workers)
            results.append(bench_workload(name, cfg, args))
    report = {**info, "settings": vars(args), "results": results, "goal": GOAL}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    print(
        f"\nloader benchmark ({info['cpu']}, nproc {info['nproc']}, torch {info['torch']}, 1 thread per "
        f"process, commit {info['commit']}, {info['date']}; shared machine); JSON: {out}"
    )
    print(f"{args.pairs} pairs of regions >= {args.region_s:.0f} s, medians; 0 workers: in-process")
    head = f"{'workload':<9}{'workers':>8}{'bare/s':>9}{'loader/s':>10}{'per worker':>12}{'w/ start-up':>13}"
    print(head + f"{'CPU ms bare':>13}{'CPU ms loader':>15}{'CPU ratio':>11}")
    for r in results:
        print(
            f"{r['workload']:<9}{r['workers']:>8}{r['bare_samples_per_s']:>9.1f}{r['loader_samples_per_s']:>10.1f}"
            f"{r['ratio_per_worker']:>12.2f}{r['ratio_per_worker_with_startup']:>13.2f}"
            f"{r['bare_cpu_ms_per_sample']:>13.2f}{r['loader_cpu_ms_per_sample']:>15.2f}{r['cpu_ratio']:>11.2f}"
        )
    for r in results:
        verdict = "met" if r["ratio_per_worker"] >= GOAL else "MISSED"
        print(
            f"goal >= {GOAL} per worker on {r['workload']}, {r['workers']} workers: "
            f"{r['ratio_per_worker']:.2f} {verdict}"
        )
    return report


if __name__ == "__main__":
    main()
