"""The losses as eg-losses 0.2 computed them, written out independently, for the tests to compare against.

InfoNCE: normalize, two matmuls (a->b and b->a), invalid columns masked with -inf, invalid rows dropped,
cross-entropy summed and divided by twice the number of valid rows. Matryoshka: that loss on each prefix,
re-normalized, weighted. One process holding the whole batch; no distributed code.
"""

import torch
import torch.nn.functional as F


def reference_infonce(
    a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """The symmetric InfoNCE of pairs (a[i], b[i]), (B, D) each, over the rows where `valid` (B,) is True."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    labels = torch.arange(a.shape[0])
    col_mask = ~valid[None, :]
    logits_ab = (scale * a @ b.T).masked_fill(col_mask, float("-inf"))  # (B, B)
    logits_ba = (scale * b @ a.T).masked_fill(col_mask, float("-inf"))  # (B, B)
    loss_ab = F.cross_entropy(logits_ab[valid], labels[valid], reduction="sum")
    loss_ba = F.cross_entropy(logits_ba[valid], labels[valid], reduction="sum")
    return (loss_ab + loss_ba) / (2 * valid.sum().clamp(min=1))


def reference_mrl(
    a: torch.Tensor,
    b: torch.Tensor,
    valid: torch.Tensor,
    scale: torch.Tensor,
    dims: list[int],
    weight_of: dict[int, float],
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """(weighted sum, {dim: loss}) of reference_infonce on the re-normalized prefixes a[:, :d], b[:, :d]."""
    parts = {
        d: reference_infonce(F.normalize(a[:, :d], dim=-1), F.normalize(b[:, :d], dim=-1), valid, scale)
        for d in dims
    }
    total = a.new_zeros(())
    for d in dims:
        total = total + weight_of[d] * parts[d]
    return total, parts


def assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """Every element within rel x (its own size + the largest element's size) of the expected tensor."""
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * float(expected.abs().max()))
