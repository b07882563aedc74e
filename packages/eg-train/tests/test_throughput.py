"""MFU in the logs: FlopCounterMode's count against a hand count, and the mfu column against its formula."""

from __future__ import annotations

import eg_train
import pytest
import torch
from eg_train import throughput
from eg_train.throughput import table_peak, train_step_flops
from torch import nn


def test_train_step_flops_equals_a_hand_count_and_keeps_grads():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, batch: dict) -> dict:
            return {"loss": self.net(batch["x"]).square().mean()}

    model = Model()
    x = torch.randn(3, 8)  # (B, D_in), no grad: the first layer's input gradient is never computed
    before = [p.grad for p in model.parameters()]
    forward = 2 * 3 * 8 * 16 + 2 * 3 * 16 * 4
    backward = 2 * 3 * 8 * 16 + 2 * (2 * 3 * 16 * 4)  # layer 1: weight grad; layer 2: weight + input grad
    assert train_step_flops(model, {"x": x}) == forward + backward
    assert [p.grad for p in model.parameters()] == before  # the measurement leaves no gradients behind


def test_peak_table_matches_device_names():
    assert table_peak("NVIDIA H100 80GB HBM3") == 989.4e12
    assert table_peak("NVIDIA H100 PCIe") == 756.0e12
    assert table_peak("NVIDIA H200") == 989.4e12
    assert table_peak("NVIDIA A100-SXM4-80GB") == 312.0e12
    assert table_peak("Tesla T4") is None


def test_mfu_column_is_flops_times_sps_over_peak(toy, tmp_path, capsys):
    torch.manual_seed(0)
    flops = 1234.0
    cfg = toy.make_config(tmp_path, max_steps=4, log_every=1)
    eg_train.Trainer(toy.ToyModel(), cfg, toy.ToyData(), flops_per_sample=flops).fit()
    peak = throughput.measured_matmul_peak("cpu", torch.float32)  # cached: the figure the run used
    assert f"mfu against {peak / 1e12:.3g} TFLOP/s (measured fp32 matmul on cpu)" in capsys.readouterr().out
    rows = toy.read_rows(tmp_path / "outputs/metrics.csv")
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    for r in rows:
        assert float(r["mfu"]) == pytest.approx(flops * float(r["samples_per_s"]) / peak, rel=1e-12)


def test_no_mfu_column_without_flops(toy, tmp_path):
    torch.manual_seed(0)
    eg_train.Trainer(toy.ToyModel(), toy.make_config(tmp_path, max_steps=2, log_every=1), toy.ToyData()).fit()
    assert "mfu" not in toy.read_rows(tmp_path / "outputs/metrics.csv")[0]


def test_counting_leaves_the_rng_and_the_train_flags_as_they_were():
    torch.manual_seed(0)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.frozen = nn.Linear(8, 8)  # an eval-mode part (as a frozen tower) stays in eval mode
            self.head = nn.Sequential(nn.Linear(8, 4), nn.Dropout(0.5), nn.BatchNorm1d(4))

        def forward(self, batch: dict) -> dict:
            return {"loss": self.head(self.frozen(batch["x"])).square().mean()}

    model = Model().train()
    model.frozen.eval()
    batch = {"x": torch.randn(6, 8)}  # (B, D)
    stats = model.head[2].running_mean.clone()
    rng = torch.get_rng_state()
    per_sample = throughput.flops_per_sample(model, batch, torch.device("cpu"))
    assert per_sample == train_step_flops(model, batch) / 6
    assert torch.equal(torch.get_rng_state(), rng)  # dropout drew nothing from the global generator
    assert torch.equal(model.head[2].running_mean, stats)  # no batch-norm update
    assert [m.training for m in model.modules()] == [True, False, True, True, True, True]
