"""The trainer's config dataclasses (plain types only, so OmegaConf structured configs can hold them).

Each validates itself when constructed and raises TrainError with one line that starts with the bad
key as written relative to the dataclass (`lr must be >= 0, got -1.0`); whoever nests the config
prepends its path. Values equal to omegaconf.MISSING ("???") are not checked.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import TrainError

PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "linear", "constant")
BEST_MODES = ("min", "max")
MISSING = "???"  # omegaconf.MISSING, without importing omegaconf
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def _missing(value: Any) -> bool:
    return isinstance(value, str) and value == MISSING


@dataclass
class WandbConfig:
    """Optional Weights & Biases logging (the `eg-train[wandb]` extra), imported only when enabled."""

    enabled: bool = False
    project: str = "edge-glass"
    run_name: str = ""
    entity: str = ""

    def __post_init__(self) -> None:
        if self.enabled is True and not _missing(self.project) and not self.project:
            raise TrainError("project is empty; name the wandb project (or set enabled: false)")


@dataclass
class TrainerConfig:
    """Everything the Trainer needs. Validated on construction (and again by `Trainer`).

    Run length: `max_steps > 0` trains that many optimizer steps (epochs is then ignored, as in
    Hugging Face's TrainingArguments); `max_steps = 0` trains `epochs` full epochs.
    """

    output_dir: str = "outputs/run"
    checkpoint_dir: str = "checkpoints/run"
    max_steps: int = 0  # optimizer steps; > 0 overrides epochs
    epochs: int = 1  # full epochs when max_steps is 0
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
    save_trainable_only: bool = True  # trainable params + buffers + module extra state
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

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise TrainError with one line naming the first bad key (relative to this dataclass)."""
        _choice("precision", self.precision, PRECISIONS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("best_mode", self.best_mode, BEST_MODES)
        if not _missing(self.device) and not _DEVICE.match(str(self.device)):
            raise TrainError(f"device={self.device!r} is not auto, cpu, cuda or cuda:N")
        for key in ("max_steps", "epochs", "warmup_steps", "val_every", "save_every", "keep_last_n"):
            _at_least(key, getattr(self, key), 0)
        for key in ("grad_accum_steps", "log_every", "max_consecutive_nonfinite"):
            _at_least(key, getattr(self, key), 1)
        for key in ("lr", "weight_decay", "grad_clip"):
            _at_least(key, getattr(self, key), 0)
        if not _missing(self.eps) and not self.eps > 0:
            raise TrainError(f"eps must be > 0, got {self.eps}")
        if self.max_steps == 0 and self.epochs == 0:
            raise TrainError("max_steps and epochs are both 0; set one of them")
        if not _missing(self.warmup_ratio) and not 0.0 <= self.warmup_ratio < 1.0:
            raise TrainError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not _missing(self.min_lr_ratio) and not 0.0 <= self.min_lr_ratio <= 1.0:
            raise TrainError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not _missing(self.betas) and (
            len(self.betas) != 2 or not all(_missing(b) or 0.0 <= b < 1.0 for b in self.betas)
        ):
            raise TrainError(f"betas must be two numbers in [0, 1), got {list(self.betas)}")
        if not self.resume:
            raise TrainError("resume is empty; use auto, never or a checkpoint path")
        if not self.best_metric:
            raise TrainError("best_metric is empty; use e.g. val/loss")
        for key in ("output_dir", "checkpoint_dir"):
            if not getattr(self, key):
                raise TrainError(f"{key} is empty; name a folder")

    def to_dict(self) -> dict:
        """The config as a plain dict (lists, not tuples), safe for weights_only checkpoints."""
        return dataclasses.asdict(self)


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if not _missing(value) and value not in allowed:
        raise TrainError(f"{key}={value!r} is not one of {', '.join(allowed)}")


def _at_least(key: str, value: Any, low: float) -> None:
    if not _missing(value) and value < low:
        raise TrainError(f"{key} must be >= {low}, got {value}")
