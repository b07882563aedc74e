"""The decoder kinds by name, and `load_decoder`: rebuild a saved decoder (config and weights) from its folder.

Each kind's config lives beside its decoder (`TRMConfig` in trm.py, `TinyDecoderConfig` in tiny.py,
`QwenDecoderConfig` in qwen.py, torchtitan's pattern), so `XConfig.build()` needs no import back; this
module sits above them all and maps the `type` string of a YAML or of a saved `decoder_config.json` to
its dataclass.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from eg_decoders.base import CONFIG_FILE, Decoder
from eg_decoders.errors import DecoderError
from eg_decoders.qwen import QwenDecoderConfig
from eg_decoders.tiny import TinyDecoderConfig
from eg_decoders.trm import TRMConfig

DecoderConfig = TRMConfig | TinyDecoderConfig | QwenDecoderConfig
DECODER_CONFIGS: dict[str, type] = {"trm": TRMConfig, "tiny": TinyDecoderConfig, "qwen": QwenDecoderConfig}


def decoder_config_from_dict(values: dict[str, Any]) -> DecoderConfig:
    """The config dataclass named by `values["type"]` (default "trm"), checked; unknown types or keys raise."""
    kind = values.get("type", "trm")
    if kind not in DECODER_CONFIGS:
        raise DecoderError(f"type '{kind}' is unknown; use one of {sorted(DECODER_CONFIGS)}")
    cls = DECODER_CONFIGS[kind]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise DecoderError(f"keys {unknown} are not fields of {cls.__name__}; remove or rename them")
    return cls(**values)


def load_decoder(path: str) -> Decoder:
    """Rebuild a decoder written by `decoder.save(path)`: its config's `build()`, then its saved weights."""
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(file):
        raise DecoderError(f"{file} not found; point at a directory written by decoder.save()")
    with open(file) as f:
        config = decoder_config_from_dict(json.load(f))
    decoder = config.build()
    decoder.load_weights(path)
    return decoder
