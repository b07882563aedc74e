"""Stage 1, alignment: vision (CLIP), audio (Whisper) and text (Sentence-BERT) towers projected into one
Matryoshka embedding space, trained with contrastive + MRL losses per modality pair.

The stage interface the entry points dispatch on (`stage: alignment` in a YAML, the default):
`CONFIG` (the config tree), `train(cfg)`, `evaluate(cfg, checkpoint, split_dir)`. `load_aligned(checkpoint)`
rebuilds a trained model from the config stored in its checkpoint (stage 2 builds on it).
Heavy imports stay inside the functions so that loading or printing a config is fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from apps.alignment.config import AlignmentConfig

if TYPE_CHECKING:
    from apps.alignment.build import Aligned

CONFIG = AlignmentConfig


def train(cfg: AlignmentConfig) -> None:
    """Train and evaluate one stage-1 experiment (apps/alignment/run.py)."""
    from apps.alignment.run import train as run_train

    run_train(cfg)


def evaluate(cfg: AlignmentConfig, checkpoint: str, split_dir: str = "") -> dict[str, Any]:
    """Held-out retrieval of `checkpoint` on data.test_dir (or `split_dir`); writes eval.json."""
    from apps.alignment.evaluate import evaluate_checkpoint

    return evaluate_checkpoint(cfg, checkpoint, split_dir)


def load_aligned(checkpoint: str, device: Any = "cpu") -> Aligned:
    """The trained stage-1 model of `checkpoint` (see apps.alignment.build.load_aligned)."""
    from apps.alignment.build import load_aligned as load

    return load(checkpoint, device)


__all__ = ["CONFIG", "AlignmentConfig", "evaluate", "load_aligned", "train"]
