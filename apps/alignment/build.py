"""Building stage 1 from its config: the demo assets a training run may need first, the towers, the model,
and `load_aligned`, which rebuilds a trained model from the config stored in its checkpoint.

Training and evaluation share `build_model`; only training calls `prepare_assets` (which writes the demo
backbones and data where configured and missing), so evaluating or loading a checkpoint writes nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from eg_data import build_demo_dataset, read_all
from eg_encoders import MatryoshkaConfig, PoolingConfig
from eg_encoders.tower import ModalityTower, TowerConfigError
from eg_train import barrier, load_checkpoint, load_model_weights
from torch import nn

from apps.alignment import demo_models
from apps.alignment.config import AlignmentConfig
from apps.alignment.model import AlignmentModel
from apps.common.config import ConfigError, build_config
from apps.common.loaders import train_folders


def prepare_assets(cfg: AlignmentConfig, is_main: bool) -> None:
    """Write the demo backbones and build the demo dataset where configured and missing (rank 0 writes).

    Order matters: the demo images are built at the vision encoder's size, and the demo text model's
    vocabulary comes from the training captions.
    """
    if cfg.demo_models is not None and is_main:
        demo_models.write_vision_audio(cfg.demo_models)
    barrier()
    if cfg.data.build_demo and is_main:
        vision = cfg.model.vision
        size = vision.encoder.build().image_spec.size if vision is not None else 32
        build_demo_dataset(cfg.data.build_demo, image_size=size, seed=cfg.seed)
    barrier()
    if cfg.demo_models is not None and is_main:
        captions = []
        for key, train_dir in train_folders(cfg.data.train):  # every source of a mixture
            if not Path(train_dir).is_dir():
                raise ConfigError(f"{key}={train_dir!r} does not exist; the demo text model needs it")
            captions += [
                s["txt"].decode() if isinstance(s.get("txt"), bytes) else str(s.get("txt", ""))
                for s in read_all(train_dir)
            ]
        demo_models.write_text(cfg.demo_models, captions)
    barrier()


def _tower(name: str, tower_cfg: Any, projection: MatryoshkaConfig) -> ModalityTower:
    """eg-encoders' ModalityTower (the one an export loads); with a resampler the encoder returns tokens only
    and the tower pools the latents. A composition the tower refuses names its key as the YAML writes it."""
    encoder_cfg = tower_cfg.encoder
    resampler = getattr(tower_cfg, "resampler", None)
    try:
        if resampler is None:
            return ModalityTower(name, encoder_cfg.build(), projection)
        tokens_only = dataclasses.replace(encoder_cfg, pooling=PoolingConfig(type="none"))
        return ModalityTower(name, tokens_only.build(), projection, resampler, encoder_cfg.pooling)
    except TowerConfigError as err:  # its message starts with the key relative to the tower
        raise ConfigError(f"model.{name}.{err}") from None


def build_towers(cfg: AlignmentConfig) -> nn.ModuleDict:
    """One ModalityTower per configured modality, its encoder loaded from the configured backbone."""
    towers = nn.ModuleDict()
    for name in cfg.modalities():
        towers[name] = _tower(name, getattr(cfg.model, name), cfg.model.projection)
    return towers


def build_model(cfg: AlignmentConfig) -> AlignmentModel:
    """The AlignmentModel of `cfg`, seeded by `cfg.seed` so every rank starts from the same weights."""
    torch.manual_seed(cfg.seed)
    return AlignmentModel(cfg, build_towers(cfg))


@dataclass
class Aligned:
    """A trained stage-1 model: its resolved config, the model and the towers (frozen, eval mode)."""

    config: AlignmentConfig
    model: AlignmentModel
    checkpoint: str
    step: int

    @property
    def towers(self) -> nn.ModuleDict:
        """{modality: ModalityTower}, each (B, ...) inputs -> (B, max_dim) or `.tokens(batch)`."""
        return self.model.towers


def config_of_checkpoint(checkpoint: str | Path) -> AlignmentConfig:
    """The stage-1 config stored in `checkpoint`, validated as if it had been loaded from YAML."""
    ckpt = load_checkpoint(checkpoint)
    raw: dict[str, Any] = ckpt.get("run_config") or {}
    if raw.get("stage", "alignment") != "alignment" or "model" not in raw:
        raise ConfigError(
            f"{checkpoint}: not a stage-1 (alignment) checkpoint; its config has no stage-1 model"
        )
    return build_config(AlignmentConfig, raw, f"{checkpoint} (stored config)")


def load_aligned(checkpoint: str | Path, device: str | torch.device = "cpu") -> Aligned:
    """Rebuild the stage-1 model from the config stored in `checkpoint` and load its weights strictly.

    A folder written by apps/export is read by `load_exported` (the same towers, through eg-encoders).
    A key missing from the checkpoint, a key the rebuilt model lacks, or a shape that differs is a one-line
    error naming the key and the file (never a silently random tower). The backbone files the config names
    (pretrained weights of frozen parts) must be where they were when the model was trained.
    """
    if Path(checkpoint).is_dir():
        return load_exported(checkpoint, device)
    cfg = config_of_checkpoint(checkpoint)
    model = build_model(cfg)
    meta = load_model_weights(model, checkpoint)
    model.to(device).eval().requires_grad_(False)
    return Aligned(config=cfg, model=model, checkpoint=str(checkpoint), step=int(meta.get("step") or 0))


def load_exported(folder: str | Path, device: str | torch.device = "cpu") -> Aligned:
    """The stage-1 model of an apps/export folder: its towers from `AlignedEncoders.from_pretrained` (the
    one loading path eg-encoders users have), its run config from config.json's `run_config` (encoder paths
    resolved inside the folder), so the Embedder, search and stage 2 read the folder as they read a .pt."""
    from eg_encoders import AlignedEncoders

    encoders = AlignedEncoders.from_pretrained(folder)
    raw = dict(encoders.config.get("run_config") or {})
    where = f"{Path(folder) / 'config.json'}"
    if "model" not in raw:
        raise ConfigError(f"{where}: run_config is missing (export it again with apps/export)")
    raw["model"] = dict(raw["model"])
    for name, tower in encoders.config["towers"].items():
        encoder = dict(tower["encoder"])
        for key in tower.get("folder_paths", []):
            encoder[key] = str(Path(folder) / encoder[key])
        raw["model"][name] = {**raw["model"][name], "encoder": encoder}
    cfg = build_config(AlignmentConfig, raw, f"{where} (run_config)")
    model = AlignmentModel(cfg, encoders.towers)
    model.to(device).eval().requires_grad_(False)
    step = int((encoders.config.get("source") or {}).get("step") or 0)
    return Aligned(config=cfg, model=model, checkpoint=str(folder), step=step)
