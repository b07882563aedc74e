"""MatryoshkaLoss: weighted sum of per-dim losses, dim sampling modes, reproducibility, invalid dims."""

import io
import math

import pytest
import torch
import torch.nn.functional as F
from eg_losses import (
    DEFAULT_MRL_DIMS,
    ContrastiveLoss,
    ContrastiveLossConfig,
    LossError,
    MatryoshkaLoss,
    MatryoshkaLossConfig,
    resolve_mrl_dims,
)


def _reference_infonce(a: torch.Tensor, b: torch.Tensor, scale: float) -> float:
    """InfoNCE written out loop by loop, independent of the library code."""
    a = [row / row.norm() for row in a.double()]
    b = [row / row.norm() for row in b.double()]
    n = len(a)
    total = 0.0
    for i in range(n):
        row = [scale * float(a[i] @ b[j]) for j in range(n)]
        col = [scale * float(b[i] @ a[j]) for j in range(n)]
        total += -row[i] + math.log(sum(math.exp(x) for x in row))
        total += -col[i] + math.log(sum(math.exp(x) for x in col))
    return total / (2 * n)


def test_all_dims_is_weighted_sum_of_per_dim_losses():
    torch.manual_seed(0)
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    inner = ContrastiveLoss(ContrastiveLossConfig(temperature=0.25, learnable_temperature=False))
    mrl = MatryoshkaLoss(inner, 8, MatryoshkaLossConfig(dims=[2, 4, 8], weights=[1.0, 0.5, 2.0]))
    total, parts = mrl.forward_with_parts(a, b)
    assert sorted(parts) == [2, 4, 8]
    by_hand = {d: _reference_infonce(a[:, :d], b[:, :d], 4.0) for d in (2, 4, 8)}
    for d in (2, 4, 8):
        assert parts[d].item() == pytest.approx(by_hand[d], abs=1e-5)
    assert total.item() == pytest.approx(by_hand[2] + 0.5 * by_hand[4] + 2.0 * by_hand[8], abs=1e-5)
    assert mrl(a, b).item() == pytest.approx(total.item(), abs=1e-6)


def test_truncation_renormalizes_before_a_generic_loss():
    seen = []

    def norms(a, b):
        seen.append((a.norm(dim=-1), b.norm(dim=-1)))
        return (a * b).sum()

    mrl = MatryoshkaLoss(norms, 6, MatryoshkaLossConfig(dims=[3, 6]))
    a, b = torch.randn(2, 6), torch.randn(2, 6)
    _, parts = mrl.forward_with_parts(a, b)
    for na, nb in seen:
        assert torch.allclose(na, torch.ones(2)) and torch.allclose(nb, torch.ones(2))
    expected = (F.normalize(a[:, :3], dim=-1) * F.normalize(b[:, :3], dim=-1)).sum()
    assert parts[3].item() == pytest.approx(expected.item(), abs=1e-6)


def test_valid_mask_and_temperature_pass_through():
    mrl = MatryoshkaLoss(ContrastiveLoss(), 8, MatryoshkaLossConfig(dims=[4, 8]))
    assert [n for n, _ in mrl.named_parameters()] == ["loss.log_logit_scale"]
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    valid = torch.tensor([True, True, False, True])
    masked = mrl(a, b, valid=valid)
    assert masked.item() == pytest.approx(mrl(a[valid], b[valid]).item(), rel=1e-6)
    masked.backward()
    assert mrl.loss.log_logit_scale.grad.abs().item() > 0


def test_default_dims_are_capped_at_the_embedding_dim():
    assert resolve_mrl_dims(None, 4096) == DEFAULT_MRL_DIMS == [128, 256, 512, 1024, 2048, 4096]
    assert resolve_mrl_dims(None, 768) == [128, 256, 512, 768]
    assert resolve_mrl_dims(None, 64) == [64]
    assert MatryoshkaLoss(ContrastiveLoss(), 512).dims == [128, 256, 512]


def test_single_dim_mode_visits_every_dim_reproducibly():
    def draws(seed):
        mrl = MatryoshkaLoss(
            ContrastiveLoss(),
            16,
            MatryoshkaLossConfig(dims=[2, 4, 8, 16], sample_single_mrl_dim=True, seed=seed),
        )
        return [tuple(mrl.select_dims()) for _ in range(200)]

    first = draws(7)
    assert all(len(d) == 1 for d in first)
    counts = {d: first.count((d,)) for d in (2, 4, 8, 16)}
    assert all(c >= 25 for c in counts.values()), counts  # ~50 each expected
    assert draws(7) == first
    assert draws(8) != first

    mrl = MatryoshkaLoss(
        ContrastiveLoss(), 8, MatryoshkaLossConfig(dims=[2, 4, 8], sample_single_mrl_dim=True, seed=1)
    )
    _, parts = mrl.forward_with_parts(torch.randn(3, 8), torch.randn(3, 8))
    assert len(parts) == 1


def test_k_random_dims_are_distinct_sorted_and_cover_all():
    mrl = MatryoshkaLoss(
        ContrastiveLoss(), 16, MatryoshkaLossConfig(dims=[2, 4, 8, 16], num_sampled_dims=2, seed=3)
    )
    seen = set()
    for _ in range(100):
        dims = mrl.select_dims()
        assert len(dims) == 2 and dims == sorted(set(dims))
        seen.update(dims)
    assert seen == {2, 4, 8, 16}


def test_generator_state_travels_in_state_dict():
    config = MatryoshkaLossConfig(dims=[2, 4, 8, 16], sample_single_mrl_dim=True, seed=5)
    run = MatryoshkaLoss(ContrastiveLoss(), 16, config)
    for _ in range(10):
        run.select_dims()
    buffer = io.BytesIO()
    torch.save(run.state_dict(), buffer)
    expected = [run.select_dims() for _ in range(20)]

    resumed = MatryoshkaLoss(ContrastiveLoss(), 16, config)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert [resumed.select_dims() for _ in range(20)] == expected


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dims": [4, 2]}, "dims must be increasing, each dim listed once; got [4, 2]"),
        ({"dims": [2, 2, 4]}, "dims must be increasing, each dim listed once; got [2, 2, 4]"),
        ({"dims": [0, 4]}, "dims must all be integers >= 1, got [0, 4]"),
        ({"dims": []}, "dims is empty; list at least one dim, or leave it unset (null) for the defaults"),
        ({"dims": [2, 4], "weights": [1.0]}, "weights has 1 entries for 2 dims; give one weight per dim"),
        ({"dims": [2, 4], "weights": [1.0, -1.0]}, "weights must all be >= 0, got [1.0, -1.0]"),
        ({"num_sampled_dims": -1}, "num_sampled_dims must be >= 0 (0 = every dim), got -1"),
        (
            {"dims": [2, 4], "num_sampled_dims": 3},
            "num_sampled_dims must be within 0..2 (the number of dims), got 3",
        ),
        (
            {"num_sampled_dims": 2, "sample_single_mrl_dim": True},
            "num_sampled_dims is 2 and sample_single_mrl_dim is set; choose one of the two",
        ),
    ],
)
def test_bad_config_is_refused_at_construction_naming_the_key(changes, message):
    with pytest.raises(LossError) as error:
        MatryoshkaLossConfig(**changes)
    assert str(error.value) == message


def test_checks_that_need_the_embedding_dim_run_at_build():
    with pytest.raises(LossError, match=r"^dims \[4, 16\] go above the embedding dim 8"):
        MatryoshkaLossConfig(dims=[4, 16]).build(ContrastiveLoss(), 8)
    with pytest.raises(LossError, match=r"^dims \[32, 64, 256\] go above the embedding dim 128"):
        resolve_mrl_dims([32, 64, 256], 128)  # what an app checks at config load
    with pytest.raises(LossError, match="^weights has 3 entries for 1 dims"):  # defaults below 64: [64]
        MatryoshkaLossConfig(weights=[1.0, 1.0, 1.0]).build(ContrastiveLoss(), 64)
    with pytest.raises(LossError, match="^num_sampled_dims must be within 0..1"):
        MatryoshkaLossConfig(num_sampled_dims=2).build(ContrastiveLoss(), 64)
    with pytest.raises(LossError, match="^embed_dim must be >= 1, got 0"):
        resolve_mrl_dims(None, 0)


def test_defaults_and_missing_values_are_accepted_and_build_matches_the_constructor():
    MatryoshkaLossConfig(dims="???", weights="???", num_sampled_dims="???")
    config = MatryoshkaLossConfig(dims=[2, 4, 8], sample_single_mrl_dim=True, seed=3)
    built = config.build(ContrastiveLoss(), 8)
    direct = MatryoshkaLoss(ContrastiveLoss(), 8, config)
    assert built.dims == direct.dims == [2, 4, 8] and built.weights == [1.0, 1.0, 1.0]
    assert [built.select_dims() for _ in range(10)] == [direct.select_dims() for _ in range(10)]
    assert MatryoshkaLossConfig().build(ContrastiveLoss(), 512).dims == [128, 256, 512]


def test_wrong_embedding_width_raises():
    mrl = MatryoshkaLoss(ContrastiveLoss(), 8, MatryoshkaLossConfig(dims=[4, 8]))
    with pytest.raises(LossError, match="embed_dim 8"):
        mrl(torch.randn(2, 6), torch.randn(2, 6))
