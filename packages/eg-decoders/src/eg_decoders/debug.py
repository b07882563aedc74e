"""Debug flavour: a tiny random-init Qwen2 and its tokenizer, written offline in the Hugging Face layout.

Like eg-encoders' debug writers (torchtitan style): a deterministic (given `seed`) tiny model of the real
kind, saved the way the pretrained model is distributed, so `QwenDecoderConfig(**write_qwen2(dir, texts))`
loads it through `model_name` exactly as it would a hub id, with the real transformers and peft code. The
tokenizer is a byte-level BPE (as Qwen's own) trained on `texts`, with Qwen's special tokens and a ChatML
chat template; the model is `Qwen2ForCausalLM` at a few hundred thousand parameters. Needs only the
`qwen` extra (transformers, tokenizers).
"""

from __future__ import annotations

import torch

from eg_decoders.quiet import quiet_progress_bars

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT_WORDS = ["user", "assistant", "system", "\n"]  # the chat template's own words, merged like the texts


def write_qwen2(
    out_dir: str,
    texts: list[str],
    seed: int = 0,
    vocab_size: int = 400,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    init_std: float = 0.02,
    max_position_embeddings: int = 512,
) -> dict[str, str]:
    """Write a BPE tokenizer trained on `texts` and a random-init Qwen2ForCausalLM into `out_dir`.

    vocab_size is the BPE target (256 bytes + merges + the 3 special tokens); the model's vocabulary is the
    tokenizer's length. init_std is Qwen2's initializer_range. The weights come from `seed` alone (torch's
    global RNG is restored afterwards). Returns QwenDecoderConfig fields: model_name (the directory).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(sorted(set(texts)) + CHAT_WORDS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE
    )
    tokenizer.save_pretrained(out_dir)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        initializer_range=init_std,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    with quiet_progress_bars():
        model.save_pretrained(out_dir)
    return {"model_name": out_dir}
