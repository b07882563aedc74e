"""eg-train: a trainer for any nn.Module: torchrun/DDP, mixed precision, accumulation, crash-safe exact
resume, one run per checkpoint folder, observability (tensorboard, metrics.csv, plots, tqdm, optional wandb)."""

from eg_train.checkpoint import load_checkpoint, load_model_weights
from eg_train.config import TrainerConfig, WandbConfig
from eg_train.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_object,
    init_distributed,
    is_distributed,
    seed_everything,
    shutdown_distributed,
)
from eg_train.errors import TrainError
from eg_train.runlock import RunLockedError, run_lock
from eg_train.state import RunState
from eg_train.trainer import Trainer

__version__ = "0.2.0"

__all__ = [
    "DistInfo",
    "RunLockedError",
    "RunState",
    "TrainError",
    "Trainer",
    "TrainerConfig",
    "WandbConfig",
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "init_distributed",
    "is_distributed",
    "load_checkpoint",
    "load_model_weights",
    "run_lock",
    "seed_everything",
    "shutdown_distributed",
]
