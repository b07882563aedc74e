"""eg-train behaviour on a tiny CPU model: accumulation, precision, non-finite guard, validation, groups."""

from __future__ import annotations

import math

import eg_train
import pytest
import torch
from eg_train.schedule import WarmupDecay


def _fit(toy, tmp_path, model=None, data=None, val_data=None, **cfg):
    torch.manual_seed(0)
    model = model if model is not None else toy.ToyModel()
    data = data if data is not None else toy.ToyData()
    trainer = eg_train.Trainer(model, toy.make_config(tmp_path, **cfg), data, val_data=val_data)
    return model, trainer.fit()


def test_accumulation_4x8_equals_batch_32(toy, tmp_path):
    # grad_clip is active (0.5 < the norms), so a wrong accumulation scale would change the update even
    # though Adam itself is scale-invariant; the logged pre-clip grad norm checks the scale directly.
    m_acc, _ = _fit(
        toy, tmp_path / "a", data=toy.ToyData(batch_size=8), grad_accum_steps=4, max_steps=3, grad_clip=0.5
    )
    m_big, _ = _fit(
        toy, tmp_path / "b", data=toy.ToyData(batch_size=32), grad_accum_steps=1, max_steps=3, grad_clip=0.5
    )
    for (name, a), (_, b) in zip(m_acc.state_dict().items(), m_big.state_dict().items()):
        if name != "num_forward":
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    rows_a = toy.read_rows(tmp_path / "a/outputs/metrics.csv")
    rows_b = toy.read_rows(tmp_path / "b/outputs/metrics.csv")
    assert [r["step"] for r in rows_a] == ["1", "2", "3"]
    for ra, rb in zip(rows_a, rows_b):
        for key in ("loss", "grad_norm", "mse", "index_mean", "samples_seen"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), abs=1e-6), key
    assert float(rows_a[0]["grad_norm"]) > 0.5


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_uses_the_configured_dtype(toy, tmp_path, precision, dtype):
    model, summary = _fit(
        toy, tmp_path, precision=precision, max_steps=3, val_every=3, lr=0.01, val_data=toy.ToyData()
    )
    model.seen_autocast.clear()
    trainer = eg_train.Trainer(
        model, toy.make_config(tmp_path / "again", precision=precision, max_steps=1), toy.ToyData()
    )
    trainer.fit()
    assert model.seen_autocast, "the model was not called"
    for enabled, autocast_dtype, activation_dtype in model.seen_autocast:
        assert enabled and autocast_dtype == dtype and activation_dtype == dtype
    ckpt = eg_train.load_checkpoint(tmp_path / "checkpoints/checkpoint_latest.pt")
    assert bool(ckpt["scaler"]) == (precision == "fp16")  # GradScaler only for fp16
    assert math.isfinite(summary["last_validation"]["val/loss"])


def test_fp32_runs_without_autocast(toy, tmp_path):
    model, _ = _fit(toy, tmp_path, max_steps=1)
    assert all(not enabled and act == torch.float32 for enabled, _, act in model.seen_autocast)


def test_nan_step_is_skipped_without_update(toy, tmp_path):
    const = {"schedule": "constant", "warmup_steps": 0}
    ref, _ = _fit(toy, tmp_path / "ref", max_steps=2, **const)
    torch.manual_seed(0)
    model = toy.ToyModel()
    model.nan_at_calls = {3}
    model, summary = _fit(toy, tmp_path / "nan", model=model, max_steps=3, **const)
    assert summary["num_skipped_steps"] == 1
    for name, p in ref.named_parameters():
        torch.testing.assert_close(dict(model.named_parameters())[name], p, atol=0, rtol=0)
    rows = toy.read_rows(tmp_path / "nan/outputs/metrics.csv")
    assert rows[2]["loss"] == "nan" and rows[2]["skipped_steps"] == "1" and rows[1]["skipped_steps"] == "0"


def test_k_nonfinite_steps_in_a_row_stop_the_run(toy, tmp_path):
    model = toy.ToyModel()
    model.nan_at_calls = {3, 4, 5}
    with pytest.raises(eg_train.TrainError, match="3 consecutive non-finite steps"):
        _fit(toy, tmp_path, model=model, max_steps=10, save_every=2, max_consecutive_nonfinite=3)
    ckpt = eg_train.load_checkpoint(tmp_path / "checkpoints/checkpoint_latest.pt")
    assert ckpt["step"] == 4  # saved before the third bad step; the stopping step writes nothing
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


class NoValLossModel(torch.nn.Module):
    """Reports a loss only in training; validation returns parts but no loss."""

    def __init__(self, toy):
        super().__init__()
        self.inner = toy.ToyModel()

    def forward(self, batch):
        out = self.inner(batch)
        if not self.training:
            out.pop("loss")
        return out


def test_validation_without_loss_is_never_zero(toy, tmp_path):
    model = NoValLossModel(toy)
    cfg = toy.make_config(tmp_path, max_steps=6, val_every=2)
    with pytest.warns(UserWarning, match="best_metric='val/loss' is not among"):
        summary = eg_train.Trainer(model, cfg, toy.ToyData(), val_data=toy.ToyData(batch_size=16)).fit()
    rows = toy.read_rows(tmp_path / "outputs/metrics.csv")
    assert all(r.get("val/loss", "") == "" for r in rows)
    assert [r["step"] for r in rows if r["val/mse"]] == ["2", "4", "6"]
    assert summary["best_value"] is None and summary["best_step"] == -1
    assert not (tmp_path / "checkpoints/checkpoint_best.pt").exists()


def test_best_tracking_on_an_evaluate_fn_metric(toy, tmp_path):
    recalls = {2: 0.5, 4: 0.9, 6: 0.7}
    cfg = toy.make_config(tmp_path, max_steps=6, val_every=2, best_metric="recall", best_mode="max")
    summary = eg_train.Trainer(
        toy.ToyModel(),
        cfg,
        toy.ToyData(),
        val_data=toy.ToyData(),
        evaluate_fn=lambda model, step: {"recall": recalls[step]},
    ).fit()
    assert summary["best_value"] == 0.9 and summary["best_step"] == 4
    best = eg_train.load_checkpoint(tmp_path / "checkpoints/checkpoint_best.pt")
    assert best["step"] == 4 and best["best_value"] == 0.9
    rows = {r["step"]: r for r in toy.read_rows(tmp_path / "outputs/metrics.csv")}
    assert float(rows["4"]["val/recall"]) == 0.9 and float(rows["4"]["val/loss"]) > 0


def test_zero_lr_group_stays_frozen_and_schedule_values(toy, tmp_path):
    model = toy.ToyModel()
    before = model.net[0].weight.detach().clone()
    groups = [{"params": model.net[0].parameters(), "lr": 0.0}, {"params": model.net[3].parameters()}]
    cfg = toy.make_config(tmp_path, max_steps=10, warmup_steps=2, min_lr_ratio=0.1, schedule="cosine")
    eg_train.Trainer(model, cfg, toy.ToyData(), param_groups=groups).fit()
    assert torch.equal(model.net[0].weight, before)
    lrs = [float(r["lr"]) for r in toy.read_rows(tmp_path / "outputs/metrics.csv")]
    f = WarmupDecay(2, 10, "cosine", 0.1)
    assert lrs == pytest.approx([0.05 * f(s) for s in range(10)])
    assert f(0) == 0.5 and f(2) == 1.0 and f(6) == pytest.approx(0.55) and f(10) == pytest.approx(0.1)
    assert WarmupDecay(0, 10, "linear", 0.0)(5) == pytest.approx(0.5)


def test_outputs_tensorboard_plots_and_epochs(toy, tmp_path):
    cfg = toy.make_config(tmp_path, max_steps=0, epochs=2, tensorboard=True, plots=True, log_every=3)
    summary = eg_train.Trainer(toy.ToyModel(), cfg, toy.ToyData(), val_data=toy.ToyData()).fit()
    out = tmp_path / "outputs"
    assert summary["step"] == 16 and summary["epoch"] == 2 and summary["samples_seen"] == 128
    assert (out / "training_curves.png").stat().st_size > 10_000
    assert (out / "loss_components.png").stat().st_size > 10_000
    assert any((out / "tensorboard").glob("events.out.tfevents.*"))
    rows = toy.read_rows(out / "metrics.csv")
    val_steps = [r["step"] for r in rows if r["val/loss"]]
    assert val_steps == ["8", "16"]  # validation at each epoch end
    assert [r["epoch"] for r in rows if r["step"] in ("3", "9")] == ["0", "1"]


class LinearRegression(torch.nn.Module):
    """One linear layer with an MSE loss: its gradient has a closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, batch: dict) -> dict:
        pred = self.linear(batch["x"]).squeeze(-1)  # (B,)
        return {"loss": ((pred - batch["y"]) ** 2).mean()}


def test_grad_clip_rescales_the_gradient_the_optimizer_sees(toy, tmp_path):
    torch.manual_seed(0)
    model, data, clip = LinearRegression(), toy.ToyData(), 0.1
    idx = data.batch_indices(0, 0)  # the first batch of the run
    x, y = data.x[idx], data.y[idx]  # (B, D), (B,)
    residual = x @ model.linear.weight.detach()[0] + model.linear.bias.detach() - y  # (B,)
    grad_w = 2 / len(y) * (residual @ x)  # d mean(r^2) / dw, (D,)
    grad_b = 2 / len(y) * residual.sum()
    norm = torch.sqrt((grad_w**2).sum() + grad_b**2)
    assert norm > 10 * clip  # clipping must act

    trainer = eg_train.Trainer(model, toy.make_config(tmp_path, max_steps=1, grad_clip=clip), data)
    seen: list[list[torch.Tensor]] = []
    trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append([p.grad.clone() for g in opt.param_groups for p in g["params"]])
    )
    trainer.fit()
    (got_w, got_b) = seen[0]  # default groups: matrices (decay), then vectors (no decay)
    scale = clip / (norm + 1e-6)  # torch's clip_grad_norm_ coefficient
    torch.testing.assert_close(got_w[0], grad_w * scale, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(got_b[0], grad_b * scale, rtol=1e-5, atol=1e-8)
    assert torch.sqrt((got_w**2).sum() + (got_b**2).sum()).item() == pytest.approx(clip, rel=1e-5)
    row = toy.read_rows(tmp_path / "outputs/metrics.csv")[0]
    assert float(row["grad_norm"]) == pytest.approx(norm.item(), rel=1e-5)  # logged before clipping


def test_training_curves_legend_says_which_curve_is_which():
    from eg_train.plots import training_curves_figure

    rows = [{"step": 1, "loss": 2.0, "lr": 0.1}, {"step": 2, "loss": 1.5, "lr": 0.1, "val/loss": 1.7}]
    legend = training_curves_figure(rows).axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["train loss (window mean)", "val loss"]
