"""Stage 2, question answering: the frozen stage-1 towers feed a decoder (TRM, a tiny baseline or Qwen with
LoRA) through one PrefixProjector per modality; the decoder answers questions about images and audio.

The stage interface the entry points dispatch on (`stage: qa` in a YAML): `CONFIG` (the config tree),
`train(cfg)`, `evaluate(cfg, checkpoint, split_dir)`. `load_qa(checkpoint)` rebuilds a trained model from the
config stored in its checkpoint, ready to answer questions (apps/qa/load.py). Heavy imports stay inside the
functions so that loading or printing a config is fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from apps.qa.config import QAConfig

if TYPE_CHECKING:
    from apps.qa.load import QAAssistant

CONFIG = QAConfig


def train(cfg: QAConfig) -> None:
    """Train and evaluate one stage-2 experiment (apps/qa/run.py)."""
    from apps.qa.run import train as run_train

    run_train(cfg)


def evaluate(cfg: QAConfig, checkpoint: str, split_dir: str = "") -> dict[str, Any]:
    """Held-out QA evaluation of `checkpoint` on data.test_dir (or `split_dir`); writes eval.json."""
    from apps.qa.evaluate import evaluate_checkpoint

    return evaluate_checkpoint(cfg, checkpoint, split_dir)


def load_qa(checkpoint: str, device: Any = "cpu") -> QAAssistant:
    """The trained stage-2 model of `checkpoint`, ready to answer (see apps.qa.load.load_qa)."""
    from apps.qa.load import load_qa as load

    return load(checkpoint, device)


__all__ = ["CONFIG", "QAConfig", "evaluate", "load_qa", "train"]
