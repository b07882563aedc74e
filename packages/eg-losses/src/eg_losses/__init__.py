"""eg-losses: contrastive (CLIP/InfoNCE) and Matryoshka (MRL) losses for multimodal alignment."""

from eg_losses.contrastive import ContrastiveLoss, ContrastiveLossConfig
from eg_losses.distributed import gather_with_grad
from eg_losses.errors import LossError
from eg_losses.matryoshka import DEFAULT_MRL_DIMS, MatryoshkaLoss, MatryoshkaLossConfig, resolve_mrl_dims

__version__ = "0.2.0"

__all__ = [
    "DEFAULT_MRL_DIMS",
    "ContrastiveLoss",
    "ContrastiveLossConfig",
    "LossError",
    "MatryoshkaLoss",
    "MatryoshkaLossConfig",
    "gather_with_grad",
    "resolve_mrl_dims",
]
