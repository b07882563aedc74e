"""ContrastiveLoss against hand computations: the 3x3 example, masks, temperature gradient and clamp."""

import math

import pytest
import torch
from eg_losses import ContrastiveLoss, ContrastiveLossConfig, LossError

A = torch.eye(3)
B = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]])
# cos(a_i, b_j) = B[j, i]: S = [[1, 0, .6], [0, 1, .8], [0, 0, 0]]


def _hand_loss_3x3(scale: float) -> float:
    e = math.exp
    s = scale
    a_to_b = [
        -math.log(e(s) / (e(s) + 1 + e(0.6 * s))),
        -math.log(e(s) / (1 + e(s) + e(0.8 * s))),
        -math.log(1 / 3),
    ]
    b_to_a = [
        -math.log(e(s) / (e(s) + 2)),
        -math.log(e(s) / (e(s) + 2)),
        -math.log(1 / (e(0.6 * s) + e(0.8 * s) + 1)),
    ]
    return (sum(a_to_b) / 3 + sum(b_to_a) / 3) / 2


def test_matches_hand_computation_3x3_and_normalizes_inside():
    loss_fn = ContrastiveLoss(ContrastiveLossConfig(temperature=0.5, learnable_temperature=False))
    expected = _hand_loss_3x3(2.0)
    assert loss_fn(A, B).item() == pytest.approx(expected, abs=1e-6)
    assert loss_fn(3.0 * A, 0.25 * B).item() == pytest.approx(expected, abs=1e-6)
    assert list(loss_fn.parameters()) == []  # fixed temperature: nothing to train


def test_learnable_temperature_starts_at_007_and_gets_a_gradient():
    loss_fn = ContrastiveLoss()
    assert loss_fn.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-6)
    loss = loss_fn(A, B)
    assert loss.item() == pytest.approx(_hand_loss_3x3(1 / 0.07), abs=1e-5)
    loss.backward()
    grad = loss_fn.log_logit_scale.grad
    assert grad is not None and grad.abs().item() > 1e-6
    # d loss / d log_scale = scale * d loss / d scale, checked by a central difference.
    h = 1e-3
    s = 1 / 0.07
    numeric = s * (_hand_loss_3x3(s + h) - _hand_loss_3x3(s - h)) / (2 * h)
    assert grad.item() == pytest.approx(numeric, rel=1e-3)


def test_logit_scale_is_clamped_at_max():
    loss_fn = ContrastiveLoss()
    with torch.no_grad():
        loss_fn.log_logit_scale.fill_(math.log(1000.0))
    assert loss_fn.logit_scale.item() == pytest.approx(100.0)
    loss = loss_fn(A, B)
    assert loss.item() == pytest.approx(_hand_loss_3x3(100.0), abs=1e-5)
    assert loss_fn.log_logit_scale.item() == pytest.approx(math.log(100.0))  # the parameter itself
    loss.backward()
    assert loss_fn.log_logit_scale.grad.abs().item() > 0  # no dead gradient at the cap


def test_invalid_rows_are_neither_positives_nor_negatives():
    torch.manual_seed(0)
    a = torch.randn(5, 4, requires_grad=True)
    b = torch.randn(5, 4, requires_grad=True)
    valid = torch.tensor([True, False, True, True, False])
    loss_fn = ContrastiveLoss(ContrastiveLossConfig(learnable_temperature=False, temperature=0.2))
    masked = loss_fn(a, b, valid=valid)
    kept = loss_fn(a[valid], b[valid])
    assert masked.item() == pytest.approx(kept.item(), abs=1e-6)
    masked.backward()
    assert torch.all(a.grad[~valid] == 0) and torch.all(b.grad[~valid] == 0)
    assert a.grad[valid].abs().sum() > 0


def test_no_valid_rows_gives_zero_connected_to_inputs():
    a = torch.randn(3, 4, requires_grad=True)
    loss_fn = ContrastiveLoss()
    loss = loss_fn(a, torch.randn(3, 4), valid=torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert a.grad is not None and loss_fn.log_logit_scale.grad is not None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"temperature": 0}, "temperature must be > 0, got 0.0"),
        ({"temperature": -0.5}, "temperature must be > 0, got -0.5"),
        ({"max_logit_scale": -1.0}, "max_logit_scale must be > 0, got -1.0"),
        (
            {"temperature": 0.001},  # scale 1000 above the cap of 100
            (
                "temperature 0.001 gives a logit scale of 1000, above max_logit_scale 100.0; "
                "raise the temperature or the cap"
            ),
        ),
    ],
)
def test_bad_config_is_refused_at_construction_naming_the_key(changes, message):
    with pytest.raises(LossError) as error:
        ContrastiveLossConfig(**changes)
    assert str(error.value) == message


def test_default_and_missing_values_are_accepted_and_build_builds():
    assert ContrastiveLossConfig().build().logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-6)
    ContrastiveLossConfig(temperature="???", max_logit_scale="???")  # omegaconf.MISSING: checked later
    fixed = ContrastiveLossConfig(temperature=0.5, learnable_temperature=False).build()
    assert isinstance(fixed, ContrastiveLoss) and list(fixed.parameters()) == []


def test_bad_inputs_raise_loss_error():
    loss_fn = ContrastiveLoss()
    with pytest.raises(LossError):
        loss_fn(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(LossError, match="valid"):
        loss_fn(torch.randn(3, 4), torch.randn(3, 4), valid=torch.ones(3))
