"""Checkpointing: how long a save blocks the training loop (eg-train against a raw torch.save), and load time.

`uv run benchmarks/bench_checkpoint.py [--config configs/demo.yaml] [--pairs 3] [--region-s 10] [--quick]`

One Trainer is built around the stage-1 demo model (configs/demo.yaml: towers, optimizer groups) and trained
a few steps so the optimizer holds its moments. A timed region alternates one real training step (forward,
backward, AdamW step on a demo batch) with one save, for `--region-s` seconds or more; only the save calls
are timed. Contenders, alternated in every pair (the order rotates):

- eg-train: `Trainer._save` as the training loop calls it: capture the run state, serialize it, hand the
  bytes to the writer thread (temp file, fsync, rename, directory fsync: atomic and durable). A save also
  waits for the previous write if it is still running (counted).
- eg-train (sync): the same save written on the loop's thread (`checkpoint.write_checkpoint`), as eg-train did
  before the writer thread: what atomic + durable costs when the loop waits for it.
- torch.save: the same captured state (`state.capture(trainer.parts)`) written with `torch.save(state, path)`:
  not atomic, no fsync.

Load: `eg_train.load_checkpoint(path)` (torch.load weights_only + format checks) against
`torch.load(path, map_location="cpu", weights_only=True)` of the same file, alternated, regions of
`--region-s` seconds of repeated loads (`--pairs` rounded up to even, so each goes first as often); the CPU
time of the loads is reported too (this process: less disturbed by other load on the machine). Medians over the pairs of the per-save (per-load) milliseconds and of
the per-pair ratios. 1 torch thread. Writes JSON (default outputs/benchmarks/bench_checkpoint.json) and
prints a table last.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_trainer import demo_setup
from machine import machine_info

GOAL = 1.2  # eg-train's blocked time (and load time) at most 1.2x torch's
FOLDERS = {"eg-train": "eg_train", "eg-train (sync)": "eg_train_sync", "torch.save": "torch_save"}


def build_trainer(cfg: Any, batches: list[dict], workdir: Path) -> Any:
    """A Trainer around the demo model, its optimizer state filled by two steps."""
    from eg_train import Trainer

    from apps.alignment.build import build_model

    model = build_model(cfg)
    tcfg = dataclasses.replace(
        cfg.train,
        output_dir=str(workdir / "outputs"),
        checkpoint_dir=str(workdir / "eg_train"),
        resume="never",
        keep_last_n=0,
        progress_bar=False,
        device="cpu",
    )
    trainer = Trainer(model, tcfg, batches, param_groups=model.param_groups(tcfg.lr))
    for batch in batches[:2]:
        train_step(trainer, batch)
    return trainer


def train_step(trainer: Any, batch: dict) -> None:
    """One plain optimizer step on the trainer's model and optimizer (the state the saves capture)."""
    trainer.model.train()
    trainer.model(batch)["loss"].backward()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.run.step += 1


def save_region(trainer: Any, batches: list[dict], how: str, region_s: float, folder: Path) -> dict[str, Any]:
    """Steps and saves alternated for `region_s` seconds; the save calls' seconds."""
    from eg_train import checkpoint as ck
    from eg_train import state

    folder.mkdir(parents=True, exist_ok=True)
    trainer.saver.folder = folder
    blocked: list[float] = []
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < region_s or len(blocked) < 2:
        train_step(trainer, batches[i % len(batches)])
        i += 1
        t0 = time.perf_counter()
        if how == "eg-train":
            trainer._save(best=False)
        elif how == "eg-train (sync)":
            data = ck.serialize(state.capture(trainer.parts))
            ck.write_checkpoint(folder, data, trainer.run.step, True, False, 0)
        else:
            torch.save(state.capture(trainer.parts), folder / "raw.pt")
        blocked.append(time.perf_counter() - t0)
    seconds = time.perf_counter() - start
    trainer.saver.collect()  # the last write completes outside the region
    assert trainer.saver.num_failed_saves == 0
    return {"seconds": seconds, "saves": len(blocked), "median_ms": 1e3 * statistics.median(blocked)}


def load_region(path: Path, how: str, region_s: float) -> dict[str, Any]:
    """Repeated loads of `path` for `region_s` seconds."""
    from eg_train import load_checkpoint

    times: list[float] = []
    cpu: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < region_s or len(times) < 2:
        t0, c0 = time.perf_counter(), time.process_time()
        if how == "eg-train":
            load_checkpoint(path)
        else:
            torch.load(path, map_location="cpu", weights_only=True)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "seconds": time.perf_counter() - start,
        "loads": len(times),
        "median_ms": 1e3 * statistics.median(times),
        "median_cpu_ms": 1e3 * statistics.median(cpu),  # less disturbed by other load on the machine
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns (and writes) the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, key=value")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--region-s", type=float, default=10.0, help="minimum seconds per timed region")
    parser.add_argument("--workdir", default="checkpoints/bench_checkpoint", help="where checkpoints go")
    parser.add_argument("--out", default="outputs/benchmarks/bench_checkpoint.json")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 pair, regions of 2 saves/loads")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.region_s = 1, 0.0
    torch.set_num_threads(1)
    info = machine_info(1)
    cfg, batches = demo_setup(args.config, args.set, 4)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    trainer = build_trainer(cfg, batches, work)
    contenders = ["eg-train", "eg-train (sync)", "torch.save"]
    saves: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    for pair in range(args.pairs):
        order = contenders[pair % 3 :] + contenders[: pair % 3]
        for how in order:
            saves[how].append(save_region(trainer, batches, how, args.region_s, work / FOLDERS[how]))
            print(f"pair {pair + 1} save {how:<16}: {saves[how][-1]['median_ms']:7.2f} ms", flush=True)
    path = work / "eg_train" / "checkpoint_latest.pt"
    size_mb = path.stat().st_size / 1e6
    loads: dict[str, list[dict[str, Any]]] = {"eg-train": [], "torch.load": []}
    for pair in range(args.pairs + args.pairs % 2):  # an even count: each contender goes first as often
        for how in ["eg-train", "torch.load"] if pair % 2 == 0 else ["torch.load", "eg-train"]:
            loads[how].append(load_region(path, how, args.region_s))
            print(f"pair {pair + 1} load {how:<16}: {loads[how][-1]['median_ms']:7.2f} ms", flush=True)
    shutil.rmtree(work, ignore_errors=True)

    def ratios(table: dict[str, list[dict]], a: str, b: str) -> list[float]:
        return [x["median_ms"] / y["median_ms"] for x, y in zip(table[a], table[b])]

    rows = []
    for how in contenders:
        r = ratios(saves, how, "torch.save")
        rows.append(
            (
                "save (blocked)",
                how,
                statistics.median(x["median_ms"] for x in saves[how]),
                statistics.median(r),
            )
        )
    for how, regions in loads.items():
        r = ratios(loads, how, "torch.load")
        rows.append(("load", how, statistics.median(x["median_ms"] for x in regions), statistics.median(r)))
    report = {
        **info,
        "settings": vars(args),
        "checkpoint_mb": size_mb,
        "saves": saves,
        "loads": loads,
        "table": [{"what": w, "contender": c, "median_ms": ms, "ratio": r} for w, c, ms, r in rows],
        "load_cpu_ratio": statistics.median(
            x["median_cpu_ms"] / y["median_cpu_ms"] for x, y in zip(loads["eg-train"], loads["torch.load"])
        ),
        "goal": GOAL,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\ncheckpoint benchmark ({info['cpu']}, nproc {info['nproc']}, torch {info['torch']}, 1 thread, "
        f"commit {info['commit']}, {info['date']}; shared machine); JSON: {out}"
    )
    print(
        f"demo run state {size_mb:.1f} MB; {args.pairs} pairs of regions >= {args.region_s:.0f} s "
        f"({statistics.median(x['saves'] for x in saves['eg-train'])} saves per region), medians"
    )
    print(f"{'':<16}{'contender':<18}{'ms':>9}{'vs torch':>10}")
    for what, how, ms, ratio in rows:
        print(f"{what:<16}{how:<18}{ms:>9.2f}{ratio:>9.2f}x")
    blocked = statistics.median(ratios(saves, "eg-train", "torch.save"))
    load = statistics.median(ratios(loads, "eg-train", "torch.load"))
    print(
        f"goal <= {GOAL}x: save {blocked:.2f}x {'met' if blocked <= GOAL else 'MISSED'}, "
        f"load {load:.2f}x {'met' if load <= GOAL else 'MISSED'} (CPU time of the loads: "
        f"{report['load_cpu_ratio']:.2f}x)"
    )
    return report


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
