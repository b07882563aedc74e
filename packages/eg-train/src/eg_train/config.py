"""The trainer's config dataclasses (plain types only, so OmegaConf structured configs can hold them)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import TrainError

PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "linear", "constant")
BEST_MODES = ("min", "max")


@dataclass
class WandbConfig:
    """Optional Weights & Biases logging; `wandb` is imported only when `enabled` is true."""

    enabled: bool = False
    project: str = "edge-glass"
    run_name: str = ""
    entity: str = ""


@dataclass
class TrainerConfig:
    """Everything the Trainer needs; `validate()` checks values and raises TrainError naming the key."""

    output_dir: str = "outputs/run"
    checkpoint_dir: str = "checkpoints/run"
    max_steps: int = 0  # optimizer steps; 0 = run `epochs` full epochs
    epochs: int = 0  # 0 = unbounded (then max_steps must be set)
    lr: float = 1e-4  # default lr for groups that do not set their own
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0  # wins over warmup_ratio when > 0
    warmup_ratio: float = 0.0  # fraction of total optimizer steps
    schedule: str = "cosine"  # cosine | linear | constant (after warmup)
    min_lr_ratio: float = 0.0  # final lr = lr * min_lr_ratio
    grad_accum_steps: int = 1
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping (norm still measured)
    precision: str = "fp32"  # fp32 | bf16 | fp16
    device: str = "auto"  # auto = cuda:<local_rank> when available, else cpu
    log_every: int = 10
    val_every: int = 0  # steps; 0 = only at epoch ends and at the end
    val_at_epoch_end: bool = True
    save_every: int = 0  # steps; 0 = only at epoch ends and at the end
    keep_last_n: int = 0  # also keep the N newest checkpoint_step_<step>.pt files
    save_trainable_only: bool = True  # model params with requires_grad + buffers only
    best_metric: str = "val/loss"
    best_mode: str = "min"  # min | max
    resume: str = "auto"  # auto | never | <checkpoint file or folder>
    max_consecutive_nonfinite: int = 5
    find_unused_parameters: bool = False
    seed: int = 0
    progress_bar: bool = True
    tensorboard: bool = True
    plots: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def validate(self) -> None:
        """Raise TrainError with one line naming the first bad key."""
        _choice("precision", self.precision, PRECISIONS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("best_mode", self.best_mode, BEST_MODES)
        for key in ("max_steps", "epochs", "warmup_steps", "val_every", "save_every", "keep_last_n"):
            if getattr(self, key) < 0:
                raise TrainError(f"train.{key}={getattr(self, key)} must be >= 0")
        for key in ("grad_accum_steps", "log_every", "max_consecutive_nonfinite"):
            if getattr(self, key) < 1:
                raise TrainError(f"train.{key}={getattr(self, key)} must be >= 1")
        if self.max_steps == 0 and self.epochs == 0:
            raise TrainError("train.max_steps and train.epochs are both 0; set one of them")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise TrainError(f"train.warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise TrainError(f"train.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.lr < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise TrainError("train.lr, train.weight_decay and train.grad_clip must be >= 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise TrainError(f"train.betas={list(self.betas)} must be two numbers in [0, 1)")
        if not self.resume:
            raise TrainError("train.resume is empty; use auto, never or a checkpoint path")
        if not self.best_metric:
            raise TrainError("train.best_metric is empty; use e.g. val/loss")

    def to_dict(self) -> dict:
        """The config as a plain dict (lists, not tuples), safe for weights_only checkpoints."""
        return dataclasses.asdict(self)


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise TrainError(f"train.{key}={value!r} is not one of {', '.join(allowed)}")
