"""eg-losses: Contrastive (CLIP/InfoNCE) and Matryoshka (MRL) losses for multimodal alignment."""

__version__ = "0.1.0"

__all__: list[str] = []
