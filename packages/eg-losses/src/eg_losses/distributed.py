"""Gathering per-rank batches for a contrastive loss, with gradients flowing back through the gather.

The contrastive loss needs every rank's embeddings as negatives. `dist.all_gather` alone cuts the graph;
here the backward sums each gathered block's gradient over all ranks (every rank's loss used it) and
hands each rank the part for its own rows. Local batch sizes may differ between ranks (a short last
batch): rows are padded to the largest local batch and reported through a validity mask.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def distributed_world() -> tuple[int, int]:
    """Return (rank, world_size) of the default process group, or (0, 1) when none is initialized."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward all-reduces (sums) the gradient and keeps this rank's block."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # x (B, ...) with B equal on every rank
        world = dist.get_world_size()
        ctx.rank = dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.stack(parts)  # (W, B, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # grad (W, B, ...)
        # all_reduce instead of reduce_scatter: gloo (the CPU backend) has no reduce_scatter.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank]


def gather_with_grad(x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Gather `x` (B_local, D) and `valid` (B_local,) from every rank of the default group.

    Returns the padded global batch (W * B_max, D) with gradients flowing back to each rank's `x`,
    its validity mask (W * B_max,) with padding rows False, and this rank's row offset in it.
    Every rank must call this the same number of times, in the same order.
    """
    rank, world = distributed_world()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.long, device=x.device))
    max_size = int(torch.stack(sizes).max())
    pad = max_size - x.shape[0]
    if pad:
        x = torch.cat([x, x.new_zeros(pad, *x.shape[1:])])  # (B_max, D)
        valid = torch.cat([valid, valid.new_zeros(pad)])
    # The mask travels as one more column of the same collective (0/1 are exact in any float dtype; its
    # gradient is dropped), so a gather is one all_gather of the data after the one of the sizes.
    packed = torch.cat([x, valid.to(x.dtype)[:, None]], dim=1)  # (B_max, D + 1)
    gathered = _AllGatherWithGrad.apply(packed).flatten(0, 1)  # (W * B_max, D + 1)
    return gathered[:, :-1], gathered[:, -1] > 0.5, rank * max_size
