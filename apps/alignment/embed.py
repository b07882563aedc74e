"""The embedding API of a trained stage-1 model: images, audio and texts -> L2-normalized Matryoshka
embeddings, equal to those the held-out evaluation computes for the same samples.

    embedder = Embedder.from_checkpoint("checkpoints/demo/checkpoint_best.pt", device="cpu")
    z = embedder.embed_texts(["a small seven"], dim=32)  # (1, 32), unit norm

Images and audio go through eg-data's decoding and transforms with the settings the evaluation uses (the
stored `data.train` completed from the encoders' `image_spec` / `audio_spec`, no augmentation), then
through the same towers under the same autocast precision, in batches of `eval.batch_size`. The `dim`
view is `truncate_normalize` (the evaluation's): the first `dim` features of the projection, L2-normalized.

Dims: `dim` must be one the model was trained or evaluated at (`Embedder.dims`: the MRL dims and the
eval dims of the stored config; None = the top dim). Other prefixes would work mechanically, but nothing
measured their quality, so they are refused rather than served silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soxr
import torch
from eg_data import transform_audio, transform_image
from eg_data.transforms import SAMPLE_RATE, decode_audio, decode_image
from PIL import Image

from apps.alignment.build import Aligned, load_aligned
from apps.common.config import ConfigError
from apps.common.loaders import loader_for_encoders
from apps.common.retrieval import truncate_normalize

ImageInput = str | Path | Image.Image
AudioInput = str | Path | np.ndarray | torch.Tensor | tuple[np.ndarray, int]


class InputError(ConfigError):
    """A file, sample or argument the embedding or search API cannot use (a user error: one line, exit 2)."""


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 (hex, first 16 digits) of every tensor of the towers' state dict: names, dtypes, shapes, bytes.

    The towers are what embeds (the losses' temperatures and the generators' states do not change an
    embedding). Two checkpoints with the same tower weights share it (checkpoint_best.pt and a copy of
    it); any changed weight changes it, so an index can tell which model its vectors came from.
    """
    digest = hashlib.sha256()
    towers = getattr(model, "towers", model)
    for name, tensor in sorted(towers.state_dict().items()):
        if not torch.is_tensor(tensor):  # module extra state (e.g. a generator's state)
            continue
        value = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()[:16]


def read_image(item: ImageInput, what: str) -> Image.Image:
    """An RGB PIL image from a path or a PIL image, decoded as eg-data decodes shard bytes."""
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    path = Path(item)
    if not path.is_file():
        raise InputError(f"{what} {str(path)!r} does not exist")
    try:
        return decode_image(path.read_bytes())
    except Exception as exc:  # PIL raises many types on garbage bytes
        raise InputError(f"{what} {str(path)!r} is not a readable image ({type(exc).__name__})") from exc


def read_audio(item: AudioInput, what: str) -> np.ndarray:
    """A mono 16 kHz float32 wave from a file (decoded and resampled as eg-data does), from a
    `(wave, sample_rate)` pair (resampled the same way), or from a 1-D array/tensor already at 16 kHz."""
    if isinstance(item, tuple) and len(item) == 2:
        wave, rate = read_audio(item[0], what), item[1]
        if not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise InputError(f"{what}: sample rate {rate!r} must be a positive integer (Hz)")
        if rate == SAMPLE_RATE:
            return wave
        return np.ascontiguousarray(soxr.resample(wave, int(rate), SAMPLE_RATE).astype(np.float32))
    if isinstance(item, (str, Path)):
        path = Path(item)
        if not path.is_file():
            raise InputError(f"{what} {str(path)!r} does not exist")
        try:
            return decode_audio(path.read_bytes())
        except Exception as exc:  # soundfile/soxr raise several types on corrupt audio
            raise InputError(f"{what} {str(path)!r} is not readable audio ({type(exc).__name__})") from exc
    wave = item.detach().cpu().numpy() if torch.is_tensor(item) else np.asarray(item)
    if wave.ndim != 1 or wave.size == 0 or not np.issubdtype(wave.dtype, np.floating):
        raise InputError(
            f"{what} is an array of shape {wave.shape} and dtype {wave.dtype}; pass a non-empty 1-D float "
            "wave (mono, 16 kHz)"
        )
    return np.ascontiguousarray(wave, dtype=np.float32)


class Embedder:
    """A trained stage-1 model ready to embed: `embed_images`, `embed_audio`, `embed_texts` -> (N, dim)
    float32 CPU tensors, unit L2 norm; `project_*` give the raw (N, max_dim) projections they come from."""

    def __init__(self, aligned: Aligned, batch_size: int | None = None, precision: str | None = None) -> None:
        from apps.alignment.evaluate import eval_dims

        self.aligned = aligned
        self.model = aligned.model
        cfg = aligned.config
        self.device = next(self.model.parameters()).device
        self.batch_size = int(batch_size or cfg.eval.batch_size)
        self.precision = precision or cfg.train.precision
        self.max_dim: int = self.model.max_dim
        self.dims: list[int] = sorted(set(self.model.mrl_dims) | set(eval_dims(cfg, self.model.mrl_dims)))
        encoders = {name: tower.encoder for name, tower in self.model.towers.items()}
        loader_cfg = loader_for_encoders(cfg.data.train, encoders, "data.train")
        self.image_config = dataclasses.replace(loader_cfg.image, augment=False)  # as eval_loader sets it
        self.audio_config = loader_cfg.audio
        self._fingerprint = ""

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        device: str | torch.device = "cpu",
        batch_size: int | None = None,
        precision: str | None = None,
    ) -> Embedder:
        """Rebuild the model stored in `checkpoint` (`load_aligned`) on `device` and wrap it."""
        return cls(load_aligned(checkpoint, device), batch_size, precision)

    @property
    def checkpoint(self) -> str:
        return self.aligned.checkpoint

    @property
    def modalities(self) -> list[str]:
        """The model's towers: a subset of vision, audio, text."""
        return list(self.model.towers)

    @property
    def fingerprint(self) -> str:
        """`weights_fingerprint` of the loaded model (computed once)."""
        if not self._fingerprint:
            self._fingerprint = weights_fingerprint(self.model)
        return self._fingerprint

    def check_dim(self, dim: int | None) -> int:
        """`dim`, or the top dim for None; InputError unless it is one of `self.dims`."""
        if dim is None:
            return self.max_dim
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or int(dim) not in self.dims:
            raise InputError(
                f"dim={dim!r} is not a Matryoshka dim of this model; use one of {self.dims} "
                "(the dims it was trained and evaluated at)"
            )
        return int(dim)

    def _tower(self, modality: str) -> torch.nn.Module:
        if modality not in self.model.towers:
            raise InputError(
                f"checkpoint {self.checkpoint} has no {modality} tower (it has {', '.join(self.modalities)})"
            )
        return self.model.towers[modality]

    @torch.no_grad()
    def project_batch(self, modality: str, batch: dict[str, Any]) -> torch.Tensor:
        """One modality's tower on a batch dict as eg-data collates it -> (B, max_dim) float32 on CPU,
        under the autocast precision the evaluation uses."""
        tower = self._tower(modality)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        moved = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            return tower(moved).float().cpu()

    def _batched(self, items: Sequence[Any], make_batch: Any, modality: str) -> torch.Tensor:
        if isinstance(items, (str, Path, Image.Image)):
            items = [items]  # one input given alone
        if len(items) == 0:
            return torch.empty(0, self.max_dim)
        self._tower(modality)
        parts = [
            self.project_batch(modality, make_batch(items[start : start + self.batch_size], start))
            for start in range(0, len(items), self.batch_size)
        ]
        return torch.cat(parts)  # (N, max_dim)

    def project_images(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Image paths or PIL images -> raw projections (N, max_dim)."""

        def batch(chunk: Sequence[ImageInput], start: int) -> dict[str, Any]:
            size = self.image_config.size
            pixels = torch.empty(len(chunk), 3, size, size)  # (B, 3, S, S)
            for i, item in enumerate(chunk):
                transform_image(read_image(item, f"image {start + i}"), self.image_config, out=pixels[i])
            return {"image": pixels}

        return self._batched(images, batch, "vision")

    def project_audio(self, clips: Sequence[AudioInput]) -> torch.Tensor:
        """Audio files (flac/wav, any rate: resampled), (wave, sample_rate) pairs or 16 kHz mono waves ->
        raw projections (N, max_dim)."""

        def batch(chunk: Sequence[AudioInput], start: int) -> dict[str, Any]:
            mels, masks = zip(
                *(
                    transform_audio(read_audio(c, f"audio {start + i}"), self.audio_config)
                    for i, c in enumerate(chunk)
                )
            )
            return {"audio": torch.stack(mels), "audio_mask": torch.stack(masks)}  # (B, M, F), (B, F)

        if isinstance(clips, (np.ndarray, torch.Tensor)):
            clips = [clips] if clips.ndim == 1 else list(clips)  # one wave, or (N, S) waves
        elif isinstance(clips, tuple) and len(clips) == 2 and isinstance(clips[1], (int, np.integer)):
            clips = [clips]  # one (wave, sample_rate) pair
        return self._batched(clips, batch, "audio")

    def project_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> raw projections (N, max_dim); an empty string is refused (eg-data drops those)."""

        def batch(chunk: Sequence[str], start: int) -> dict[str, Any]:
            for i, text in enumerate(chunk):
                if not isinstance(text, str) or not text.strip():
                    raise InputError(f"text {start + i} is {text!r}; pass a non-empty string")
            return {"text": [text.strip() for text in chunk]}  # eg-data strips captions

        return self._batched(texts, batch, "text")

    def embed_images(self, images: Sequence[ImageInput], dim: int | None = None) -> torch.Tensor:
        """Image paths or PIL images -> (N, dim) unit-norm embeddings."""
        dim = self.check_dim(dim)
        return truncate_normalize(self.project_images(images), dim)

    def embed_audio(self, clips: Sequence[AudioInput], dim: int | None = None) -> torch.Tensor:
        """Audio files or 16 kHz mono float waves -> (N, dim) unit-norm embeddings."""
        dim = self.check_dim(dim)
        return truncate_normalize(self.project_audio(clips), dim)

    def embed_texts(self, texts: Sequence[str], dim: int | None = None) -> torch.Tensor:
        """Strings -> (N, dim) unit-norm embeddings."""
        dim = self.check_dim(dim)
        return truncate_normalize(self.project_texts(texts), dim)
