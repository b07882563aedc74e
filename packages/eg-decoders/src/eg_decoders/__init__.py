"""eg-decoders: decoders for multimodal QA: TRM (tiny recursive), a tiny causal baseline, Qwen with LoRA and 8/4-bit.

Every decoder takes prefix embeddings (from an encoder, through its PrefixProjector), before a QA pair or
spliced into a multi-turn conversation at its media turn, trains on answer tokens only (every assistant
turn of a conversation), and generates with greedy or sampled decoding that stops at eos. Each config checks itself
when constructed and builds its decoder with `build()`; `load_decoder(dir)` rebuilds a saved one.
"""

from eg_decoders.base import Decoder, DecoderOutput, count_trainable, select_next_token
from eg_decoders.chat import (
    ChatTokens,
    build_chat_batch,
    build_chat_prompts,
    plain_chat_tokens,
    template_chat_tokens,
)
from eg_decoders.errors import DecoderError
from eg_decoders.labels import IGNORE_INDEX, answer_loss, build_answer_only_batch, build_prompt_batch
from eg_decoders.layers import KVCache
from eg_decoders.load import DECODER_CONFIGS, decoder_config_from_dict, load_decoder
from eg_decoders.prefix import splice_prefix, take_text
from eg_decoders.projector import PrefixProjector
from eg_decoders.qwen import QWEN_EXTRA_INSTALL, QWEN_MODULES, QwenDecoderConfig, missing_qwen_modules
from eg_decoders.tiny import TinyDecoder, TinyDecoderConfig
from eg_decoders.tokenizer import ByteTokenizer
from eg_decoders.trm import TRMCache, TRMConfig, TRMDecoder

__version__ = "0.2.0"


def __getattr__(name: str) -> object:
    # the Qwen decoder needs transformers and peft (the `qwen` extra) to be built: without them the class
    # itself is refused, naming the extra, rather than failing later inside its constructor
    if name == "QwenDecoder":
        missing = missing_qwen_modules()
        if missing:
            raise ImportError(f"QwenDecoder needs {', '.join(missing)} (not installed): {QWEN_EXTRA_INSTALL}")
        from eg_decoders.qwen import QwenDecoder

        return QwenDecoder
    raise AttributeError(f"module 'eg_decoders' has no attribute '{name}'")


__all__ = [
    "DECODER_CONFIGS",
    "IGNORE_INDEX",
    "QWEN_EXTRA_INSTALL",
    "QWEN_MODULES",
    "ByteTokenizer",
    "ChatTokens",
    "Decoder",
    "DecoderError",
    "DecoderOutput",
    "KVCache",
    "PrefixProjector",
    "QwenDecoder",
    "QwenDecoderConfig",
    "TRMCache",
    "TRMConfig",
    "TRMDecoder",
    "TinyDecoder",
    "TinyDecoderConfig",
    "answer_loss",
    "build_answer_only_batch",
    "build_chat_batch",
    "build_chat_prompts",
    "build_prompt_batch",
    "count_trainable",
    "decoder_config_from_dict",
    "load_decoder",
    "missing_qwen_modules",
    "plain_chat_tokens",
    "select_next_token",
    "splice_prefix",
    "take_text",
    "template_chat_tokens",
]
