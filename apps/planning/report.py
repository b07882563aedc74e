"""The plan as text: one table of components, one of GPUs, and the assumptions, as `apps/plan` prints it."""

from __future__ import annotations

from apps.planning.architectures import GPUS
from apps.planning.plan import Plan

GIB = 2**30
MIB = 2**20
KIND_NAMES = {
    "Parameter": "parameters",
    "Buffer": "buffers",
    "Gradient": "gradients",
    "Optstate": "optimizer state",
    "Activation": "activations",
    "Temp": "temporaries",
    "Other": "other",
}


def _bytes(value: float) -> str:
    if value >= GIB:
        return f"{value / GIB:.2f} GiB"
    if value >= MIB:
        return f"{value / MIB:.1f} MiB"
    return f"{value / 1024:.1f} KiB" if value else "0"


def _count(value: int) -> str:
    if value >= 1e9:
        return f"{value / 1e9:.2f} B"
    if value >= 1e6:
        return f"{value / 1e6:.1f} M"
    return f"{value / 1e3:.1f} K" if value >= 1e3 else str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
    )
    return [line(header), line(["-" * w for w in widths]), *[line(r) for r in rows]]


def _inputs(plan: Plan) -> str:
    parts = []
    if "image_size" in plan.inputs:
        parts.append(f"images {plan.inputs['image_size']} px")
    if "n_frames" in plan.inputs:
        parts.append(
            f"audio {plan.inputs['n_frames']} mel frames x {plan.inputs['n_mels']} bins (the full context)"
        )
    if "text_tokens" in plan.inputs:
        what = "captions" if plan.stage == "alignment" else "question + answer"
        parts.append(f"{what} {plan.inputs['text_tokens']} tokens (the longest allowed)")
    return "; ".join(parts)


def format_plan(plan: Plan) -> str:
    """The plan as the lines `apps/plan` prints."""
    gpu = GPUS[plan.gpu]
    head = (
        f"plan: {plan.config} (stage {plan.stage}) on {plan.gpus} x {gpu.name}: per-GPU batch {plan.batch_size}"
        f" x {plan.grad_accum_steps} accumulation, {plan.precision} autocast"
    )
    out = [head, f"inputs (every sample has every modality): {_inputs(plan)}"]
    out += [f"note: {n}" for n in plan.notes]
    rows, total = [], [0] * 6
    for c in plan.components:
        weights = ", ".join(f"{k} {_bytes(v)}" for k, v in sorted(c.bytes_by_dtype.items()) if v) or "-"
        rows.append(
            [
                c.name,
                _count(c.params) if c.params else "-",
                _count(c.trainable) if c.params else "-",
                weights,
                _bytes(c.grad_bytes),
                _bytes(c.optimizer_bytes),
                _bytes(c.activation_bytes),
                f"{c.flops_per_sample / 1e9:.2f}",
            ]
        )
        values = [
            c.params,
            c.trainable,
            sum(c.bytes_by_dtype.values()),
            c.grad_bytes,
            c.optimizer_bytes,
            c.activation_bytes,
        ]
        total = [a + b for a, b in zip(total, values)]
    rows.append(
        [
            "total",
            _count(total[0]),
            _count(total[1]),
            _bytes(total[2]),
            _bytes(total[3]),
            _bytes(total[4]),
            _bytes(total[5]),
            f"{plan.step_flops_per_sample / 1e9:.2f}",
        ]
    )
    out.append("")
    out += _table(
        [
            "component",
            "params",
            "trainable",
            "weights by dtype",
            "grads",
            "optimizer",
            f"activations@{plan.batch_size}",
            "GFLOP/sample",
        ],
        rows,
    )
    kinds = plan.peak_by_kind
    parts = ", ".join(f"{KIND_NAMES.get(k, k)} {_bytes(v)}" for k, v in kinds.items() if v)
    flops = f"model FLOPs per sample: {plan.model_flops_per_sample / 1e9:.1f} GFLOP (forward + backward)"
    if plan.step_flops_per_sample != plan.model_flops_per_sample:
        flops += (
            f"; the step runs {plan.step_flops_per_sample / 1e9:.1f} with gradient checkpointing's recompute"
        )
    out += [
        "",
        f"peak per GPU at batch {plan.batch_size}: {_bytes(sum(kinds.values()))} ({parts})",
        f"memory fit: {_bytes(plan.fit_fixed_bytes)} + {_bytes(plan.fit_bytes_per_sample)} per sample",
        flops,
        "",
    ]
    gpu_rows = []
    for g in plan.gpu_plans:
        largest = (
            f"{g.max_batch} ({_bytes(g.max_batch_peak_bytes)}, {'verified' if g.max_batch_verified else 'fit'})"
            if g.max_batch
            else "none"
        )
        gpu_rows.append(
            [
                g.gpu,
                _bytes(g.memory_bytes),
                _bytes(g.budget_bytes),
                _bytes(g.peak_bytes),
                "yes" if g.fits else "NO",
                largest,
                _duration(g.step_seconds),
                f"{g.samples_per_second:,.0f}",
                _duration(g.epoch_seconds)
                if plan.samples
                else _duration(1e6 / g.samples_per_second if g.samples_per_second else None),
            ]
        )
    epoch = "epoch" if plan.samples else "per 1M samples"
    out += _table(
        [
            "GPU",
            "memory",
            "budget",
            f"peak@{plan.batch_size}",
            "fits",
            "largest batch (peak)",
            f"step @{plan.mfu:.0%} MFU",
            f"samples/s x{plan.gpus}",
            epoch,
        ],
        gpu_rows,
    )
    samples = f"{plan.samples:,} samples in {plan.samples_source}" if plan.samples else plan.samples_source
    reserve = 1 - plan.gpu_plans[0].budget_bytes / plan.gpu_plans[0].memory_bytes
    peaks = ", ".join(f"{g.name} {g.peak_bf16_tflops:g} TFLOPS" for g in GPUS.values())
    assumed = (
        f"assumed: MFU {plan.mfu:.0%} (not measured); budget = memory less {reserve:.0%} (CUDA context,"
        f" workspaces, fragmentation); peak dense bf16 from NVIDIA's datasheets ({peaks})"
    )
    steps = ", ".join(str(m["batch_size"]) for m in plan.measurements)
    measured = (
        "measured: fake tensors on the CPU with CPU autocast (CUDA autocast keeps layer_norm/softmax in fp32);"
        f" {len(plan.measurements)} fake steps at batch {steps}; planned in {plan.seconds:.0f} s"
    )
    out += ["", f"epoch: {samples}", assumed, measured]
    return "\n".join(out)
