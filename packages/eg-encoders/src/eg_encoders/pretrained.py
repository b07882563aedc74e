"""A trained aligned model as a self-contained folder (Hugging Face layout), loaded with eg-encoders alone:

    enc = AlignedEncoders.from_pretrained("exports/demo")  # or a Hub repo id
    z = enc.embed_texts(["a small seven"], dim=32)  # (1, 32) float32, unit L2 norm

The folder holds `config.json` (format FORMAT: every tower's encoder / resampler config, the projection,
the Matryoshka dims, the preprocessing, versions and the source checkpoint), `model.safetensors` (the
towers' weights, keys `<modality>.<tower parameter>`) and under `backbones/<modality>/` the files a tower
needs to be built (an open_clip model config, a sentence-transformers folder with its tokenizer). Config
paths listed in a tower's `folder_paths` are relative to the folder, so nothing outside it is read.
The towers are built from their configs (random-init backbones where the config allows it) and then take
every weight from model.safetensors, strictly: a missing, unexpected or differently shaped tensor is a
PretrainedError naming the file and the key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from eg_encoders.audio import AudioEncoderConfig, WhisperEncoderDims
from eg_encoders.common import EncoderError
from eg_encoders.matryoshka import MatryoshkaConfig, truncate_normalize
from eg_encoders.pooling import PoolingConfig
from eg_encoders.preprocess import AudioPreprocess, ImagePreprocess, as_wave, audio_log_mel, image_pixels
from eg_encoders.preprocess import read_image as read_image_file
from eg_encoders.text import TextEncoderConfig
from eg_encoders.tower import ModalityTower, build_tower, import_resampler
from eg_encoders.vision import VisionEncoderConfig

FORMAT = "eg-aligned-encoders"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ENCODER_CONFIGS = {"vision": VisionEncoderConfig, "audio": AudioEncoderConfig, "text": TextEncoderConfig}


class PretrainedError(EncoderError):
    """An export folder (or Hub repo) that cannot be loaded: the message names the file and the key."""


def encoder_config(modality: str, raw: dict[str, Any]) -> Any:
    """The encoder config dataclass of `modality` from its config.json dict (nested pooling / dims)."""
    raw = dict(raw)
    if isinstance(raw.get("pooling"), dict):
        raw["pooling"] = PoolingConfig(**raw["pooling"])
    if modality == "audio" and isinstance(raw.get("dims"), dict):
        raw["dims"] = WhisperEncoderDims(**raw["dims"])
    return ENCODER_CONFIGS[modality](**raw)


def resolve_folder(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local export folder as is, else a Hub repo id downloaded (cached) by huggingface_hub."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    text = str(name_or_path)
    if path.exists() or text.count("/") != 1 or text.startswith((".", "/")):
        raise PretrainedError(f"{text}: not an export folder (no such directory) and not a Hub repo id")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=text, revision=revision))
    except Exception as exc:  # noqa: BLE001 (huggingface_hub raises several types: offline, 404, auth)
        raise PretrainedError(f"{text}: no export folder here and the Hub download failed: {exc}") from None


def read_config(folder: Path) -> dict[str, Any]:
    """config.json of an export folder, checked for its format; PretrainedError naming what is wrong."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise PretrainedError(f"{path}: missing (an export folder has {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PretrainedError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise PretrainedError(f"{path}: format is {config.get('format')!r}, expected {FORMAT!r}")
    for key in ("towers", "projection", "dims"):
        if key not in config:
            raise PretrainedError(f"{path}: key {key!r} is missing")
    return config


def tower_state_dict(towers: nn.Module) -> dict[str, torch.Tensor]:
    """The towers' tensors, keys `<modality>.<name>`, sorted, contiguous CPU copies (no shared storage, so
    safetensors writes every tensor and the same weights always give the same bytes)."""
    state = towers.state_dict()
    return {
        k: state[k].detach().cpu().contiguous().clone() for k in sorted(state) if torch.is_tensor(state[k])
    }


def preprocess_entry(tower: nn.Module) -> dict[str, Any] | None:
    """The `preprocess` entry of a built tower: the image or audio spec its encoder expects (None for text)."""
    if hasattr(tower.encoder, "image_spec"):
        spec = tower.encoder.image_spec
        return {"size": spec.size, "mean": list(spec.mean), "std": list(spec.std)}
    if hasattr(tower.encoder, "audio_spec"):
        spec = tower.encoder.audio_spec
        return {"n_mels": spec.n_mels, "n_samples": spec.n_samples, "n_frames": spec.n_frames}
    return None


def save_pretrained(out: str | os.PathLike, towers: nn.ModuleDict, config: dict[str, Any]) -> dict[str, Any]:
    """Write `towers` as out/model.safetensors and `config` (its `towers`, `projection`, `dims`, ...; the
    backbone files its folder_paths name already under `out`) as out/config.json; returns the config written
    (with `format`, `format_version` and the safetensors file's sha256 added)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tower_state_dict(towers), str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    digest = hashlib.sha256((out / WEIGHTS_NAME).read_bytes()).hexdigest()
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, **config, "weights_sha256": digest}
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return config


def load_weights_strict(module: nn.Module, path: Path, prefix: str = "") -> None:
    """Copy every tensor of the safetensors file `path` into `module`; PretrainedError naming the first
    missing, unexpected or differently shaped key (never a partly random model)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise PretrainedError(f"{path}: missing (the towers' weights)")
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 (safetensors raises its own types on a damaged file)
        raise PretrainedError(f"{path}: not a readable safetensors file ({exc})") from None
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing:
        raise PretrainedError(
            f"{path}: {prefix}{missing[0]} is missing ({len(missing)} keys the config builds)"
        )
    if unexpected:
        raise PretrainedError(f"{path}: {prefix}{unexpected[0]} is not a weight of the configured towers")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise PretrainedError(
                f"{path}: {prefix}{key} has shape {tuple(tensor.shape)}, the config builds "
                f"{tuple(own[key].shape)}"
            )
    module.load_state_dict(state, strict=True)


class AlignedEncoders(nn.Module):
    """The towers of an exported aligned model: `embed_images`, `embed_audio`, `embed_texts` -> (N, dim)
    float32 CPU tensors with unit L2 norm at any dim in `dims` (the dims it was trained and evaluated at)."""

    def __init__(self, towers: nn.ModuleDict, config: dict[str, Any], folder: Path | None = None) -> None:
        super().__init__()
        self.towers = towers
        self.config = config
        self.folder = folder
        self.max_dim = int(config["projection"]["max_dim"])
        self.dims = sorted(int(d) for d in config["dims"])
        self.batch_size = int(config.get("batch_size", 64))
        towers_cfg = config["towers"]
        image = (towers_cfg.get("vision") or {}).get("preprocess")
        audio = (towers_cfg.get("audio") or {}).get("preprocess")
        self.image_preprocess = (
            ImagePreprocess(**{k: image[k] for k in ("size", "mean", "std")}) if image else None
        )
        self.audio_preprocess = (
            AudioPreprocess(**{k: audio[k] for k in ("n_mels", "n_samples")}) if audio else None
        )

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, device: str | torch.device = "cpu", revision: str | None = None
    ) -> AlignedEncoders:
        """Load an export folder, or a Hub repo id through huggingface_hub.snapshot_download."""
        folder = resolve_folder(name_or_path, revision)
        config = read_config(folder)
        if not (folder / WEIGHTS_NAME).is_file():  # before building towers: name the file, not a symptom
            raise PretrainedError(f"{folder / WEIGHTS_NAME}: missing (the towers' weights)")
        towers = nn.ModuleDict()
        for name, tower_cfg in config["towers"].items():
            towers[name] = _build_tower(folder, name, tower_cfg, config["projection"])
        load_weights_strict(towers, folder / WEIGHTS_NAME)
        model = cls(towers, config, folder)
        return model.to(device).eval().requires_grad_(False)

    @property
    def modalities(self) -> list[str]:
        """The exported towers: a subset of vision, audio, text."""
        return list(self.towers)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check_dim(self, dim: int | None) -> int:
        """`dim`, or the top dim for None; EncoderError unless it is one of `dims`."""
        if dim is None:
            return self.max_dim
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or int(dim) not in self.dims:
            raise EncoderError(f"dim={dim!r} was not trained; use one of {self.dims}")
        return int(dim)

    def _tower(self, modality: str) -> ModalityTower:
        if modality not in self.towers:
            raise EncoderError(f"this model has no {modality} tower (it has {', '.join(self.modalities)})")
        return self.towers[modality]

    @torch.no_grad()
    def _project(self, modality: str, items: Sequence[Any], make_batch: Any) -> torch.Tensor:
        tower = self._tower(modality)
        if len(items) == 0:
            return torch.empty(0, self.max_dim)
        parts = []
        for start in range(0, len(items), self.batch_size):
            batch = make_batch(items[start : start + self.batch_size], start)
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            parts.append(tower(batch).float().cpu())
        return torch.cat(parts)  # (N, max_dim)

    def project_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> raw projections (N, max_dim), not normalized."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self._project("text", texts, lambda chunk, start: {"text": list(chunk)})

    def project_images(self, images: Sequence[Any]) -> torch.Tensor:
        """Image paths or PIL images -> raw projections (N, max_dim)."""
        if isinstance(images, (str, os.PathLike)) or hasattr(images, "convert"):
            images = [images]
        spec = self.image_preprocess

        def batch(chunk: Sequence[Any], start: int) -> dict[str, Any]:
            pixels = torch.empty(len(chunk), 3, spec.size, spec.size)  # (B, 3, S, S)
            for i, item in enumerate(chunk):
                image_pixels(read_image_file(item, f"image {start + i}"), spec, out=pixels[i])
            return {"image": pixels}

        self._tower("vision")
        return self._project("vision", list(images), batch)

    def project_audio(self, waves: Sequence[Any]) -> torch.Tensor:
        """16 kHz mono float waves (1-D arrays / tensors, or one (N, S) array) -> raw projections (N, max_dim)."""
        if isinstance(waves, (np.ndarray, torch.Tensor)):
            waves = [waves] if waves.ndim == 1 else list(waves)
        spec = self.audio_preprocess

        def batch(chunk: Sequence[Any], start: int) -> dict[str, Any]:
            mels, masks = zip(
                *(audio_log_mel(as_wave(w, f"audio {start + i}"), spec) for i, w in enumerate(chunk))
            )
            return {"audio": torch.stack(mels), "audio_mask": torch.stack(masks)}  # (B, M, F), (B, F)

        self._tower("audio")
        return self._project("audio", list(waves), batch)

    def embed_texts(self, texts: Sequence[str], dim: int | None = None) -> torch.Tensor:
        """Texts -> (N, dim) unit-norm embeddings."""
        dim = self.check_dim(dim)
        return truncate_normalize(self.project_texts(texts), dim)

    def embed_images(self, images: Sequence[Any], dim: int | None = None) -> torch.Tensor:
        """Image paths or PIL images -> (N, dim) unit-norm embeddings."""
        dim = self.check_dim(dim)
        return truncate_normalize(self.project_images(images), dim)

    def embed_audio(self, waves: Sequence[Any], dim: int | None = None) -> torch.Tensor:
        """16 kHz mono waves -> (N, dim) unit-norm embeddings."""
        dim = self.check_dim(dim)
        return truncate_normalize(self.project_audio(waves), dim)


class _DropRandomInitNotice(logging.Filter):
    """open_clip logs "No pretrained weights loaded ... initialized randomly" for `pretrained: ""`; here
    that is by design (the weights come from model.safetensors), so the notice would only mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


@contextmanager
def _quiet_random_init() -> Iterator[None]:
    root, notice = logging.getLogger(), _DropRandomInitNotice()
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)


def _build_tower(
    folder: Path, name: str, tower_cfg: dict[str, Any], projection: dict[str, Any]
) -> ModalityTower:
    """One tower of config.json, its folder-relative paths resolved against `folder`."""
    where = f"{folder / CONFIG_NAME}: towers.{name}"
    if name not in ENCODER_CONFIGS or not isinstance(tower_cfg, dict) or "encoder" not in tower_cfg:
        raise PretrainedError(f"{where} is not a vision, audio or text tower with an encoder")
    raw = dict(tower_cfg["encoder"])
    for key in tower_cfg.get("folder_paths", []):
        local = folder / raw[key]
        if not local.exists():
            raise PretrainedError(f"{local}: missing (towers.{name}.encoder.{key} names it)")
        raw[key] = str(local)
    try:
        enc_cfg = encoder_config(name, raw)
        resampler = None
        if tower_cfg.get("resampler"):
            resampler = import_resampler().PerceiverResamplerConfig(**tower_cfg["resampler"])
        with _quiet_random_init():
            return build_tower(name, enc_cfg, MatryoshkaConfig(**projection), resampler)
    except PretrainedError:
        raise
    except (EncoderError, TypeError, ValueError) as exc:
        raise PretrainedError(f"{where}: {exc}") from None
