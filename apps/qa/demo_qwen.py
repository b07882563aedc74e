"""The Qwen QA demo's tiny Qwen2: its settings (`demo_qwen:`) and when to write it; the writer is eg-decoders'.

`eg_decoders.debug.write_qwen2` writes a random-init `Qwen2ForCausalLM` and a byte-level BPE tokenizer
(Qwen's special tokens, a ChatML chat template) in the Hugging Face layout, so the decoder loads them
through `model_name` exactly as it would a hub id. Here the tokenizer is trained on the demo's questions
and answers, and the pair is written once into `dir` (a manifest records the settings and the corpus size;
changed settings rewrite them).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from apps.common.config import ConfigError

MANIFEST = "demo_qwen.json"


@dataclass
class DemoQwenConfig:
    """Sizes of the demo's tiny Qwen2; `dir` is where it is written (it must be the decoder's model_name)."""

    dir: str = "data/demo_models/qwen"
    """Folder the tiny Qwen2 and its tokenizer are written to, once; it must be model.decoder.qwen.model_name."""
    seed: int = 0
    """Seed of the random initialization."""
    vocab_size: int = 400
    """BPE target size (bytes + merges + special tokens), trained on the demo's questions and answers."""
    hidden_size: int = 64
    """Qwen2 width."""
    intermediate_size: int = 128
    """Qwen2 feed-forward width."""
    num_layers: int = 2
    """Qwen2 decoder layers."""
    num_heads: int = 4
    """Attention heads (hidden_size must divide by it)."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention; num_heads must divide by it)."""
    init_std: float = 0.02
    """Weight init std (Qwen2's initializer_range); the head is frozen, so it sets how confident the logits
    can get."""

    def __post_init__(self) -> None:
        if not self.dir:
            raise ConfigError("dir is empty; name the folder the tiny Qwen is written to")
        for key in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1")
        if not self.init_std > 0:
            raise ConfigError(f"init_std={self.init_std} must be > 0")
        if self.vocab_size < 300:
            raise ConfigError(f"vocab_size={self.vocab_size} must be >= 300 (256 bytes + specials + merges)")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"hidden_size={self.hidden_size} must divide by num_heads={self.num_heads}, "
                f"which must divide by num_kv_heads={self.num_kv_heads}"
            )


def write_demo_qwen(cfg: DemoQwenConfig, texts: list[str]) -> bool:
    """Write the tokenizer (BPE over `texts`) and the random-init model into `cfg.dir` unless already there.

    Returns True when it wrote them.
    """
    from eg_decoders.debug import write_qwen2

    folder = Path(cfg.dir)
    stamp = {**asdict(cfg), "num_texts": len(texts)}
    manifest = folder / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()) == stamp:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {k: v for k, v in asdict(cfg).items() if k != "dir"}
    write_qwen2(str(folder), texts, **sizes)
    manifest.write_text(json.dumps(stamp, indent=2))
    return True
