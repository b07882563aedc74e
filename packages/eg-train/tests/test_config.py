"""TrainerConfig/WandbConfig validate on construction: one line that starts with the bad key as written
relative to the dataclass (the app prepends where it nests it), one check per key."""

from __future__ import annotations

import eg_train
import pytest
from eg_train import TrainerConfig, WandbConfig


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"lr": -1.0}, "lr must be >= 0, got -1.0"),
        ({"weight_decay": -0.1}, "weight_decay must be >= 0, got -0.1"),
        ({"grad_clip": -2.0}, "grad_clip must be >= 0, got -2.0"),
        ({"eps": 0.0}, "eps must be > 0, got 0.0"),
        ({"precision": "fp8"}, "precision='fp8' is not one of fp32, bf16, fp16"),
        ({"schedule": "step"}, "schedule='step' is not one of cosine, linear, constant"),
        ({"best_mode": "up"}, "best_mode='up' is not one of min, max"),
        ({"device": "tpu"}, "device='tpu' is not auto, cpu, cuda or cuda:N"),
        ({"max_steps": 0, "epochs": 0}, "max_steps and epochs are both 0; set one of them"),
        ({"max_steps": -3}, "max_steps must be >= 0, got -3"),
        ({"epochs": -1}, "epochs must be >= 0, got -1"),
        ({"warmup_steps": -1}, "warmup_steps must be >= 0, got -1"),
        ({"val_every": -1}, "val_every must be >= 0, got -1"),
        ({"save_every": -1}, "save_every must be >= 0, got -1"),
        ({"keep_last_n": -1}, "keep_last_n must be >= 0, got -1"),
        ({"grad_accum_steps": 0}, "grad_accum_steps must be >= 1, got 0"),
        ({"log_every": 0}, "log_every must be >= 1, got 0"),
        ({"max_consecutive_nonfinite": 0}, "max_consecutive_nonfinite must be >= 1, got 0"),
        ({"warmup_ratio": 1.0}, "warmup_ratio must be in [0, 1), got 1.0"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio must be in [0, 1], got 1.5"),
        ({"betas": [0.9]}, "betas must be two numbers in [0, 1), got [0.9]"),
        ({"betas": [0.9, 1.0]}, "betas must be two numbers in [0, 1), got [0.9, 1.0]"),
        ({"resume": ""}, "resume is empty; use auto, never or a checkpoint path"),
        ({"best_metric": ""}, "best_metric is empty; use e.g. val/loss"),
        ({"output_dir": ""}, "output_dir is empty; name a folder"),
        ({"checkpoint_dir": ""}, "checkpoint_dir is empty; name a folder"),
    ],
)
def test_each_bad_value_is_refused_at_construction_naming_its_key(overrides, message):
    with pytest.raises(eg_train.TrainError) as info:
        TrainerConfig(**overrides)
    assert str(info.value) == message
    assert "\n" not in str(info.value) and not str(info.value).startswith("train.")


def test_defaults_are_valid_and_missing_values_are_skipped():
    cfg = TrainerConfig()
    assert cfg.max_steps == 0 and cfg.epochs == 1  # one epoch unless told otherwise
    WandbConfig()
    TrainerConfig(lr="???", precision="???", betas="???", epochs="???", device="???")  # omegaconf.MISSING
    with pytest.raises(eg_train.TrainError, match="^project is empty"):
        WandbConfig(enabled=True, project="")
    assert issubclass(eg_train.TrainError, ValueError)


def test_a_config_changed_after_construction_is_checked_again_by_the_trainer(toy, tmp_path):
    cfg = toy.make_config(tmp_path)
    cfg.lr = -1.0
    with pytest.raises(eg_train.TrainError, match="^lr must be >= 0, got -1.0$"):
        eg_train.Trainer(toy.ToyModel(), cfg, toy.ToyData())


def test_max_steps_overrides_epochs(toy, tmp_path):
    cfg = toy.make_config(tmp_path, max_steps=11, epochs=1)  # ToyData: 8 batches per epoch
    summary = eg_train.Trainer(toy.ToyModel(), cfg, toy.ToyData()).fit()
    assert summary["step"] == 11 and summary["epoch"] == 1
    cfg = toy.make_config(tmp_path / "epochs", max_steps=0, epochs=1)
    assert eg_train.Trainer(toy.ToyModel(), cfg, toy.ToyData()).fit()["step"] == 8
