"""One modality's path into a shared embedding space: encoder -> (Perceiver Resampler) -> pooling ->
Matryoshka projection. The tower an aligned model trains and the tower an exported model embeds with.

Without a resampler the encoder pools its own tokens. With one, the encoder is built with `pooling: none`
(tokens only), the resampler turns the tokens into a fixed number of latents, and the tower pools those
with the pooling settings given for the encoder. The resampler comes from eg-resampler, this package's
`resampler` extra, imported only when a tower has one.

A tower reads its inputs from a batch dict under `BATCH_KEY[modality]` (`image` (B, 3, S, S), `audio`
log-mels (B, n_mels, T) with `audio_mask` (B, T), `text` list[str]), the keys eg-data's collate writes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from eg_encoders.common import EncoderError
from eg_encoders.matryoshka import MatryoshkaConfig
from eg_encoders.pooling import PoolingConfig

MODALITIES = ("vision", "audio", "text")
BATCH_KEY = {"vision": "image", "audio": "audio", "text": "text"}  # the batch-dict key each tower reads
RESAMPLER_INSTALL = "pip install 'eg-encoders[resampler]'"


class TowerConfigError(EncoderError):
    """A tower composition the encoder, resampler and projection settings do not allow; the message starts
    with the key relative to the tower (`encoder.pooling.type=none ...`, `resampler.input_dim=...`)."""


def import_resampler() -> Any:
    """The eg_resampler module; EncoderError saying how to install the `resampler` extra when it is missing."""
    try:
        import eg_resampler
    except ImportError:
        raise EncoderError(
            f"this tower uses a Perceiver Resampler, which needs eg-resampler: {RESAMPLER_INSTALL}"
        ) from None
    return eg_resampler


class ModalityTower(nn.Module):
    """One modality's path into the shared space: (B, ...) inputs -> (B, max_dim) projections (not normalized).

    `encoder`: a built vision, audio or text encoder (tokens only when `resampler_cfg` is given);
    `resampler_cfg`: an eg_resampler PerceiverResamplerConfig or None; `pooling_cfg`: how the resampler's
    latents are pooled (the encoder's own pooling settings).
    """

    def __init__(
        self,
        name: str,
        encoder: nn.Module,
        projection_cfg: MatryoshkaConfig,
        resampler_cfg: Any = None,
        pooling_cfg: PoolingConfig | None = None,
    ) -> None:
        super().__init__()
        if name not in MODALITIES:
            raise EncoderError(f"modality {name!r} is not one of {list(MODALITIES)}")
        self.name = name
        self.encoder = encoder
        self.resampler: nn.Module | None = None
        self.pooling: nn.Module | None = None
        width = encoder.output_dim
        own_pooling = getattr(encoder.config, "pooling", None)
        if resampler_cfg is None:
            width = getattr(encoder, "pooled_dim", width)  # e.g. CLIP's embed_dim with its own projection
            if own_pooling is not None and own_pooling.type == "none":
                raise TowerConfigError(
                    "encoder.pooling.type=none needs a resampler (the tower projects one pooled vector); "
                    "use cls, mean or attention"
                )
        else:
            if own_pooling is None or pooling_cfg is None:
                raise TowerConfigError(f"resampler is not supported: the {name} encoder pools by itself")
            if resampler_cfg.input_dim not in (None, width):
                raise TowerConfigError(
                    f"resampler.input_dim={resampler_cfg.input_dim} differs from the {name} encoder's width "
                    f"{width}; leave it unset"
                )
            self.resampler = dataclasses.replace(resampler_cfg, input_dim=width).build()
            width = resampler_cfg.dim
            self.pooling = pooling_cfg.build(width)
            if self.pooling is None:
                raise TowerConfigError(
                    "encoder.pooling.type=none: the tower pools the resampler's latents with this setting; "
                    "use cls, mean or attention"
                )
        self.projection = projection_cfg.build(width)

    @property
    def token_dim(self) -> int:
        """Width D of `tokens()`: the resampler's latent width, else the encoder's."""
        return self.resampler.config.dim if self.resampler is not None else self.encoder.output_dim

    def encode(self, batch: dict[str, Any]) -> Any:
        """The encoder's output (EncoderOutput: tokens, mask, pooled) for this modality's inputs in `batch`."""
        if self.name == "audio":
            return self.encoder(batch["audio"], batch.get("audio_mask"))
        return self.encoder(batch[BATCH_KEY[self.name]])

    def tokens(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The tower's token sequence: (tokens (B, N, D), mask (B, N) bool, True = valid).

        The resampler's latents (all valid) where the tower has one, else the encoder's tokens and mask.
        """
        out = self.encode(batch)
        if self.resampler is None:
            return out.tokens, out.mask
        latents = self.resampler(out.tokens, out.mask)  # (B, L, D_r)
        return latents, torch.ones(latents.shape[:2], dtype=torch.bool, device=latents.device)

    def pooled(self, batch: dict[str, Any]) -> torch.Tensor:
        """The vector the projection reads: (B, D), the encoder's pooled vector or the pooled latents."""
        if self.resampler is None:
            return self.encode(batch).pooled  # (B, D)
        latents, all_valid = self.tokens(batch)  # (B, L, D_r), (B, L)
        return self.pooling(latents, all_valid)  # (B, D_r)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """The modality's inputs from `batch` -> (B, max_dim)."""
        return self.projection(self.pooled(batch).float())  # (B, max_dim)


def build_tower(
    name: str, encoder_cfg: Any, projection_cfg: MatryoshkaConfig, resampler_cfg: Any = None
) -> ModalityTower:
    """A ModalityTower with its encoder built from `encoder_cfg` (loads the backbone).

    With `resampler_cfg` the encoder is built with `pooling: none` (tokens only) and the tower pools the
    resampler's latents with `encoder_cfg.pooling`.
    """
    if resampler_cfg is None:
        return ModalityTower(name, encoder_cfg.build(), projection_cfg)
    own_pooling = getattr(encoder_cfg, "pooling", None)
    if own_pooling is None:
        raise TowerConfigError(f"resampler is not supported: the {name} encoder pools by itself")
    tokens_only = dataclasses.replace(encoder_cfg, pooling=PoolingConfig(type="none"))
    return ModalityTower(name, tokens_only.build(), projection_cfg, resampler_cfg, own_pooling)
