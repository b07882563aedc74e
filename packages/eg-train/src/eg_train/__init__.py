"""eg-train: a trainer for any nn.Module: torchrun/DDP, mixed precision, accumulation, crash-safe exact
resume, observability (tensorboard, metrics.csv, plots, tqdm, optional wandb)."""

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
from eg_train.trainer import Trainer

__version__ = "0.2.0"

__all__ = [
    "DistInfo",
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
    "seed_everything",
    "shutdown_distributed",
]
