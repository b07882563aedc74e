"""The plan against real CPU steps: peak memory, FLOPs and step time of the demo configs and of real-width,
depth-truncated variants of the real configs, side by side in one run.

`uv run benchmarks/bench_plan.py [--threads 1] [--steps 2] [--quick] [--skip-qwen] [--out FILE]`

For each case, `apps.planning.make_plan` plans the config on fake tensors (the fit alone, no verifying
steps) and the same config is built for real through the apps' builders (apps/planning/truncated.py's
`build_real`) and run for `--steps` CPU training steps under the same MemTracker and FLOP count
(`real_step`), then timed without the trackers (the same step: autocast forward, backward, clipping,
AdamW). Ratios are plan / real:
- peak: the plan's peak at the configured batch against MemTracker's real peak;
- FLOPs: the plan's step FLOPs against FlopCounterMode's formulas on the real step;
- time: the plan's step time at the measured CPU MFU against the measured step time. The plan's time
  is model FLOPs over (MFU x peak); on this CPU the peak is eg_train.throughput's measured fp32 matmul
  and the MFU the median of the cases' measured MFUs (one number for all cases, as `--mfu` is one
  number for a GPU), so the ratio says how far one MFU predicts each model's step time.

Cases: the demo configs (configs/demo.yaml, demo_mixture.yaml, demo_qa_{baseline,trm}.yaml, the stage-2
ones over configs/demo.yaml's towers, at their configured batch; demo_qa_qwen.yaml is not a case: its tiny
Qwen is written by the training app on first use, and the Qwen path is the qa_qwen7b variant's) and the truncated variants at
batch 2, fp32, 2 blocks per backbone (ViT-L/14-336 + mpnet with a 4096-d Matryoshka head; ViT-B/16 +
Whisper large-v3's encoder width + MiniLM; qa_qwen7b's Qwen2.5-7B width, heads and vocabulary in 8-bit
with LoRA, question + answer at 64 tokens). `--quick` keeps demo.yaml and pixmo's variant; `--skip-qwen`
drops the Qwen variant (8.6 GB of RAM, ~3 minutes).

Prints a table last and writes JSON (default outputs/benchmarks/bench_plan.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared machine_info
from machine import machine_info

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # apps.planning

DEMOS = ["demo", "demo_mixture", "demo_qa_baseline", "demo_qa_trm"]
VARIANTS: dict[str, dict[str, Any]] = {
    "pixmo_alignment": {},
    "trimodal_alignment": {"whisper": "large-v3"},
    "qa_qwen7b": {"max_length": 64},
}


def _timed_steps(planned: Any, batch_size: int, steps: int) -> float:
    """Median seconds of one training step without trackers (what measure_steps runs per step)."""
    from eg_train.precision import autocast
    from eg_train.schedule import build_optimizer

    from apps.planning.model import make_batch

    model, train = planned.model, planned.train
    optimizer = build_optimizer(model, train, planned.param_groups)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    max_norm = train.grad_clip if train.grad_clip > 0 else float("inf")
    times = []
    for step in range(steps + 1):  # the first step creates AdamW's state: not timed
        batch = make_batch(planned, batch_size, step)
        start = time.perf_counter()
        with autocast(train.precision, torch.device("cpu")):
            out = model(batch)
        out["loss"].float().backward()
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        optimizer.step()
        model.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - start)
        del out, batch
    return statistics.median(times)


def _case(name: str, config: str, stage1: str | None, description: str, steps: int) -> dict[str, Any]:
    from apps.planning import make_plan, truncated

    t0 = time.perf_counter()
    plan = make_plan(config, stage1_config=stage1, max_verify=0)
    plan_s = time.perf_counter() - t0
    variant = truncated.Variant(name, config, stage1, description)
    real = truncated.build_real(variant)
    measured = truncated.real_step(real, plan.batch_size, num_steps=steps)
    seconds = _timed_steps(real, plan.batch_size, steps)
    del real
    return {
        "case": name,
        "description": description,
        "batch_size": plan.batch_size,
        "precision": plan.precision,
        "plan_seconds": round(plan_s, 1),
        "plan_peak_bytes": plan.gpu_plans[0].peak_bytes,
        "real_peak_bytes": measured.peak_bytes,
        "plan_peak_by_kind": plan.peak_by_kind,
        "real_peak_by_kind": measured.peak_by_kind,
        "plan_step_flops": plan.step_flops_per_sample * plan.batch_size,
        "real_step_flops": measured.flops,
        "model_flops": plan.model_flops_per_sample * plan.batch_size,
        "real_step_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-qwen", action="store_true")
    parser.add_argument("--out", default=str(REPO / "outputs" / "benchmarks" / "bench_plan.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.chdir(REPO)  # the demo configs name data/demo_models relative to the repository
    from eg_train.throughput import measured_matmul_peak

    from apps.planning import truncated
    from apps.planning.cli import _quiet

    _quiet()
    info = machine_info(threads=args.threads)
    peak = measured_matmul_peak("cpu", torch.float32)
    demos = DEMOS[:1] if args.quick else DEMOS
    variants = {k: v for k, v in VARIANTS.items() if not (args.skip_qwen and k == "qa_qwen7b")}
    if args.quick:
        variants = {"pixmo_alignment": {}}
    rows = []
    with tempfile.TemporaryDirectory(prefix="eg-bench-plan-") as work:
        for name in demos:
            stage1 = None if name in ("demo", "demo_mixture") else str(REPO / "configs" / "demo.yaml")
            config = str(REPO / "configs" / f"{name}.yaml")
            rows.append(_case(name, config, stage1, f"configs/{name}.yaml as configured", args.steps))
            print(json.dumps(rows[-1]), flush=True)
        for name, options in variants.items():
            variant = truncated.write_variant(
                name, Path(work) / name, layers=2, batch_size=2, precision="fp32", **options
            )
            rows.append(
                _case(f"{name} x2", variant.config, variant.stage1_config, variant.description, args.steps)
            )
            print(json.dumps(rows[-1]), flush=True)
    for row in rows:
        row["real_mfu"] = row["model_flops"] / row["real_step_seconds"] / peak
    mfu = statistics.median(r["real_mfu"] for r in rows)
    for row in rows:
        row["plan_step_seconds"] = row["model_flops"] / (mfu * peak)
        row["peak_ratio"] = row["plan_peak_bytes"] / row["real_peak_bytes"]
        row["flops_ratio"] = row["plan_step_flops"] / row["real_step_flops"]
        row["time_ratio"] = row["plan_step_seconds"] / row["real_step_seconds"]
    result = {
        "machine": info,
        "load_average_1min_at_end": os.getloadavg()[0],
        "cpu_fp32_matmul_peak_gflops": peak / 1e9,
        "median_cpu_mfu": mfu,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(info))
    print(
        f"CPU fp32 matmul peak {peak / 1e9:.1f} GFLOP/s; median measured MFU {mfu:.3f} (the plan's --mfu here)"
    )
    header = (
        f"{'case':<22} {'batch':>5} {'plan MiB':>9} {'real MiB':>9} {'peak':>6} {'plan GFLOP':>11} "
        f"{'real GFLOP':>11} {'FLOPs':>6} {'plan s':>7} {'real s':>7} {'time':>5} {'MFU':>5}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['case']:<22} {r['batch_size']:>5} {r['plan_peak_bytes'] / 2**20:>9.1f} "
            f"{r['real_peak_bytes'] / 2**20:>9.1f} {r['peak_ratio']:>6.3f} {r['plan_step_flops'] / 1e9:>11.2f} "
            f"{r['real_step_flops'] / 1e9:>11.2f} {r['flops_ratio']:>6.3f} {r['plan_step_seconds']:>7.2f} "
            f"{r['real_step_seconds']:>7.2f} {r['time_ratio']:>5.2f} {r['real_mfu']:>5.3f}"
        )


if __name__ == "__main__":
    main()
