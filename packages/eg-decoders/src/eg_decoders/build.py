"""build_decoder / load_decoder: the one entry point the apps use to get a decoder from a config or a directory."""

from __future__ import annotations

import json
import os
from typing import Any

from eg_decoders.base import Decoder
from eg_decoders.config import DECODER_CONFIGS, decoder_config_from_dict
from eg_decoders.errors import DecoderError
from eg_decoders.small import CONFIG_FILE


def decoder_class(kind: str) -> type:
    """The decoder class for a config `type` string ("trm", "tiny" or "qwen")."""
    if kind == "trm":
        from eg_decoders.trm import TRMDecoder

        return TRMDecoder
    if kind == "tiny":
        from eg_decoders.tiny import TinyDecoder

        return TinyDecoder
    if kind == "qwen":
        from eg_decoders.qwen import QwenDecoder  # deferred: transformers and peft take seconds to import

        return QwenDecoder
    raise DecoderError(f"decoder.type '{kind}' is unknown; use one of {sorted(DECODER_CONFIGS)}")


def build_decoder(config: Any) -> Decoder:
    """A fresh decoder of the kind named by config.type (a config dataclass or an OmegaConf node of one)."""
    return decoder_class(getattr(config, "type", "<missing>"))(config)


def load_decoder(path: str) -> Decoder:
    """Rebuild a decoder written by `decoder.save(path)`, weights included."""
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(file):
        raise DecoderError(f"{file} not found; point at a directory written by decoder.save()")
    with open(file) as f:
        config = decoder_config_from_dict(json.load(f))
    return decoder_class(config.type).load(path, config)
