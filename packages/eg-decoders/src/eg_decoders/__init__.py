"""eg-decoders: decoders for multimodal QA: TRM (tiny recursive), a tiny causal baseline, Qwen with LoRA and 8/4-bit.

Every decoder takes prefix embeddings (from an encoder, through its PrefixProjector), trains on answer
tokens only, and generates with greedy or sampled decoding that stops at eos. Each config checks itself
when constructed and builds its decoder with `build()`; `load_decoder(dir)` rebuilds a saved one.
"""

from eg_decoders.base import Decoder, DecoderOutput, count_trainable, select_next_token
from eg_decoders.config import (
    DECODER_CONFIGS,
    QWEN_EXTRA_INSTALL,
    QWEN_MODULES,
    QwenDecoderConfig,
    TinyDecoderConfig,
    TRMConfig,
    decoder_config_from_dict,
)
from eg_decoders.errors import DecoderError
from eg_decoders.labels import IGNORE_INDEX, answer_loss, build_answer_only_batch, build_prompt_batch
from eg_decoders.layers import KVCache
from eg_decoders.load import load_decoder
from eg_decoders.projector import PrefixProjector
from eg_decoders.tiny import TinyDecoder
from eg_decoders.tokenizer import ByteTokenizer
from eg_decoders.trm import TRMCache, TRMDecoder

__version__ = "0.2.0"


def __getattr__(name: str) -> object:
    # the Qwen decoder pulls in transformers and peft (the `qwen` extra, seconds of import); imported on use
    if name == "QwenDecoder":
        try:
            from eg_decoders.qwen import QwenDecoder
        except ModuleNotFoundError as err:
            if (err.name or "").split(".")[0] not in QWEN_MODULES:
                raise
            raise ImportError(f"QwenDecoder needs {err.name} (not installed): {QWEN_EXTRA_INSTALL}") from err
        return QwenDecoder
    raise AttributeError(f"module 'eg_decoders' has no attribute '{name}'")


__all__ = [
    "DECODER_CONFIGS",
    "IGNORE_INDEX",
    "ByteTokenizer",
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
    "build_prompt_batch",
    "count_trainable",
    "decoder_config_from_dict",
    "load_decoder",
    "select_next_token",
]
