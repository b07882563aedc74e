"""Offline text-to-speech with eSpeak NG: the library and voices ship inside the `espeakng-loader` wheel
and are driven through ctypes in synchronous mode, a callback collecting the 16-bit samples. The wheel
comes with the `eg-data[demo]` extra."""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError, is_missing, require_extra

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass
class Voice:
    """An eSpeak voice: name (with an optional `+variant`), words per minute, pitch 0-99, range 0-99."""

    name: str = "en-us"
    rate: int = 170
    pitch: int = 50
    pitch_range: int = 50

    def __post_init__(self) -> None:
        if not is_missing(self.name) and not self.name:
            raise DataError("name is empty; use an eSpeak voice such as en-us")
        if not is_missing(self.rate) and not self.rate > 0:
            raise DataError(f"rate must be > 0 words per minute, got {self.rate}")
        for key in ("pitch", "pitch_range"):
            value = getattr(self, key)
            if not is_missing(value) and not 0 <= value <= 99:
                raise DataError(f"{key} must be in [0, 99], got {value}")


class Speaker:
    """Synthesizes text to float32 mono audio at `self.sample_rate` (22050 Hz for eSpeak NG)."""

    _lock = threading.Lock()  # the library holds one global synthesis state per process

    def __init__(self) -> None:
        espeakng_loader = require_extra("espeakng_loader", "demo", "Speaker (eSpeak NG speech)")
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        data_parent = str(Path(espeakng_loader.get_data_path()).parent).encode()
        self.sample_rate = int(self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent, 0))
        if self.sample_rate <= 0:
            raise DataError(f"eSpeak NG failed to initialize with data at {data_parent.decode()}")
        self._chunks: list[np.ndarray] = []

        def collect(wav: ctypes._Pointer, num_samples: int, events: int) -> int:
            if num_samples > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
            return 0

        self._callback = _CALLBACK(collect)  # kept on self so ctypes does not free it
        self._lib.espeak_SetSynthCallback(self._callback)

    def say(self, text: str, voice: Voice) -> np.ndarray:
        """Speak `text` with `voice`; returns float32 (T,) in [-1, 1] at `self.sample_rate`."""
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise DataError(f"eSpeak NG has no voice {voice.name!r}")
            self._lib.espeak_SetParameter(_RATE, int(voice.rate), 0)
            self._lib.espeak_SetParameter(_PITCH, int(voice.pitch), 0)
            self._lib.espeak_SetParameter(_RANGE, int(voice.pitch_range), 0)
            self._chunks = []
            # eSpeak draws noise and flutter from its own generator: reseed so a text and voice
            # always give the same samples, whatever was spoken before.
            self._lib.espeak_ng_SetRandSeed(ctypes.c_long(0))
            data = text.encode("utf-8") + b"\0"
            self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None)
            self._lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32) / 32768.0
