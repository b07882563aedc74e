"""A config planned at real size: memory per GPU, the largest batch that fits, FLOPs, step and epoch time.

`make_plan` builds the config's model under FakeTensorMode (model.py), measures one training step at the
configured per-GPU batch (measure.py) and fits memory as affine in the batch: what does not grow with it
(parameters, buffers, gradients, optimizer state) plus the activations and temporaries at the peak per
sample. The fit gives each GPU's largest batch; a second fake step at the chosen GPU's largest batch
verifies it (when the peak there differs from the fit, the two measured points refit the line and the
step is repeated, at most three times). Step time is model FLOPs over the GPU's peak dense bf16 FLOPs
at an assumed MFU: an assumption, printed as such.

`model_flops_per_sample(config)` is the model FLOPs of one training sample (forward and backward, without
gradient checkpointing's recompute), for MFU in training logs.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from apps.common.config import ConfigError
from apps.planning import fake, measure
from apps.planning import model as planned_model
from apps.planning.architectures import GPU, GPUS

RESERVE = 0.10  # of each GPU's memory kept for the CUDA context, cuBLAS/NCCL workspaces and fragmentation
MAX_VERIFY = 3
DDP_KIND = "DDP buckets"
DEVICE = torch.device("cpu")  # fake tensors live on the CPU (CUDA autocast needs a GPU); see docs/plan.md


@dataclass
class ComponentPlan:
    """One component's parameters, bytes by dtype, gradients, optimizer state, activations and FLOPs."""

    name: str
    params: int
    trainable: int
    bytes_by_dtype: dict[str, int]
    grad_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    flops_per_sample: int


@dataclass
class GPUPlan:
    """The plan on one GPU kind: peak at the configured batch, the largest batch, time at the MFU."""

    gpu: str
    memory_bytes: int
    budget_bytes: int
    peak_bytes: int  # at the configured per-GPU batch
    fits: bool
    max_batch: int
    max_batch_peak_bytes: int
    max_batch_verified: bool
    step_seconds: float  # one optimizer step at the configured batch (accumulation included)
    samples_per_second: float  # all GPUs (model FLOPs per sample do not depend on the batch)
    epoch_seconds: float | None


@dataclass
class Plan:
    """Everything `apps/plan` prints (and `--json` writes)."""

    config: str
    stage: str
    gpus: int
    gpu: str
    mfu: float
    batch_size: int
    grad_accum_steps: int
    precision: str
    inputs: dict[str, Any]
    components: list[ComponentPlan]
    peak_by_kind: dict[str, int]
    model_flops_per_sample: int
    step_flops_per_sample: int  # recompute included
    fit_fixed_bytes: int
    fit_bytes_per_sample: float
    gpu_plans: list[GPUPlan]
    samples: int | None
    samples_source: str
    notes: list[str] = field(default_factory=list)
    measurements: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return asdict(self)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _component_plans(
    planned: planned_model.PlannedModel, step: measure.StepMeasure, model_flops: int
) -> list[ComponentPlan]:
    rows: list[ComponentPlan] = []
    seen: set[str] = set()
    batch = step.batch_size
    for name, module in planned.components:
        params = list(module.parameters())
        by_dtype: dict[str, int] = {}
        for p in params:
            by_dtype[_dtype_name(p.dtype)] = (
                by_dtype.get(_dtype_name(p.dtype), 0) + p.numel() * p.element_size()
            )
        for b in module.buffers():
            key = f"{_dtype_name(b.dtype)} (buffers)"
            by_dtype[key] = by_dtype.get(key, 0) + b.numel() * b.element_size()
        trainable = [p for p in params if p.requires_grad]
        rows.append(
            ComponentPlan(
                name=name,
                params=sum(p.numel() for p in params),
                trainable=sum(p.numel() for p in trainable),
                bytes_by_dtype=by_dtype,
                grad_bytes=sum(p.numel() * p.element_size() for p in trainable),
                optimizer_bytes=sum(step.optimizer_bytes.get(id(p), 0) for p in trainable),
                activation_bytes=step.activations.get(name, 0),
                flops_per_sample=step.flops_by_component.get(name, 0) // batch,
            )
        )
        seen.add(name)
    for name, held in step.activations.items():  # activations made outside every component (inputs, glue)
        if name not in seen and held:
            rows.append(ComponentPlan(name, 0, 0, {}, 0, 0, held, 0))
    return rows


def _fit(step: measure.StepMeasure) -> tuple[float, float]:
    """(bytes that do not grow with the batch, bytes per sample) from one step's peak by kind."""
    kinds = step.peak_by_kind
    fixed = sum(
        kinds.get(k, 0) for k in (measure.PARAM, measure.BUFFER, measure.GRAD, measure.OPT, "Other", DDP_KIND)
    )
    return float(fixed), (step.peak_bytes - fixed) / step.batch_size


def _largest(fixed: float, per_sample: float, budget: int) -> int:
    if per_sample <= 0:
        return 0
    return max(0, math.floor((budget - fixed) / per_sample))


def shard_samples(cfg: Any) -> tuple[int | None, str]:
    """Training samples per epoch from the shard index (every source of a mixture), or None and why not."""
    from eg_data import load_index

    from apps.common.loaders import train_folders

    total, folders = 0, []
    for _, folder in train_folders(cfg.data.train):
        folders.append(folder)
        try:
            total += sum(s.num_samples for s in load_index(folder, build_if_missing=False, save=False))
        except (ValueError, OSError):
            return None, f"no shards at {folder}"
    return total, ", ".join(folders)


@contextlib.contextmanager
def fake_process_group(world_size: int) -> Iterator[None]:
    """A fake process group of `world_size` ranks in which every rank holds this rank's data (for the
    contrastive loss's all-gather: global-batch logits); nothing when world_size is 1."""
    import torch.distributed as dist

    if world_size <= 1:
        yield
        return
    from torch.testing._internal.distributed.fake_pg import FakeProcessGroup, FakeStore

    options = FakeProcessGroup.Options()
    options.simulate_uniform_ranks = True
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size, pg_options=options)
    try:
        yield
    finally:
        dist.destroy_process_group()


def build_planned(
    cfg: Any, work_dir: Path, stage1_config: str | None, notes: list[str]
) -> planned_model.PlannedModel:
    """The planned model of `cfg` (call under FakeTensorMode)."""
    if getattr(cfg, "stage", "alignment") == "qa":
        stage1 = planned_model.stage1_config_of(cfg, stage1_config, notes)
        return planned_model.build_qa(cfg, stage1, work_dir, notes)
    return planned_model.build_alignment(cfg, work_dir, notes)


def _gpu_plan(
    gpu: GPU,
    gpus: int,
    mfu: float,
    batch: int,
    accum: int,
    peak: int,
    fit: tuple[float, float],
    verified: dict[int, int],
    flops_per_sample: int,
    samples: int | None,
    reserve: float,
) -> GPUPlan:
    memory = int(gpu.memory_gib * 2**30)
    budget = int(memory * (1 - reserve))
    largest = _largest(*fit, budget)
    largest_peak = verified.get(largest, int(fit[0] + fit[1] * largest))
    rate = mfu * gpu.peak_bf16_tflops * 1e12  # FLOP/s per GPU
    per_gpu = rate / flops_per_sample if flops_per_sample else 0.0
    step = batch * accum * flops_per_sample / rate if rate else 0.0
    total = per_gpu * gpus
    return GPUPlan(
        gpu=gpu.name,
        memory_bytes=memory,
        budget_bytes=budget,
        peak_bytes=peak,
        fits=peak <= budget,
        max_batch=largest,
        max_batch_peak_bytes=largest_peak,
        max_batch_verified=largest in verified,
        step_seconds=step,
        samples_per_second=total,
        epoch_seconds=samples / total if samples and total else None,
    )


def make_plan(
    config: str,
    overrides: Sequence[str] = (),
    gpus: int = 1,
    gpu: str = "h100",
    mfu: float = 0.4,
    stage1_config: str | None = None,
    reserve: float = RESERVE,
    max_verify: int = MAX_VERIFY,
) -> Plan:
    """Plan `config` on `gpus` GPUs of kind `gpu` (see the module docstring); at most `max_verify` fake steps
    at the largest batch check the fit (0: the fit alone)."""
    import time

    from apps.common.cli import stage_of

    start = time.perf_counter()
    if gpu not in GPUS:
        raise ConfigError(f"--gpu {gpu!r} is not one of {', '.join(GPUS)}")
    if not 0 < mfu <= 1:
        raise ConfigError(f"--mfu {mfu} must be in (0, 1]")
    if gpus < 1:
        raise ConfigError(f"--gpus {gpus} must be >= 1")
    _, cfg = stage_of(config, overrides)
    notes: list[str] = []
    batch, accum = cfg.data.train.batch_size, cfg.train.grad_accum_steps
    samples, source = shard_samples(cfg)
    mode = fake.fake_mode()
    with tempfile.TemporaryDirectory(prefix="eg-plan-") as work, fake_process_group(gpus):
        with fake.building(mode):
            planned = build_planned(cfg, Path(work), stage1_config, notes)
        extra = 0
        if gpus > 1:  # DDP all-reduces through flat buckets beside .grad (gradient_as_bucket_view is off)
            extra = sum(p.numel() * p.element_size() for p in planned.model.parameters() if p.requires_grad)
            notes.append(
                f"DDP over {gpus} GPUs: + {extra / 2**20:.1f} MiB of gradient buckets (a flat copy of the trainable"
                " gradients, counted analytically); the contrastive all-gather runs for real (a fake process group)"
            )
        with fake.stepping(mode):
            first = _measure(planned, batch, count_flops=True, extra=extra)
            measurements = [first]
            fit = _fit(first)
            verified = {batch: first.peak_bytes}
            target_gpu = GPUS[gpu]
            budget = int(target_gpu.memory_gib * 2**30 * (1 - reserve))
            for _ in range(max_verify):
                largest = _largest(*fit, budget)
                if largest < 1 or largest in verified:
                    break
                step = _measure(planned, largest, count_flops=False, extra=extra)
                measurements.append(step)
                verified[largest] = step.peak_bytes
                fit = _line(measurements)
                if step.peak_bytes <= budget and _largest(*fit, budget) <= largest:
                    break
    largest = _largest(*fit, budget)
    fitting = [b for b, peak in verified.items() if peak <= budget]
    if largest not in verified and fitting and max(fitting) >= 0.99 * largest:
        fit = (verified[max(fitting)] - fit[1] * max(fitting), fit[1])  # the line through the verified point
    model_flops = (first.flops - first.recompute_flops) // batch
    gpu_plans = [
        _gpu_plan(
            GPUS[name],
            gpus,
            mfu,
            batch,
            accum,
            first.peak_bytes,
            fit,
            verified,
            model_flops,
            samples,
            reserve,
        )
        for name in GPUS
    ]
    return Plan(
        config=str(config),
        stage=planned.stage,
        gpus=gpus,
        gpu=gpu,
        mfu=mfu,
        batch_size=batch,
        grad_accum_steps=accum,
        precision=cfg.train.precision,
        inputs=planned.inputs,
        components=_component_plans(planned, first, model_flops),
        peak_by_kind=first.peak_by_kind,
        model_flops_per_sample=model_flops,
        step_flops_per_sample=first.flops // batch,
        fit_fixed_bytes=int(fit[0]),
        fit_bytes_per_sample=fit[1],
        gpu_plans=gpu_plans,
        samples=samples,
        samples_source=source,
        notes=notes,
        measurements=[
            {"batch_size": m.batch_size, "peak_bytes": m.peak_bytes, "seconds": round(m.seconds, 2)}
            for m in measurements
        ],
        seconds=time.perf_counter() - start,
    )


def _line(steps: list[measure.StepMeasure]) -> tuple[float, float]:
    """The affine fit through the two most recent measured points (or the one-step fit)."""
    if len(steps) < 2 or steps[-1].batch_size == steps[-2].batch_size:
        return _fit(steps[-1])
    a, b = steps[-2], steps[-1]
    slope = (b.peak_bytes - a.peak_bytes) / (b.batch_size - a.batch_size)
    return a.peak_bytes - slope * a.batch_size, slope


def _measure(
    planned: planned_model.PlannedModel, batch: int, count_flops: bool, extra: int = 0
) -> measure.StepMeasure:
    """One fake step at `batch`; `extra` bytes (DDP's gradient buckets) are added to its peak."""
    step = measure.measure_steps(
        planned.model,
        planned.train,
        planned.param_groups,
        planned.components,
        lambda size, step: planned_model.make_batch(planned, size, step),
        batch,
        DEVICE,
        count_flops=count_flops,
    )
    if extra:
        step.peak_bytes += extra
        step.peak_by_kind[DDP_KIND] = extra
    return step


def model_flops_per_sample(
    config: str, overrides: Sequence[str] = (), stage1_config: str | None = None
) -> int:
    """Model FLOPs of one training sample of `config` (forward + backward, no recompute), at the configured
    per-GPU batch and the longest inputs (see apps/planning/model.py): for MFU in training logs."""
    from apps.common.cli import stage_of

    _, cfg = stage_of(config, overrides)
    mode = fake.fake_mode()
    with tempfile.TemporaryDirectory(prefix="eg-plan-") as work:
        with fake.building(mode):
            planned = build_planned(cfg, Path(work), stage1_config, [])
        with fake.stepping(mode):
            step = _measure(planned, cfg.data.train.batch_size, count_flops=True)
    return (step.flops - step.recompute_flops) // step.batch_size
