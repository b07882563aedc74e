"""Offline text-to-speech with eSpeak NG: the library and voices ship inside the `espeakng-loader` wheel
and are driven through ctypes in synchronous mode, a callback collecting the 16-bit samples. The wheel
comes with the `eg-data[demo]` extra."""

from __future__ import annotations

import _ctypes
import ctypes
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eg_data.errors import DataError, is_missing, require_extra

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
# English voices (a language and an optional +variant) that the demo and `speak` draw from.
VOICES = (
    "en-us",
    "en-gb-x-rp",
    "en-us+f3",
    "en+m3",
    "en-029",
    "en-gb-scotland",
    "en-us+f2",
    "en+f4",
    "en-us-nyc",
    "en+Annie",
    "en+Alex",
)


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


class _Engine:
    """The eSpeak NG library as loaded and initialized in this process (one state per process), with the
    callback that collects the samples of the utterance being synthesized."""

    def __init__(self) -> None:
        espeakng_loader = require_extra("espeakng_loader", "demo", "Speaker (eSpeak NG speech)")
        self.path = espeakng_loader.get_library_path()
        self.lib = ctypes.CDLL(self.path)
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [
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
        self.sample_rate = int(self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent, 0))
        if self.sample_rate <= 0:
            raise DataError(f"eSpeak NG failed to initialize with data at {data_parent.decode()}")
        self.chunks: list[np.ndarray] = []

        def collect(wav: ctypes._Pointer, num_samples: int, events: int) -> int:
            if num_samples > 0:
                self.chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
            return 0

        self.callback = _CALLBACK(collect)  # kept here so ctypes does not free it
        self.lib.espeak_SetSynthCallback(self.callback)

    def unload(self) -> bool:
        """Terminate and unload the library; False when it stays loaded (another handle in the process)."""
        self.lib.espeak_Terminate()
        _ctypes.dlclose(self.lib._handle)
        try:
            probe = ctypes.CDLL(self.path, mode=getattr(os, "RTLD_NOLOAD", 4))
        except OSError:
            return True  # not loaded any more: the next load starts from the initial state
        _ctypes.dlclose(probe._handle)
        return False


_ENGINE: _Engine | None = None
_LOCK = threading.Lock()  # the library holds one global synthesis state per process


def _engine() -> _Engine:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine()
    return _ENGINE


class Speaker:
    """Synthesizes text to float32 mono audio at `self.sample_rate` (22050 Hz for eSpeak NG). All
    Speakers of a process share the library's one synthesis state."""

    def __init__(self) -> None:
        with _LOCK:
            self.sample_rate = _engine().sample_rate

    def reset(self) -> None:
        """Start the next utterance from eSpeak NG's initial state, by reloading the library.

        eSpeak NG carries synthesis state from one utterance to the next that `espeak_ng_SetRandSeed`
        does not reset (the same text and voice spoken twice in a row differ from about sample 330 on,
        and by a few samples in length), so an utterance depends on what the process spoke before.
        After `reset()` the utterances that follow give the same samples in any process (as in a fresh
        one). About 3 ms. DataError when something else in the process holds the library loaded.
        """
        global _ENGINE
        with _LOCK:
            engine = _engine()
            _ENGINE = None
            if not engine.unload():
                raise DataError(
                    f"{engine.path} is loaded elsewhere in this process; eSpeak NG's state cannot be reset"
                )
            _engine()

    def say(self, text: str, voice: Voice) -> np.ndarray:
        """Speak `text` with `voice`; returns float32 (T,) in [-1, 1] at `self.sample_rate`."""
        with _LOCK:
            engine = _engine()
            lib = engine.lib
            if lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise DataError(f"eSpeak NG has no voice {voice.name!r}")
            lib.espeak_SetParameter(_RATE, int(voice.rate), 0)
            lib.espeak_SetParameter(_PITCH, int(voice.pitch), 0)
            lib.espeak_SetParameter(_RANGE, int(voice.pitch_range), 0)
            engine.chunks = []
            # eSpeak draws noise from its own generator: reseed it. Other state (flutter, the wave
            # generator) still carries over from the previous utterance: see `reset()`.
            lib.espeak_ng_SetRandSeed(ctypes.c_long(0))
            data = text.encode("utf-8") + b"\0"
            lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None)
            lib.espeak_Synchronize()
            chunks, engine.chunks = engine.chunks, []
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32) / 32768.0
