"""load_decoder: rebuild a saved decoder (config and weights) from the directory `decoder.save` wrote."""

from __future__ import annotations

import json
import os

from eg_decoders.base import CONFIG_FILE, Decoder
from eg_decoders.config import decoder_config_from_dict
from eg_decoders.errors import DecoderError


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
