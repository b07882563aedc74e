"""The fused Matryoshka contrastive pass against eg-losses 0.2's per-dim formula: losses and every gradient.

`MatryoshkaLoss` wrapping a `ContrastiveLoss` scores its dims through `ContrastiveLoss.nested_losses` (one
pass over the width); `ContrastiveLoss.forward` is its one-width case. Both are compared, tensor by tensor,
with the 0.2 computation written out in eg_losses_reference.py (two matmuls per dim, -inf masks,
cross-entropy), on the settings the configs use: every dim, one drawn, k drawn, text-dropout masks, the
learnable temperature (also at its cap). Tolerance 1e-5 relative (float32 sums in another order).
"""

import math
import sys
from pathlib import Path

import pytest
import torch
from eg_losses import ContrastiveLoss, ContrastiveLossConfig, LossError, MatryoshkaLoss, MatryoshkaLossConfig

sys.path.insert(0, str(Path(__file__).parent))
from eg_losses_reference import assert_close_relative, reference_infonce, reference_mrl

MODES = {
    "all": {},
    "one": {"sample_single_mrl_dim": True},
    "k2": {"num_sampled_dims": 2},
}
MASKS = {
    "none": None,
    "dropout": [True, True, False, True, True, True, False, True, True, True, True, False, True],
    "one_left": [False] * 12 + [True],
    "empty": [False] * 13,
}


def _inputs(seed: int, n: int = 13, width: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(n, width, generator=generator, requires_grad=True)  # (B, D)
    b = torch.randn(n, width, generator=generator, requires_grad=True)
    return a, b


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("mode", MODES)
def test_fused_matryoshka_equals_the_per_dim_formula(mode, mask):
    dims, weights = [8, 16, 40, 64], [0.5, 1.0, 2.0, 0.25]
    config = MatryoshkaLossConfig(dims=dims, weights=weights, seed=3, **MODES[mode])
    fused = config.build(ContrastiveLoss(), 64)
    draws = MatryoshkaLoss(ContrastiveLoss(), 64, config)  # the same seed: the same dims drawn
    valid = None if MASKS[mask] is None else torch.tensor(MASKS[mask])
    for step in range(3):  # the sampled modes draw other dims each step
        a, b = _inputs(step)
        total, parts = fused.forward_with_parts(a, b, valid=valid)
        total.backward()
        scale = draws.loss.log_logit_scale
        ref_a, ref_b = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
        mask_ref = torch.ones(13, dtype=torch.bool) if valid is None else valid
        ref_total, ref_parts = reference_mrl(
            ref_a, ref_b, mask_ref, scale.exp(), draws.select_dims(), dict(zip(dims, weights))
        )
        ref_total.backward()
        assert sorted(parts) == sorted(ref_parts)
        for d in parts:
            assert_close_relative(parts[d].detach(), ref_parts[d].detach())
        assert_close_relative(total.detach(), ref_total.detach())
        if mask == "empty":  # nothing to score: a zero that reaches every input with zero gradients
            assert total.item() == 0 and a.grad is not None and a.grad.abs().sum() == 0
            continue
        assert_close_relative(a.grad, ref_a.grad)
        assert_close_relative(b.grad, ref_b.grad)
        assert_close_relative(fused.loss.log_logit_scale.grad, scale.grad)
        if valid is not None:
            assert a.grad[~valid].abs().sum() == 0 and b.grad[~valid].abs().sum() == 0
        fused.loss.log_logit_scale.grad = scale.grad = None


@pytest.mark.parametrize("learnable", [True, False])
def test_contrastive_forward_equals_the_formula_also_at_the_temperature_cap(learnable):
    loss_fn = ContrastiveLoss(ContrastiveLossConfig(temperature=0.2, learnable_temperature=learnable))
    if learnable:
        loss_fn.log_logit_scale.data.fill_(math.log(150.0))  # above the cap 100: clamped in forward
    a, b = _inputs(7, n=9, width=24)
    valid = torch.tensor([True, False, True, True, True, True, False, True, True])
    loss = loss_fn(a, b, valid=valid)
    loss.backward()
    scale = torch.tensor(math.log(100.0 if learnable else 5.0), requires_grad=True)
    ref_a, ref_b = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    ref = reference_infonce(ref_a, ref_b, valid, scale.exp())
    ref.backward()
    assert_close_relative(loss.detach(), ref.detach())
    assert_close_relative(a.grad, ref_a.grad)
    assert_close_relative(b.grad, ref_b.grad)
    if learnable:
        assert_close_relative(loss_fn.log_logit_scale.grad, scale.grad)


def test_zero_rows_and_a_short_prefix_stay_finite():
    # a row of zeros (a modality absent from a sample: the app fills zeros) is masked out, and must not
    # turn the gradients into NaN through its zero norm; a prefix of width 1 is allowed
    a, b = _inputs(2, n=6, width=16)
    a.data[2] = 0.0
    valid = torch.tensor([True, True, False, True, True, True])
    mrl = MatryoshkaLossConfig(dims=[1, 4, 16]).build(ContrastiveLoss(), 16)
    total = mrl(a, b, valid=valid)
    total.backward()
    ref_a, ref_b = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    ref_total, _ = reference_mrl(
        ref_a, ref_b, valid, torch.tensor(1 / 0.07), [1, 4, 16], dict.fromkeys([1, 4, 16], 1.0)
    )
    ref_total.backward()
    assert torch.isfinite(a.grad).all() and a.grad[2].abs().sum() == 0
    assert_close_relative(total.detach(), ref_total.detach())
    assert_close_relative(a.grad, ref_a.grad)


def test_losses_at_any_dims_and_the_path_taken():
    a, b = _inputs(4, n=8, width=32)
    contrastive = ContrastiveLoss()
    mrl = MatryoshkaLossConfig(dims=[8, 16]).build(contrastive, 32)
    # a width outside `dims` (the full-width contrastive term beside MRL) comes from the same pass
    parts = mrl.losses_at(a, b, [32, 8, 16])
    assert list(parts) == [8, 16, 32]
    assert_close_relative(parts[32].detach(), contrastive(a, b).detach())
    # any other wrapped loss keeps the per-dim loop, called once per dim on re-normalized prefixes
    calls = []

    def generic(x, y):
        calls.append(x.shape[1])
        return contrastive(x, y)

    looped = MatryoshkaLossConfig(dims=[8, 16]).build(generic, 32).losses_at(a, b, [8, 16, 32])
    assert calls == [8, 16, 32]
    for d in (8, 16, 32):
        assert_close_relative(looped[d].detach(), parts[d].detach())
    with pytest.raises(LossError, match=r"nested_losses needs increasing dims within 1..32, got \[8, 64\]"):
        contrastive.nested_losses(a, b, [8, 64])
