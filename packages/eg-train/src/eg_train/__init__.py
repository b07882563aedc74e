"""eg-train: A trainer for any nn.Module: torchrun/DDP, mixed precision, accumulation, crash-safe exact resume, observability."""

__version__ = "0.1.0"

__all__: list[str] = []
