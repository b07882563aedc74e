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

from eg_train.errors import TrainError

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
    """Log the metrics rows and plots to Weights & Biases too (needs the `wandb` extra)."""
    project: str = "edge-glass"
    """The wandb project."""
    run_name: str = ""
    """The wandb run name ("" = wandb's own)."""
    entity: str = ""
    """The wandb team or user ("" = your default entity)."""

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
    """Folder of metrics.csv, tensorboard/, the plots and config.yaml (the stage apps default it to
    outputs/<experiment_name>)."""
    checkpoint_dir: str = "checkpoints/run"
    """Folder of checkpoint_latest.pt, checkpoint_best.pt and checkpoint_step_<step>.pt (the stage apps
    default it to checkpoints/<experiment_name>)."""
    max_steps: int = 0
    """Optimizer steps to train; > 0 overrides epochs."""
    epochs: int = 1
    """Full epochs to train when max_steps is 0."""
    lr: float = 1e-4
    """Peak learning rate (AdamW) of the param groups that do not set their own."""
    weight_decay: float = 0.01
    """AdamW weight decay (0 for biases and norms, params with fewer than 2 dims)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas, two numbers in [0, 1)."""
    eps: float = 1e-8
    """AdamW eps."""
    warmup_steps: int = 0
    """Linear warmup steps; wins over warmup_ratio when > 0."""
    warmup_ratio: float = 0.0
    """Linear warmup as a fraction of the total optimizer steps."""
    schedule: str = "cosine"
    """Learning rate after warmup: cosine | linear | constant."""
    min_lr_ratio: float = 0.0
    """The schedule ends at lr * min_lr_ratio."""
    grad_accum_steps: int = 1
    """Micro-batches whose gradients are averaged into one optimizer step (a larger effective batch at the
    memory of one micro-batch)."""
    grad_clip: float = 1.0
    """Max global gradient norm; 0 = no clipping (the norm is still measured and logged)."""
    precision: str = "fp32"
    """fp32 | bf16 | fp16 (autocast; fp16 with a GradScaler)."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N; auto = cuda:<local_rank> when CUDA is available, else cpu."""
    log_every: int = 10
    """Steps between metrics rows (a non-finite step is always logged)."""
    log_sample_keys: bool = False
    """Write the sample keys of every optimizer step, all ranks in global order, to
    output_dir/sample_keys.jsonl (rank 0): the data order, audited (e.g. across a resume on another world
    size). The batches must carry a `key` list; costs one gather of the keys per step."""
    val_every: int = 0
    """Steps between validations; 0 = only at epoch ends (val_at_epoch_end) and at the end."""
    val_at_epoch_end: bool = True
    """Validate at the end of every epoch."""
    save_every: int = 0
    """Steps between checkpoint_latest.pt writes; 0 = only at epoch ends and at the end."""
    keep_last_n: int = 0
    """Also keep the N newest checkpoint_step_<step>.pt files (0 = none)."""
    async_save: bool = True
    """Write checkpoint files on a background thread: the loop waits only while the state is serialized.
    Each file is still atomic; a crash during a write keeps the previous checkpoint. false = wait for every
    write (the file is on disk when the loop goes on)."""
    save_trainable_only: bool = True
    """Checkpoints hold the trainable params, buffers and module extra state, not frozen weights (they are
    rebuilt from the config); false = the full state dict."""
    best_metric: str = "val/loss"
    """Validation metric that picks checkpoint_best.pt (e.g. val/loss)."""
    best_mode: str = "min"
    """min | max: whether a lower or a higher best_metric is better."""
    resume: str = "auto"
    """auto = continue from the newest readable checkpoint in checkpoint_dir, if any; never = start fresh; or
    a checkpoint file or folder to continue from."""
    max_consecutive_nonfinite: int = 5
    """Stop with an error after this many optimizer steps in a row with a non-finite loss or gradient norm
    (each is skipped, not applied)."""
    find_unused_parameters: bool = False
    """DDP's find_unused_parameters, for models whose forward leaves some trainable params unused."""
    seed: int = 0
    """Seeds python, numpy and torch at the start of a fresh run, as seed + rank."""
    progress_bar: bool = True
    """Show a tqdm progress bar on rank 0."""
    tensorboard: bool = True
    """Write tensorboard event files to output_dir/tensorboard."""
    plots: bool = True
    """Draw training_curves.png and loss_components.png in output_dir after validations (skipped where the
    drawings would pass 1% of the run's wall time) and at the end."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Optional Weights & Biases logging."""

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
