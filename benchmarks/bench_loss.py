"""Loss cost: contrastive + Matryoshka (MRL) against contrastive alone, and local-loss memory under 2 gloo ranks.

`uv run benchmarks/bench_loss.py [--batches 256 1024] [--dims 1024 4096] [--repeats 5] [--region-s 2]
[--mem-batches 1024 4096] [--mem-dim 512] [--modes ...] [--threads 1] [--quick] [--out FILE]`

Part 1, time. eg-losses' losses as the alignment app combines them (apps/alignment/model.py): one
`ContrastiveLoss` at the full width, plus a `MatryoshkaLoss` wrapping that same module at the nested dims
(eg-losses' defaults below the width, then the width: 128, 256, ..., 4096), weights 0.25 / 1.0 as in
configs/pixmo_alignment.yaml. Contenders, at each batch B and embedding width D:
- contrastive: InfoNCE at D alone;
- + MRL all: plus MRL at every dim;
- + MRL one: plus MRL at one dim drawn per step (`sample_single_mrl_dim`);
- + MRL k of n: plus MRL at k dims drawn per step (`num_sampled_dims`, k = --k);
- pair all (fused): the app's whole pair loss (contrastive 0.25 + MRL 1.0 at every dim) as the model
  computes it: one `MatryoshkaLoss.losses_at` pass whose full-width term is also the contrastive term.
(--modes picks contenders; contrastive always runs.) The "+ MRL" modes call the two losses separately.
Each is timed forward + backward in two settings: `loss` (the loss alone, its inputs two (B, D) leaf
tensors) and `head` (the loss on top of a fixed projection head: two nn.Linear(--head-in, D) on fixed
(B, --head-in) features, their weight gradients included). A timed region repeats one contender until
--region-s seconds have passed (at least one call); the contenders are alternated region by region
(rotating the order), --repeats times; per-call time is the median over regions, the ratio the median
of the per-repeat ratios to contrastive alone in the same repeat. Both wall time and this process's
CPU time (time.process_time, one thread) are measured: on a shared machine the CPU time is what the
work itself cost, the wall time adds waiting for a core. The sampled modes draw their dims from
the loss's seeded generator, so a region's cost depends on the dims it drew: the mean number of MRL
dims per call is reported beside it.

Part 2, memory. Two processes (torch.multiprocessing, gloo on localhost), global batch N split evenly,
width --mem-dim, one forward + backward of ContrastiveLoss with `gather_distributed` in the default full
mode (every rank builds N x N logits) and with `local_loss` (each rank N/2 x N). Each variant runs in a
fresh pair of processes. Memory is the rise of the process's resident set: Linux's peak-RSS mark
(VmHWM) is reset just before the loss (`echo 5 > /proc/self/clear_refs`), the loss runs, and the peak
is VmHWM minus the RSS before; reported for rank 0 (rank 1 is the same within a page or two). A 2-row
forward + backward runs first, so one-time setup (autograd, gloo buffers) is not counted. Both modes'
loss values are checked equal.

Prints a table last and writes JSON (default outputs/benchmarks/bench_loss.json).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from eg_losses import ContrastiveLoss, ContrastiveLossConfig, MatryoshkaLossConfig, resolve_mrl_dims
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared machine_info
from machine import machine_info

CONTRASTIVE_WEIGHT, MRL_WEIGHT = 0.25, 1.0  # configs/pixmo_alignment.yaml; weights do not change the cost
# "pair all (fused)": the app's whole pair loss as apps/alignment/model.py computes it, contrastive term
# and MRL at every dim from one MatryoshkaLoss.losses_at pass (the full-width term reused, not recomputed)
MODES = ("contrastive", "+ MRL all", "+ MRL one", "+ MRL k of n", "pair all (fused)")


class LossUnderTest:
    """One contender: `step()` runs forward + backward once; `mrl_dims_used` counts MRL dims summed."""

    def __init__(self, mode: str, setting: str, batch: int, dim: int, head_in: int, k: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.contrastive = ContrastiveLoss(ContrastiveLossConfig())
        self.mrl = None
        if mode != "contrastive":
            mrl_cfg = MatryoshkaLossConfig(
                dims=resolve_mrl_dims(None, dim),
                sample_single_mrl_dim=mode == "+ MRL one",
                num_sampled_dims=k if mode == "+ MRL k of n" else 0,
            )
            self.mrl = mrl_cfg.build(self.contrastive, dim)  # shares the temperature, as the app does
        self.setting, self.mode = setting, mode
        if setting == "loss":
            self.a = torch.randn(batch, dim, generator=generator).requires_grad_()
            self.b = torch.randn(batch, dim, generator=generator).requires_grad_()
        else:
            self.features_a = torch.randn(batch, head_in, generator=generator)
            self.features_b = torch.randn(batch, head_in, generator=generator)
            self.head_a, self.head_b = nn.Linear(head_in, dim), nn.Linear(head_in, dim)
        self.mrl_dims_used = 0
        self.calls = 0

    def step(self) -> None:
        if self.setting == "loss":
            a, b = self.a, self.b  # (B, D) each
        else:
            a, b = self.head_a(self.features_a), self.head_b(self.features_b)  # (B, D) each
        if self.mode == "pair all (fused)":
            parts = self.mrl.losses_at(a, b, list(self.mrl.dims))  # the dims end at the full width D
            width = self.mrl.dims[-1]
            loss = CONTRASTIVE_WEIGHT * parts[width] + MRL_WEIGHT * self.mrl.weighted_sum(parts)
            self.mrl_dims_used += len(parts)
        else:
            loss = CONTRASTIVE_WEIGHT * self.contrastive(a, b)
        if self.mrl is not None and self.mode != "pair all (fused)":
            total, parts = self.mrl.forward_with_parts(a, b)
            loss = loss + MRL_WEIGHT * total
            self.mrl_dims_used += len(parts)
        loss.backward()
        self.calls += 1
        for p in [*self.contrastive.parameters(), *self._inputs()]:
            p.grad = None

    def _inputs(self) -> list[torch.Tensor]:
        if self.setting == "loss":
            return [self.a, self.b]
        return [*self.head_a.parameters(), *self.head_b.parameters()]


def timed_region(fn: Callable[[], None], seconds: float) -> tuple[float, float, int]:
    """Call fn until `seconds` have passed (at least once); return (wall s per call, CPU s per call, calls).

    CPU time is this process's (one thread): what the work itself cost, whatever else the machine ran.
    """
    calls = 0
    start, start_cpu = time.perf_counter(), time.process_time()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / calls, (time.process_time() - start_cpu) / calls, calls


def bench_time(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Part 1: per (setting, B, D), every mode alternated region by region; medians and ratios."""
    rows = []
    for setting in args.settings:
        for batch in args.batches:
            for dim in args.dims:
                modes = tuple(m for m in MODES if m == "contrastive" or m in args.modes)
                contenders = {m: LossUnderTest(m, setting, batch, dim, args.head_in, args.k) for m in modes}
                for c in contenders.values():
                    c.step()  # warm-up
                    c.mrl_dims_used = c.calls = 0
                per_call: dict[str, list[float]] = {m: [] for m in modes}
                cpu_per_call: dict[str, list[float]] = {m: [] for m in modes}
                region_s: dict[str, list[float]] = {m: [] for m in modes}
                for repeat in range(args.repeats):
                    order = modes[repeat % len(modes) :] + modes[: repeat % len(modes)]
                    for mode in order:
                        seconds, cpu, calls = timed_region(contenders[mode].step, args.region_s)
                        per_call[mode].append(seconds)
                        cpu_per_call[mode].append(cpu)
                        region_s[mode].append(seconds * calls)
                base, cpu_base = per_call["contrastive"], cpu_per_call["contrastive"]
                for mode in modes:
                    c = contenders[mode]
                    ratios = [t / b for t, b in zip(per_call[mode], base)]
                    cpu_ratios = [t / b for t, b in zip(cpu_per_call[mode], cpu_base)]
                    rows.append(
                        {
                            "setting": setting,
                            "batch": batch,
                            "dim": dim,
                            "mrl_dims": resolve_mrl_dims(None, dim),
                            "mode": mode,
                            "k": args.k if mode == "+ MRL k of n" else None,
                            "ms_per_step": 1000 * statistics.median(per_call[mode]),
                            "ms_per_step_all": [1000 * t for t in per_call[mode]],
                            "ratio": statistics.median(ratios),
                            "ratios": ratios,
                            "cpu_ms_per_step": 1000 * statistics.median(cpu_per_call[mode]),
                            "cpu_ratio": statistics.median(cpu_ratios),
                            "cpu_ratios": cpu_ratios,
                            "mean_mrl_dims": c.mrl_dims_used / c.calls if c.calls else 0.0,
                            "region_s_median": statistics.median(region_s[mode]),
                        }
                    )
                    print({k: v for k, v in rows[-1].items() if not k.endswith("_all")}, flush=True)
    return rows


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _memory_rank(rank: int, world: int, port: int, mode: str, batch: int, dim: int, out: str) -> None:
    """One rank of part 2: the loss forward + backward under gloo, its peak RSS rise written to `out`."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        local = batch // world
        generator = torch.Generator().manual_seed(1234)
        a_all = torch.randn(batch, dim, generator=generator)  # the same global batch on every rank
        b_all = torch.randn(batch, dim, generator=generator)
        a = a_all[rank * local : (rank + 1) * local].clone().requires_grad_()  # (N/W, D)
        b = b_all[rank * local : (rank + 1) * local].clone().requires_grad_()
        del a_all, b_all
        loss_fn = ContrastiveLoss(ContrastiveLossConfig(local_loss=mode == "local_loss"))
        # a 2-row warm-up: first-call setup (autograd, gloo buffers) is not the loss's memory
        loss_fn(a[:2].detach().requires_grad_(), b[:2].detach().requires_grad_()).backward()
        loss_fn.zero_grad(set_to_none=True)
        dist.barrier()
        reset = True
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        except OSError:
            reset = False
        rss_before = _status_kib("VmRSS")
        start = time.perf_counter()
        loss = loss_fn(a, b)
        loss.backward()
        seconds = time.perf_counter() - start
        peak = _status_kib("VmHWM")
        # the global loss: the mean over ranks of each rank's value (local_loss scales its share so)
        value = loss.detach().clone()
        dist.all_reduce(value)
        result = {
            "rank": rank,
            "peak_rise_mib": (peak - rss_before) / 1024,
            "rss_before_mib": rss_before / 1024,
            "hwm_reset": reset,
            "seconds": seconds,
            "global_loss": float(value) / world,
        }
        Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Part 2: full against local-loss logits, each run in a fresh 2-process gloo group, alternated."""
    world = 2
    rows = []
    for batch in args.mem_batches:
        runs: dict[str, list[dict[str, Any]]] = {"full": [], "local_loss": []}
        for repeat in range(args.mem_repeats):
            for mode in ("full", "local_loss") if repeat % 2 == 0 else ("local_loss", "full"):
                with tempfile.TemporaryDirectory() as tmp:
                    outs = [os.path.join(tmp, f"rank{r}.json") for r in range(world)]
                    port = free_port()
                    procs = []
                    ctx = mp.get_context("spawn")
                    for rank in range(world):
                        p = ctx.Process(
                            target=_memory_rank,
                            args=(rank, world, port, mode, batch, args.mem_dim, outs[rank]),
                        )
                        p.start()
                        procs.append(p)
                    for p in procs:
                        p.join()
                    if any(p.exitcode != 0 for p in procs):
                        raise RuntimeError(
                            f"a rank of the {mode} run (N={batch}) failed: {[p.exitcode for p in procs]}"
                        )
                    runs[mode].append(json.loads(Path(outs[0]).read_text()))
        logits_mib = {
            "full": 2 * batch * batch * 4 / 2**20,  # logits_ab and logits_ba, float32, N x N
            "local_loss": 2 * (batch // world) * batch * 4 / 2**20,  # N/W x N
        }
        for mode, results in runs.items():
            rows.append(
                {
                    "global_batch": batch,
                    "dim": args.mem_dim,
                    "world": world,
                    "mode": mode,
                    "peak_rise_mib": statistics.median(r["peak_rise_mib"] for r in results),
                    "peak_rise_mib_all": [r["peak_rise_mib"] for r in results],
                    "seconds": statistics.median(r["seconds"] for r in results),
                    "logits_mib": logits_mib[mode],
                    "global_loss": results[0]["global_loss"],
                    "hwm_reset": all(r["hwm_reset"] for r in results),
                }
            )
            print({k: v for k, v in rows[-1].items() if not k.endswith("_all")}, flush=True)
        full, local = rows[-2]["global_loss"], rows[-1]["global_loss"]
        if abs(full - local) > 1e-4 * max(1.0, abs(full)):
            raise RuntimeError(f"local_loss {local} differs from the full loss {full} at N={batch}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--dims", type=int, nargs="+", default=[1024, 4096], help="embedding widths D")
    parser.add_argument("--settings", nargs="+", default=["loss", "head"], choices=["loss", "head"])
    parser.add_argument("--head-in", type=int, default=1024, help="input width of the fixed projection head")
    parser.add_argument(
        "--modes", nargs="+", default=list(MODES), choices=MODES, help="contenders (contrastive always runs)"
    )
    parser.add_argument("--k", type=int, default=2, help="dims drawn per step in the k-of-n mode")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--region-s", type=float, default=2.0, help="least seconds of one timed region")
    parser.add_argument("--mem-batches", type=int, nargs="*", default=[1024, 4096], help="global batches")
    parser.add_argument("--mem-dim", type=int, default=512)
    parser.add_argument("--mem-repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    parser.add_argument("--out", default="outputs/benchmarks/bench_loss.json")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.dims, args.repeats, args.region_s = [16], [256], 1, 0.0
        args.settings, args.mem_batches, args.mem_dim, args.mem_repeats = ["loss", "head"], [64], 32, 1
        args.head_in = 32
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "machine": machine_info(args.threads),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "time": bench_time(args),
        "memory": bench_memory(args) if args.mem_batches else [],
    }
    report["machine"]["load_average_1min_at_end"] = os.getloadavg()[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    m = report["machine"]
    print(
        f"\nloss benchmark ({m['cpu']}, nproc {m['nproc']}, {args.threads} thread(s), torch {m['torch']}, "
        f"commit {m['commit']}, {m['date']}, load average {m['load_average_1min_at_start']:.1f} -> "
        f"{m['load_average_1min_at_end']:.1f}); JSON: {out}"
    )
    print(
        f"forward+backward, median of {args.repeats} alternated regions of >= {args.region_s:g} s; "
        "ratio to contrastive alone"
    )
    print(
        f"{'setting':<8}{'B':>6}{'D':>6}  {'mode':<16}{'MRL dims/step':>14}{'ms/step':>10}{'ratio':>8}"
        f"{'CPU ms/step':>12}{'CPU ratio':>10}{'region s':>10}"
    )
    for r in report["time"]:
        mode = f"{r['mode']} (k={r['k']})" if r["k"] else r["mode"]
        print(
            f"{r['setting']:<8}{r['batch']:>6}{r['dim']:>6}  {mode:<16}{r['mean_mrl_dims']:>14.2f}"
            f"{r['ms_per_step']:>10.1f}{r['ratio']:>8.3f}{r['cpu_ms_per_step']:>12.1f}{r['cpu_ratio']:>10.3f}"
            f"{r['region_s_median']:>10.2f}"
        )
    if report["memory"]:
        print(
            f"\npeak RSS rise of one loss forward+backward, rank 0 of 2 gloo ranks (median of {args.mem_repeats})"
        )
        print(f"{'N':>6}{'D':>6}  {'mode':<12}{'peak MiB':>10}{'logits MiB':>12}{'s':>8}{'loss':>10}")
        for r in report["memory"]:
            print(
                f"{r['global_batch']:>6}{r['dim']:>6}  {r['mode']:<12}{r['peak_rise_mib']:>10.1f}"
                f"{r['logits_mib']:>12.1f}{r['seconds']:>8.2f}{r['global_loss']:>10.4f}"
            )


if __name__ == "__main__":
    main()
