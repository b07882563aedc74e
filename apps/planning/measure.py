"""Training steps of a planned model measured by MemTracker and FlopCounterMode's formulas (fake or real).

`measure_steps` runs what eg-train's Trainer runs per optimizer step (autocast forward, loss backward,
gradient clipping, AdamW step, zero_grad), `num_steps` times with a fresh optimizer, and returns the peak
memory by kind (parameters, gradients, optimizer state, activations, temporaries), the activations each
component holds between forward and backward, and the first step's FLOPs, by component and with
gradient checkpointing's recompute apart. The same function measures a real step on the CPU
(benchmarks/bench_plan.py) and a fake one (the plan).

FLOPs are counted with `torch.utils.flop_counter`'s per-op formulas (the ones FlopCounterMode uses) by a
small dispatch mode of our own: FlopCounterMode's module tracker hooks every module output for backward,
and under non-reentrant checkpointing those hooks keep each recomputed block's activations alive until the
end of backward (measured: 57 GiB instead of 20 GiB of peak activations for qa_qwen7b at batch 8), so a plan
counting FLOPs with it would over-state checkpointed memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import torch
from eg_train import TrainerConfig
from eg_train.precision import autocast
from eg_train.schedule import build_optimizer
from torch import nn
from torch.distributed._tools.common_utils import get_untyped_storages
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry
from torch.utils.weak import WeakIdKeyDictionary

ACT, PARAM, GRAD, OPT, TEMP, BUFFER = "Activation", "Parameter", "Gradient", "Optstate", "Temp", "Buffer"


@dataclass
class StepMeasure:
    """One measurement: the peak memory (bytes, by kind), activations and FLOPs by component, wall time."""

    batch_size: int
    peak_bytes: int
    peak_by_kind: dict[str, int]
    activations: dict[str, int]  # component label -> activation bytes it holds between forward and backward
    flops: int  # the first step's FLOPs (forward + backward: matmuls and attention), recompute included
    recompute_flops: int = 0  # of which gradient checkpointing's re-run forwards
    optimizer_bytes: dict[int, int] = field(default_factory=dict)  # id(param) -> its optimizer state bytes
    flops_by_component: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0  # wall time of the measured steps


class _NoHook:
    """A hook handle with nothing to remove."""

    def remove(self) -> None:
        pass


class _Tracker(MemTracker):
    """MemTracker that also remembers which component created each activation, and skips frozen params.

    MemTracker hooks every parameter it meets to see its gradient, and `register_hook` refuses tensors
    that do not require grad (frozen towers); those never get a gradient, so a no-op handle stands in.
    `held_by_component()` sums the activations alive at that moment by the component that created them:
    called between forward and backward, it is what each component keeps for backward (with gradient
    checkpointing, the inputs of the checkpointed blocks).
    """

    def __init__(self, owners: dict[str, str]) -> None:
        super().__init__()
        self._owners = owners  # module path (as the module tracker names it) -> component label
        self._created_by: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def skip_frozen(self, model: nn.Module) -> None:
        for param in model.parameters():
            if not param.requires_grad:
                self._param_to_grad_hook_handles[param] = (_NoHook(), _NoHook())

    def current_component(self) -> str:
        """The component running now; outside every component, the innermost running module's path."""
        parents = self._mod_tracker.parents
        labels = {self._owners[p] for p in parents if p in self._owners}
        if len(labels) == 1:
            return labels.pop()
        inner = max(parents, key=len, default="")
        if not inner or inner == "Global":
            return "inputs"
        return inner.split(".", 1)[1].removeprefix("towers.") if "." in inner else "model"

    def _track(self, reftype: Any, t: torch.Tensor) -> None:
        super()._track(reftype, t)
        if reftype == ACT:
            label = self.current_component()
            for st in get_untyped_storages(t):
                if st not in self._created_by:
                    self._created_by[st] = label

    def _update_peak_stats(self, peak_state: Any) -> None:
        """The device-wide peak only: MemTracker also walks every module seen for per-module peaks after each
        op, which costs minutes on a 7B model and is not used here."""
        for device, snap in self._curr_mem_snap.items():
            if self._peak_mem.get(device, 0) < snap["Total"]:
                self._peak_mem[device] = snap["Total"]
                self._peak_mem_snap[device] = dict(snap)

    def held_by_component(self, device: torch.device) -> dict[str, int]:
        out: dict[str, int] = {}
        for st, (winfo, _) in list(self._WINFO.items()):
            if winfo.reftype == ACT and winfo.device == device:
                label = self._created_by.get(st, "other")
                out[label] = out.get(label, 0) + winfo.mem_consumed
        return out


def _owners(root: nn.Module, components: list[tuple[str, nn.Module]]) -> dict[str, str]:
    """{module path as the module tracker names it: component label}, for every module under a component."""
    root_name = type(root).__name__
    paths: dict[int, list[str]] = {}
    for name, module in root.named_modules(remove_duplicate=False):  # a shared module has several paths
        paths.setdefault(id(module), []).append(f"{root_name}.{name}" if name else root_name)
    owners: dict[str, str] = {}
    for label, module in components:
        for sub in module.modules():
            for path in paths.get(id(sub), []):
                owners[path] = label
    return owners


class StepFlops(TorchDispatchMode):
    """FLOPs of the ops dispatched while active: total, by component (the tracker's current one), and
    the part re-run by gradient checkpointing.

    A module whose forward starts while autograd's engine runs is a checkpointed block recomputing its
    activations; ops until it returns (or stops early, as non-reentrant checkpointing does once it has
    what backward needs) count as recompute. Model FLOPs (what MFU counts) are the total minus these.
    """

    def __init__(self, tracker: _Tracker) -> None:
        super().__init__()
        self.tracker = tracker
        self.total = self.recompute = 0
        self.by_component: dict[str, int] = {}
        self._depth = 0
        self._handles: list[Any] = []

    def _pre(self, module: nn.Module, args: Any) -> None:
        if self._depth or torch._C._current_graph_task_id() != -1:
            self._depth += 1

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._depth:
            self._depth -= 1

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            flops = int(formula(*args, **kwargs, out_val=out))
            self.total += flops
            if self._depth:
                self.recompute += flops
            label = self.tracker.current_component()
            self.by_component[label] = self.by_component.get(label, 0) + flops
        return out

    def __enter__(self) -> Self:
        self._handles = [
            nn.modules.module.register_module_forward_pre_hook(self._pre),
            nn.modules.module.register_module_forward_hook(self._post, always_call=True),
        ]
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        super().__exit__(*exc)


def _warm_optimizer(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    """Create AdamW's state with one step on zero gradients (what a first training step leaves behind)."""
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for p in params:
        p.grad = None


def measure_steps(
    model: nn.Module,
    train: TrainerConfig,
    param_groups: list[dict[str, Any]],
    components: list[tuple[str, nn.Module]],
    make_batch: Callable[[int, int], dict[str, Any]],
    batch_size: int,
    device: torch.device,
    num_steps: int = 1,
    warm_optimizer: bool = True,
    count_flops: bool = True,
) -> StepMeasure:
    """Run `num_steps` training steps of `model` on `make_batch(batch_size, step)` and measure them.

    With `warm_optimizer` the optimizer state is created first by a step on zero gradients, so a single
    measured step already holds it through its forward (as every step after the first does); without it,
    use two steps. FLOPs are those of the first step (forward, backward; the optimizer's are elementwise).
    """
    model.train()
    optimizer = build_optimizer(model, train, param_groups)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    max_norm = train.grad_clip if train.grad_clip > 0 else float("inf")
    tracker = _Tracker(_owners(model, components))
    tracker.skip_frozen(model)
    tracker.track_external(model, optimizer)
    counter = StepFlops(tracker)
    activations: dict[str, int] = {}
    start = time.perf_counter()
    with tracker:
        if warm_optimizer:
            _warm_optimizer(optimizer, params)
        for step in range(num_steps):
            batch = make_batch(batch_size, step)
            counting = count_flops and step == 0
            if counting:
                counter.__enter__()
            with autocast(train.precision, device):
                out = model(batch)
            if step == 0:
                activations = tracker.held_by_component(device)
            out["loss"].float().backward()
            if counting:
                counter.__exit__(None, None, None)
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            optimizer.step()
            model.zero_grad(set_to_none=True)
            del out, batch
            tracker.reset_mod_stats()  # MemTracker keeps per-module stats of one iteration only
    seconds = time.perf_counter() - start
    state_bytes = {
        id(p): sum(t.numel() * t.element_size() for t in optimizer.state[p].values() if torch.is_tensor(t))
        for p in params
        if p in optimizer.state
    }
    peak = tracker.get_tracker_snapshot("peak").get(device, {})
    return StepMeasure(
        batch_size=batch_size,
        peak_bytes=int(peak.get("Total", 0)),
        peak_by_kind={
            str(k.value if hasattr(k, "value") else k): int(v) for k, v in peak.items() if k != "Total"
        },
        activations=activations,
        flops=counter.total,
        recompute_flops=counter.recompute,
        optimizer_bytes=state_bytes,
        flops_by_component=dict(counter.by_component),
        seconds=seconds,
    )
