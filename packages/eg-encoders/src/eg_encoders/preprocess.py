"""The inputs an aligned model was trained on, made from images and 16 kHz waves: the preprocessing an export
records in its config.json and `AlignedEncoders` applies.

Images: RGB, the shorter side resized to `size` with PIL's bicubic filter (rounded, never below `size`),
the center `size` x `size` crop, pixels scaled to 0..1 and normalized per channel by `mean` / `std`.
Audio: a mono 16 kHz float wave cut or zero-padded to `n_samples`, whisper's log-mel (`n_mels` bins) of
the padded wave, and a frame mask True on the `ceil(valid samples / 160)` frames that cover real audio.
Both are exactly what Edge Glass's data loader (eg-data) computes at evaluation, to the bit (tested
there), so an embedding made here equals the one the held-out evaluation scored.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from eg_encoders.common import EncoderError

SAMPLE_RATE = 16000
HOP_LENGTH = 160  # whisper's STFT hop: one mel frame per 10 ms at 16 kHz
N_FFT = 400  # whisper's STFT window


@dataclass
class ImagePreprocess:
    """Square `size`, per-channel `mean` and `std` (RGB, pixels in 0..1): the vision encoder's image spec."""

    size: int
    mean: list[float]
    std: list[float]
    resize: str = "shorter side to size (PIL bicubic), center crop"

    def to_dict(self) -> dict:
        """The JSON form written to config.json."""
        return asdict(self)


@dataclass
class AudioPreprocess:
    """16 kHz mono waves cut/padded to `n_samples`, `n_mels` log-mel bins, `n_frames` frames of 10 ms."""

    n_mels: int
    n_samples: int
    sample_rate: int = SAMPLE_RATE
    hop_length: int = HOP_LENGTH
    n_fft: int = N_FFT

    @property
    def n_frames(self) -> int:
        return self.n_samples // self.hop_length

    def to_dict(self) -> dict:
        """The JSON form written to config.json (n_frames included, for readers without this class)."""
        return {**asdict(self), "n_frames": self.n_frames}


def read_image(item: object, what: str = "image") -> object:
    """An RGB PIL image from a path or a PIL image; EncoderError naming `what` for a missing or bad file."""
    from PIL import Image

    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if not isinstance(item, (str, os.PathLike)):
        raise EncoderError(f"{what} is a {type(item).__name__}; pass a file path or a PIL image")
    if not os.path.isfile(item):
        raise EncoderError(f"{what} {str(item)!r} does not exist")
    try:
        with Image.open(item) as img:
            img.load()
            return img.convert("RGB")
    except Exception as exc:  # noqa: BLE001 (PIL raises many types on garbage bytes)
        raise EncoderError(f"{what} {str(item)!r} is not a readable image ({type(exc).__name__})") from None


def image_pixels(img: object, spec: ImagePreprocess, out: torch.Tensor | None = None) -> torch.Tensor:
    """An RGB PIL image -> float32 (3, size, size), resized, center-cropped and normalized per `spec`."""
    from PIL import Image

    size = spec.size
    w, h = img.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    if new != (w, h):
        img = img.resize(new, Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    pixels = np.asarray(img).transpose(2, 0, 1)  # (3, S, S) uint8
    if out is None:
        out = torch.empty(pixels.shape, dtype=torch.float32)
    # x * (1 / (255 std)) - mean / std in float32, in this order: the loader's arithmetic, so equal bits
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    target = out.numpy()
    np.multiply(pixels, np.float32(1 / 255) / std, out=target)
    np.subtract(target, np.asarray(spec.mean, dtype=np.float32)[:, None, None] / std, out=target)
    return out


def as_wave(item: object, what: str = "audio") -> np.ndarray:
    """A 1-D float wave (numpy array or tensor, mono, 16 kHz) as contiguous float32; EncoderError otherwise."""
    wave = item.detach().cpu().numpy() if torch.is_tensor(item) else np.asarray(item)
    if wave.ndim != 1 or wave.size == 0 or not np.issubdtype(wave.dtype, np.floating):
        raise EncoderError(
            f"{what} is an array of shape {wave.shape} and dtype {wave.dtype}; pass a non-empty 1-D float "
            "wave (mono, 16 kHz; decode and resample files first, e.g. soundfile + soxr)"
        )
    return np.ascontiguousarray(wave, dtype=np.float32)


def audio_log_mel(wave: np.ndarray, spec: AudioPreprocess) -> tuple[torch.Tensor, torch.Tensor]:
    """A 16 kHz wave -> (log-mel (n_mels, n_frames), frame mask (n_frames,) bool True on real audio)."""
    from whisper.audio import log_mel_spectrogram

    num_valid = min(len(wave), spec.n_samples)
    audio = torch.zeros(spec.n_samples, dtype=torch.float32)
    audio[:num_valid] = torch.from_numpy(wave[:num_valid])
    mel = log_mel_spectrogram(audio, n_mels=spec.n_mels)  # (n_mels, n_frames)
    valid_frames = min(spec.n_frames, -(-num_valid // spec.hop_length))
    mask = torch.arange(spec.n_frames) < valid_frames  # (n_frames,)
    return mel, mask
