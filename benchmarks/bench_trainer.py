"""eg-train's Trainer against a bare hand-written training loop on the demo model: wall time and step losses.

`uv run benchmarks/bench_trainer.py [--config configs/demo.yaml] [--pairs 3] [--steps 80] [--quick]`

Both contenders train the stage-1 demo model (`apps/alignment` build path: the demo towers from
data/demo_models, configs/demo.yaml's losses, optimizer groups, lr schedule and clipping) from the same
initialization on the same batches: the first `--num-batches` batches of data/demo/train, decoded once and
held in memory, so the loader is not timed and both see identical inputs. Each timed region is one whole
run of `--steps` optimizer steps (a fixed amount of work, so the run's fixed costs weigh the same however
loaded the machine is; regions shorter than `--region-s` seconds are reported):

- trainer: `Trainer.fit()` with the demo's settings (metrics.csv, tensorboard, log every 10 steps, the
  non-finite guard, the final checkpoint, both PNGs) plus a trivial `evaluate_fn` every steps/4 steps, so
  the plots are due at each validation as in a real run (drawn within eg-train's 1% budget); no progress
  bar.
- bare: forward, backward, clip, AdamW step, zero_grad, lr schedule, `loss.item()`, the same trivial
  evaluation calls, and one `torch.save` of model + optimizer at the end.

Contenders alternate (the order flips every pair), on 1 torch thread. The first `--check-steps` step losses
of both must agree (asserted; printed). Reported: medians over the pairs of the region time, of its CPU time
(this process; less disturbed by other load on the machine), of the steady per-step time (between the first
and the last forward) and of the per-pair ratios bare/trainer.
Writes JSON (default outputs/benchmarks/bench_trainer.json) and prints a table last.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared machine_info
from machine import machine_info

GOAL = 0.97  # within 3% of the bare loop


def demo_setup(config: str, overrides: list[str], num_batches: int) -> tuple[Any, list[dict]]:
    """The stage-1 config (demo towers written and data built where missing) and its first batches."""
    from apps.alignment.build import build_model, prepare_assets
    from apps.alignment.config import AlignmentConfig
    from apps.alignment.evaluate import encoders_of
    from apps.common.config import load_config
    from apps.common.loaders import loader_for_encoders

    cfg = load_config(AlignmentConfig, config, ["data.train.num_workers=0", *overrides])
    prepare_assets(cfg, is_main=True)
    model = build_model(cfg)
    loader = loader_for_encoders(cfg.data.train, encoders_of(model), "data.train").build()
    loader.set_epoch(0)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == num_batches:
            break
    return cfg, batches


def probe(model: torch.nn.Module, step: int) -> dict[str, float]:
    """A validation that costs nothing: the trainer logs `val/probe` and redraws its plots."""
    return {"probe": 0.0}


def run_trainer(cfg: Any, batches: list[dict], steps: int, workdir: Path) -> dict[str, Any]:
    """One `Trainer.fit()` of `steps` steps; seconds, per-step losses and forward times."""
    from eg_train import Trainer

    from apps.alignment.build import build_model

    shutil.rmtree(workdir, ignore_errors=True)
    model = build_model(cfg)
    tcfg = dataclasses.replace(
        cfg.train,
        max_steps=steps,
        output_dir=str(workdir / "outputs"),
        checkpoint_dir=str(workdir / "checkpoints"),
        resume="never",
        val_every=max(1, steps // 4),
        val_at_epoch_end=False,
        save_every=0,
        keep_last_n=0,
        best_metric="val/none",  # no checkpoint_best.pt: the bare loop saves once too
        progress_bar=False,
        device="cpu",
    )
    data = [batches[i % len(batches)] for i in range(steps)]  # one epoch of `steps` batches
    trainer = Trainer(model, tcfg, data, param_groups=model.param_groups(tcfg.lr), evaluate_fn=probe)
    losses: list[float] = []
    stamps: list[float] = []

    def record(module: torch.nn.Module, args: Any, out: dict) -> None:
        if module.training:
            stamps.append(time.perf_counter())
            losses.append(float(out["loss"].detach()))

    hook = model.register_forward_hook(record)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="best_metric=")
        start, cpu = time.perf_counter(), time.process_time()
        trainer.fit()
        seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    hook.remove()
    assert (workdir / "outputs" / "training_curves.png").is_file()
    drawings = {"skipped": trainer.plotter.num_skipped, "seconds": trainer.plotter.spent}
    return {"seconds": seconds, "cpu_s": cpu_s, "losses": losses, "stamps": stamps, "drawings": drawings}


def run_bare(cfg: Any, batches: list[dict], steps: int, workdir: Path) -> dict[str, Any]:
    """The same training by hand; seconds, per-step losses and forward times."""
    from apps.alignment.build import build_model

    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    model = build_model(cfg)
    tc = cfg.train
    groups = []
    for group in model.param_groups(tc.lr):
        params = [p for p in group["params"] if p.requires_grad]
        if params:
            rest = {k: v for k, v in group.items() if k != "params"}
            groups.append({"params": params, "lr": tc.lr, "weight_decay": tc.weight_decay, **rest})
    optimizer = torch.optim.AdamW(
        groups, lr=tc.lr, betas=tuple(tc.betas), eps=tc.eps, weight_decay=tc.weight_decay
    )
    warmup = tc.warmup_steps or round(tc.warmup_ratio * steps)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(max((step - warmup) / max(1, steps - warmup), 0.0), 1.0)
        return tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    val_every = max(1, steps // 4)
    random.seed(tc.seed)
    np.random.seed(tc.seed)
    torch.manual_seed(tc.seed)
    losses: list[float] = []
    stamps: list[float] = []
    start, cpu = time.perf_counter(), time.process_time()
    model.train()
    for step in range(steps):
        stamps.append(time.perf_counter())
        loss = model(batches[step % len(batches)])["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        optimizer.step()
        model.zero_grad(set_to_none=True)
        scheduler.step()
        losses.append(loss.item())
        if (step + 1) % val_every == 0 or step + 1 == steps:
            model.eval()
            with torch.no_grad():
                probe(model, step + 1)
            model.train()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, workdir / "final.pt")
    seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    return {"seconds": seconds, "cpu_s": cpu_s, "losses": losses, "stamps": stamps}


def per_step(stamps: list[float]) -> float:
    """Steady seconds per step: between the first and the last forward."""
    return (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)


def plot_cost(rows_csv: Path, repeats: int = 3) -> float:
    """Median seconds of drawing both PNGs from a finished run's metrics.csv on this thread."""
    import csv

    from eg_train.plots import draw_loss_components, draw_training_curves

    with open(rows_csv, newline="") as f:
        rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        draw_training_curves(rows, rows_csv.parent / "_bench_curves.png")
        draw_loss_components(rows, rows_csv.parent / "_bench_components.png")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns (and writes) the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, key=value")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--region-s", type=float, default=12.0, help="minimum seconds per timed region")
    parser.add_argument(
        "--steps", type=int, default=80, help="steps per region (0: as many as --region-s takes, calibrated)"
    )
    parser.add_argument("--num-batches", type=int, default=8)
    parser.add_argument("--check-steps", type=int, default=10)
    parser.add_argument("--rtol", type=float, default=1e-5, help="tolerance of the step-loss check")
    parser.add_argument("--workdir", default="outputs/benchmarks/bench_trainer_runs")
    parser.add_argument("--out", default="outputs/benchmarks/bench_trainer.json")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 pair of 4 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.steps, args.num_batches, args.check_steps, args.region_s = 1, 4, 2, 4, 0.0
    torch.set_num_threads(1)
    info = machine_info(1)
    cfg, batches = demo_setup(args.config, args.set, args.num_batches)
    work = Path(args.workdir)
    steps = args.steps
    if steps == 0:  # calibrate: a short bare run, then enough steps for --region-s
        warm = run_bare(cfg, batches, 6, work / "calibrate")
        steps = max(8, math.ceil(1.15 * args.region_s / per_step(warm["stamps"][1:])))
    steps = max(steps, args.check_steps)
    runs: dict[str, list[dict[str, Any]]] = {"trainer": [], "bare": []}
    for pair in range(args.pairs):
        order = ["trainer", "bare"] if pair % 2 == 0 else ["bare", "trainer"]
        for name in order:
            fn = run_trainer if name == "trainer" else run_bare
            runs[name].append(fn(cfg, batches, steps, work / name))
            print(
                f"pair {pair + 1} {name:>7}: {runs[name][-1]['seconds']:.2f} s for {steps} steps", flush=True
            )
    first_t, first_b = runs["trainer"][0]["losses"], runs["bare"][0]["losses"]
    check = [(i + 1, a, b) for i, (a, b) in enumerate(zip(first_t[: args.check_steps], first_b))]
    print("\nstep losses, first pair (trainer vs bare):")
    for step, a, b in check:
        print(f"  step {step:>3}: {a:.6f}  {b:.6f}  |diff| {abs(a - b):.2e}")
    worst = max(abs(a - b) / max(abs(b), 1e-12) for _, a, b in check)
    assert worst <= args.rtol, f"step losses differ: worst relative difference {worst:.2e} > {args.rtol}"

    def med(name: str, key: str) -> float:
        return statistics.median(per_step(r["stamps"]) if key == "step" else r[key] for r in runs[name])

    ratios = [b["seconds"] / t["seconds"] for t, b in zip(runs["trainer"], runs["bare"])]
    step_ratios = [
        per_step(b["stamps"]) / per_step(t["stamps"]) for t, b in zip(runs["trainer"], runs["bare"])
    ]
    cpu_ratios = [b["cpu_s"] / t["cpu_s"] for t, b in zip(runs["trainer"], runs["bare"])]
    draw_s = plot_cost(work / "trainer" / "outputs" / "metrics.csv", 1 if args.quick else 3)
    short = [r["seconds"] for v in runs.values() for r in v if r["seconds"] < args.region_s]
    if short:
        print(f"warning: {len(short)} regions shorter than {args.region_s} s: {short}")
    report = {
        **info,
        "settings": {**vars(args), "steps": steps},
        "regions_shorter_than_region_s": len(short),
        "regions_s": {k: [r["seconds"] for r in v] for k, v in runs.items()},
        "median_region_s": {k: med(k, "seconds") for k in runs},
        "median_step_ms": {k: 1e3 * med(k, "step") for k in runs},
        "median_cpu_s": {k: med(k, "cpu_s") for k in runs},
        "ratio_bare_over_trainer": ratios,
        "median_ratio": statistics.median(ratios),
        "median_step_ratio": statistics.median(step_ratios),
        "median_cpu_ratio": statistics.median(cpu_ratios),
        "trainer_drawings": [r["drawings"] for r in runs["trainer"]],
        "goal": GOAL,
        "loss_check": {"steps": len(check), "worst_relative_difference": worst, "rtol": args.rtol},
        "losses_first_pair": {"trainer": first_t[: args.check_steps], "bare": first_b[: args.check_steps]},
        "plot_drawing_s": draw_s,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)

    print(
        f"\ntrainer benchmark ({info['cpu']}, nproc {info['nproc']}, torch {info['torch']}, 1 thread, "
        f"commit {info['commit']}, {info['date']}; shared machine); JSON: {out}"
    )
    print(
        f"{steps} steps per region, {args.pairs} pairs, medians; step losses equal within {worst:.1e} (rel)"
    )
    print(f"{'contender':<10}{'region s':>10}{'CPU s':>8}{'ms/step (steady)':>18}")
    for name in ("bare", "trainer"):
        print(
            f"{name:<10}{report['median_region_s'][name]:>10.2f}{report['median_cpu_s'][name]:>8.2f}"
            f"{report['median_step_ms'][name]:>18.1f}"
        )
    verdict = "met" if report["median_ratio"] >= GOAL else "MISSED"
    skipped = [d["skipped"] for d in report["trainer_drawings"]]
    print(
        f"ratio bare/trainer (speed of the trainer): wall {report['median_ratio']:.3f}, CPU "
        f"{report['median_cpu_ratio']:.3f}, steady steps {report['median_step_ratio']:.3f}; goal >= {GOAL}: "
        f"{verdict}. One drawing of both PNGs costs {draw_s:.2f} s; the trainer skipped {skipped} of its "
        f"validation drawings (1% budget) and drew once at the end"
    )
    return report


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
