"""One training step without weights: PyTorch's FakeTensorMode, MemTracker and FlopCounterMode around it.

Under `FakeTensorMode` every tensor has a shape, a dtype and a device but no storage, so a model of any size
is built (by the apps' own builders: open_clip, whisper, transformers, sentence-transformers, peft code)
and stepped in seconds: `MemTracker` (torch.distributed._tools) adds up the bytes each tensor would hold,
by kind (parameter, gradient, activation, optimizer state, temporary), and `FlopCounterMode` counts the
matmul and attention FLOPs of every op, forward and backward.

Two things stand between the real training code and fake tensors, and this module handles both:
- Control flow on values (`bool(mask.all())`, `int(positions.max())`, boolean indexing): a fake tensor has
  no value. The masks, token ids and positions are small, so `RealSmallTensors` computes every op whose
  inputs are all real tensors (and every small factory) for real; only the large tensors (images, log-mels,
  weights, activations) are fake. Ops mixing both give fake results.
- `nn.Module.to()` on a module built under fake mode: torch memoizes each fake result under a weak
  reference, which `torch.utils.swap_tensors` (what `Module._apply` uses for fake parameters) refuses.
  Results are not memoized here (`_fresh_fake_outputs`); conversions of real tensors still are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

SMALL_NUMEL = 1 << 20  # factories up to this many elements are real (masks, ids, positions, (B, D) rows)


class RealSmallTensors(TorchDispatchMode):
    """Above a FakeTensorMode: ops on real tensors only, and small factories, run for real.

    A factory (no tensor input: `torch.ones`, `arange`, `rand`) is first run fake to learn its size; when
    it has at most `SMALL_NUMEL` elements it is run again for real, so values that decide control flow
    exist. Anything touching a fake tensor stays fake.
    """

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _INDEXING and len(args) > 1:
            args = (args[0], _long_indices(args[1]), *args[2:])
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if any(isinstance(t, FakeTensor) for t in tensors):
            return func(*args, **kwargs)
        if tensors:  # every input is real
            with unset_fake_temporarily():
                return func(*args, **kwargs)
        out = func(*args, **kwargs)  # a factory: fake first, to see how large it is
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if outs and all(t.numel() <= SMALL_NUMEL and t.device.type != "meta" for t in outs):
            with unset_fake_temporarily():
                return func(*args, **kwargs)
        return out


_INDEXING = {
    torch.ops.aten.index.Tensor,
    torch.ops.aten.index_put.default,
    torch.ops.aten.index_put_.default,
    torch.ops.aten._index_put_impl_.default,
}


def _long_indices(indices: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Real boolean masks among `indices` as the long indices of their True entries (`x[mask]` on a fake x
    needs the mask's nonzero, which a fake tensor cannot give; a real mask can)."""
    out: list[torch.Tensor | None] = []
    for index in indices:
        if (
            index is not None
            and index.dtype in (torch.bool, torch.uint8)
            and not isinstance(index, FakeTensor)
        ):
            with unset_fake_temporarily():
                out.extend(index.nonzero().unbind(1))
        else:
            out.append(index)
    return out


def _fresh_fake_outputs(mode: FakeTensorMode) -> None:
    """Wrap op results in new FakeTensors without memoizing them (see the module docstring)."""

    def from_meta_and_device(
        fake_mode: FakeTensorMode,
        t: torch.Tensor,
        device: torch.device,
        pytype: Any = None,
        dispatch_keys: Any = None,
    ) -> FakeTensor:
        return FakeTensor(fake_mode, t, device, pytype=pytype, dispatch_keys=dispatch_keys)

    mode.fake_tensor_converter.from_meta_and_device = from_meta_and_device  # type: ignore[method-assign]


def fake_mode() -> FakeTensorMode:
    """A FakeTensorMode for building and stepping a model: real inputs allowed (they become fake)."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    _fresh_fake_outputs(mode)
    return mode


_LIFTS = {torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default}


class _BuildMode(TorchDispatchMode):
    """While building: tensors made from Python data stay real, and a fake boolean asked for its value is
    False.

    `torch.tensor([0.3, 0.3])` (a module's constants, e.g. the QA model's modality dropout rates) keeps its
    values, since the step may branch on them; weights come from factories and stay fake. Initialization
    that inspects values (nn.init.trunc_normal_ redraws `while mask.any()`) has none under fake mode, and
    "nothing to redraw" ends such loops. Only the build sees this: a training step that branches on a fake
    value is an error.
    """

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _LIFTS and not isinstance(args[0], FakeTensor):
            with unset_fake_temporarily():
                return func(*args, **kwargs)
        if func is torch.ops.aten._local_scalar_dense.default:
            if not isinstance(args[0], FakeTensor):  # `.item()` of a real constant (trunc_normal_'s bounds)
                with unset_fake_temporarily():
                    return func(*args, **kwargs)
            if args[0].dtype == torch.bool:
                return False
        return func(*args, **kwargs)


@contextlib.contextmanager
def building(mode: FakeTensorMode) -> Iterator[None]:
    """Inside `mode`, for building a model whose initialization may ask a fake boolean (see _BuildMode)."""
    with mode, _BuildMode():
        yield


@contextlib.contextmanager
def stepping(mode: FakeTensorMode) -> Iterator[None]:
    """Inside `mode`, with small real tensors computed for real (for the training step, not the build)."""
    with mode, RealSmallTensors():
        yield
