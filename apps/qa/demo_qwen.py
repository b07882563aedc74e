"""A tiny random-init Qwen2-architecture model and tokenizer for the Qwen QA demo, written offline.

The tokenizer is a byte-level BPE (as Qwen's own) trained on the demo's questions and answers, with Qwen's
special tokens and a ChatML chat template; the model is `Qwen2ForCausalLM` at a few hundred thousand
parameters. Both are saved in the Hugging Face layout, so the decoder loads them through `model_name`
exactly as it would load a hub id. Written once into `dir` (a manifest records the settings and the corpus
size; changed settings rewrite them).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from apps.common.config import ConfigError

MANIFEST = "demo_qwen.json"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


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
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    folder = Path(cfg.dir)
    stamp = {**asdict(cfg), "num_texts": len(texts)}
    manifest = folder / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()) == stamp:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    chat_words = ["user", "assistant", "system", "\n"]
    bpe.train_from_iterator(sorted(set(texts)) + chat_words, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE
    )
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(cfg.seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        initializer_range=cfg.init_std,
    )
    Qwen2ForCausalLM(config).save_pretrained(str(folder))
    manifest.write_text(json.dumps(stamp, indent=2))
    return True
