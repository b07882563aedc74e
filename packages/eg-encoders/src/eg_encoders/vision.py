"""Vision encoder: a CLIP ViT from open_clip or Hugging Face `CLIPVisionModel`, with its tokens and pooling.

Tokens are the backbone's final-block outputs after its own final LayerNorm, class token first then the
patches (B, 1 + num_patches, width); the CLIP projection head is dropped (unused weights would break DDP
without `find_unused_parameters`), and the pooled vector comes from this package's pooling module.
`image_spec` reports the input size and normalization the backbone was trained with, for eg-data.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from eg_encoders.common import (
    EncoderError,
    EncoderOutput,
    apply_trainable_blocks,
    check_choice,
    check_trainable_blocks,
    first_line,
    is_missing,
    quiet_progress_bars,
)
from eg_encoders.open_clip_models import (
    cached_config_file,
    create_open_clip_model,
    open_clip_model_config,
    read_json,
)
from eg_encoders.pooling import PoolingConfig

BACKENDS = ("open_clip", "hf")

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ImageSpec:
    """What the vision backbone expects: square `size` pixels, per-channel `mean` and `std` (RGB, 0..1)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass
class VisionEncoderConfig:
    """Vision encoder settings; checked when constructed (EncoderError naming the key).

    Whether names and files exist, and k of `trainable_blocks` against the backbone's depth, are checked when
    the encoder is built.
    """

    backend: str = "open_clip"
    """open_clip or hf (a Hugging Face CLIPVisionModel)."""
    model_name: str = "ViT-L-14-336"
    """open_clip: a model name (e.g. "ViT-L-14-336", also "hf-hub:org/repo" / "local-dir:/path", or the file
    stem of `model_config_file`); hf: a hub id ("openai/clip-vit-large-patch14") or a local directory."""
    pretrained: str = "openai"
    """open_clip only: a pretrained tag ("openai"), a local checkpoint file, or "" for random init. Must be ""
    for backend hf (the weights come from model_name)."""
    model_config_file: str = ""
    """open_clip only: a JSON model config registered with open_clip.add_model_config, so model_name may be
    its file stem ("" = none)."""
    cache_dir: str = ""
    """Download cache for open_clip tags / HF hub ids ("" = the library's default)."""
    trainable_blocks: int = 0
    """0 = frozen, -1 = train all, k = train the last k transformer blocks (+ final norm)."""
    grad_checkpointing: bool = False
    """Recompute block activations in backward to save memory."""
    pooling: PoolingConfig = field(default_factory=lambda: PoolingConfig(type="cls"))
    """How tokens become the pooled vector (`type: none`: no pooling, `pooled` is None)."""
    clip_projection: bool = False
    """open_clip only: keep CLIP's own image projection, so `pooled` is CLIP's image embedding (the class
    token after ln_post times `proj`, exactly `encode_image`; needs `pooling.type: cls`) and `pooled_dim`
    is CLIP's embed_dim. False: the projection is dropped and `pooled` has the token width."""

    def __post_init__(self) -> None:
        """Raise EncoderError naming the first bad key (values still omegaconf.MISSING are skipped)."""
        check_choice(self.backend, BACKENDS, "backend")
        if self.model_name == "":
            raise EncoderError("model_name is empty; name an open_clip model or a CLIPVisionModel")
        check_trainable_blocks(self.trainable_blocks)
        if self.clip_projection is True and not is_missing(self.pooling.type) and self.pooling.type != "cls":
            raise EncoderError(
                f"pooling.type={self.pooling.type!r}: clip_projection pools the class token as CLIP does; "
                "use pooling type cls (or clip_projection: false)"
            )
        if self.backend == "hf":
            if self.clip_projection is True:
                raise EncoderError("clip_projection=true is an open_clip setting; use backend open_clip")
            for key in ("pretrained", "model_config_file"):
                value = getattr(self, key)
                if value and not is_missing(value):
                    raise EncoderError(
                        f"{key}={value!r} is an open_clip setting; set it to '' for backend 'hf' "
                        "(put the hub id or local directory in model_name)"
                    )

    def build(self) -> VisionEncoder:
        """A VisionEncoder with these settings (loads the backbone)."""
        return VisionEncoder(self)

    def image_size(self) -> int | None:
        """The square input size in pixels that `build()` will expect (its `image_spec.size`), read from
        config files only: no weights are loaded, nothing is downloaded, open_clip is not imported.

        open_clip: `model_config_file` when model_name is its stem, else open_clip's bundled config of
        model_name, a `local-dir:` folder's or a cached `hf-hub:` repo's open_clip_config.json. hf: config.json
        of a local directory or of a hub id already in the cache. None when it cannot be known offline (an
        unknown name, a hub repo not in the cache, a config without an image size), or while a value is
        still omegaconf.MISSING. Raises EncoderError for a model_config_file that does not exist.
        """
        if is_missing(self.model_name) or is_missing(self.backend):
            return None
        cache_dir = None if is_missing(self.cache_dir) else self.cache_dir or None
        if self.backend == "hf":
            path = cached_config_file(self.model_name, "config.json", cache_dir)
            config = read_json(path) if path else None
            vision = (config or {}).get("vision_config", config)  # a full CLIPConfig nests the tower's
            return _square_size(vision)
        config_file = "" if is_missing(self.model_config_file) else self.model_config_file
        model_cfg = open_clip_model_config(self.model_name, config_file, cache_dir)
        return _square_size((model_cfg or {}).get("vision_cfg"))

    def pooled_width(self) -> int | None:
        """The width of `pooled` that `build()` will give (its `pooled_dim`), from config files only like
        `image_size`: CLIP's embed_dim with `clip_projection`, else the open_clip ViT's width. None when
        unknown offline (and for backend hf)."""
        if is_missing(self.model_name) or is_missing(self.backend) or self.backend != "open_clip":
            return None
        cache_dir = None if is_missing(self.cache_dir) else self.cache_dir or None
        config_file = "" if is_missing(self.model_config_file) else self.model_config_file
        model_cfg = open_clip_model_config(self.model_name, config_file, cache_dir) or {}
        width = (
            model_cfg.get("embed_dim")
            if self.clip_projection
            else (model_cfg.get("vision_cfg") or {}).get("width")
        )
        return width if isinstance(width, int) else None


class VisionEncoder(nn.Module):
    """images (B, 3, S, S), normalized per `image_spec` -> EncoderOutput(tokens (B, 1+P, D), mask, pooled)."""

    def __init__(self, config: VisionEncoderConfig) -> None:
        super().__init__()
        self.config = config
        if config.backend == "open_clip":
            self.backbone, self.image_spec, blocks, tail = _load_open_clip(config)
        else:
            self.backbone, self.image_spec, blocks, tail = _load_hf(config)
        self._blocks = blocks
        self.output_dim: int = tail[0].normalized_shape[0]  # token width
        clip_proj = self.backbone.proj if config.clip_projection else None
        self.pooled_dim: int = self.output_dim if clip_proj is None else int(clip_proj.shape[1])
        apply_trainable_blocks(self.backbone, blocks, tail, config.trainable_blocks)
        if clip_proj is not None and config.trainable_blocks > 0:
            clip_proj.requires_grad_(True)  # the projection follows the last blocks, so it trains with them
        self.frozen = config.trainable_blocks == 0
        if config.grad_checkpointing:
            if config.backend == "open_clip":
                self.backbone.set_grad_checkpointing(True)
            else:
                self.backbone.gradient_checkpointing_enable()
        self.pooling = config.pooling.build(self.output_dim)  # None for pooling type "none"
        self.train(self.training)

    def train(self, mode: bool = True) -> VisionEncoder:
        """Set train mode; a frozen backbone stays in eval mode (its dropout/statistics stay fixed)."""
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        """images (B, 3, S, S) -> tokens (B, 1+P, D) (class token first), mask all True, pooled (B, D) or None."""
        self._check_images(images)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            tokens = self._tokens(images)  # (B, 1+P, D)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)  # (B, 1+P)
        pooled = None if self.pooling is None else self.pooling(tokens, mask)  # (B, D)
        if self.config.clip_projection:
            pooled = pooled @ self.backbone.proj  # (B, E), CLIP's image embedding
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled)

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        dtype = next(self.backbone.parameters()).dtype
        images = images.to(dtype)
        if self.config.backend == "open_clip":
            out = self.backbone.forward_intermediates(
                images,
                indices=1,
                normalize_intermediates=True,
                intermediates_only=True,
                output_fmt="NLC",
                output_extra_tokens=True,
            )
            cls = out["image_intermediates_prefix"][0]  # (B, 1, D), after ln_post
            patches = out["image_intermediates"][0]  # (B, P, D), after ln_post
            return torch.cat([cls, patches], dim=1)
        inner = getattr(self.backbone, "vision_model", self.backbone)
        hidden = self.backbone(pixel_values=images).last_hidden_state  # (B, 1+P, D)
        return inner.post_layernorm(hidden)

    def _check_images(self, images: torch.Tensor) -> None:
        size = self.image_spec.size
        if images.ndim != 4 or images.shape[1] != 3:
            raise EncoderError(
                f"vision input has shape {tuple(images.shape)}; expected (B, 3, {size}, {size}) RGB images"
            )
        if images.shape[-2:] != (size, size):
            raise EncoderError(
                f"vision input is {images.shape[-2]}x{images.shape[-1]} pixels; this backbone expects "
                f"{size}x{size} (resize with image_spec)"
            )


def _load_open_clip(config: VisionEncoderConfig):
    from open_clip.transformer import VisionTransformer

    model = create_open_clip_model(
        config.model_name, config.pretrained, config.model_config_file, config.cache_dir
    )
    visual = model.visual
    if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None:
        raise EncoderError(
            f"model_name={config.model_name!r} is not a plain open_clip ViT (ResNet, timm and CoCa "
            f"towers are not supported); pick a ViT-* model"
        )
    if not config.clip_projection:
        visual.proj = None  # the CLIP projection is unused here; see the module docstring
    elif visual.proj is None or visual.pool_type != "tok" or visual.final_ln_after_pool:
        raise EncoderError(
            f"clip_projection=true: {config.model_name!r} does not pool its class token into a projection "
            "(pool_type 'tok', LayerNorm before pooling); set clip_projection: false"
        )
    size = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
    spec = ImageSpec(int(size), tuple(visual.image_mean), tuple(visual.image_std))
    return visual, spec, list(visual.transformer.resblocks), [visual.ln_post]


def _load_hf(config: VisionEncoderConfig):
    from transformers import CLIPVisionModel

    cache_dir = config.cache_dir or None
    try:
        with quiet_progress_bars():
            model = CLIPVisionModel.from_pretrained(config.model_name, cache_dir=cache_dir)
    except OSError as exc:
        raise EncoderError(
            f"model_name={config.model_name!r} is not a loadable CLIPVisionModel (hub id such as "
            f"'openai/clip-vit-large-patch14' or a local directory with config.json): "
            f"{first_line(exc)}"
        ) from None
    inner = getattr(model, "vision_model", model)
    spec = _hf_image_spec(config.model_name, int(model.config.image_size), cache_dir)
    return model, spec, list(inner.encoder.layers), [inner.post_layernorm]


def _hf_image_spec(model_name: str, size: int, cache_dir: str | None) -> ImageSpec:
    """Mean/std from the model's preprocessor_config.json when it has one, else the OpenAI CLIP values."""
    path = os.path.join(model_name, "preprocessor_config.json")
    if not os.path.isdir(model_name):
        try:
            from transformers.utils import cached_file

            path = cached_file(model_name, "preprocessor_config.json", cache_dir=cache_dir) or ""
        except OSError:  # the preprocessor file is optional: fall back to the CLIP defaults
            path = ""
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            pre = json.load(f)
        mean, std = pre.get("image_mean", OPENAI_CLIP_MEAN), pre.get("image_std", OPENAI_CLIP_STD)
        return ImageSpec(size, tuple(mean), tuple(std))
    return ImageSpec(size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


def _square_size(vision_cfg: object) -> int | None:
    """`image_size` of a vision config dict (an int, or [h, w] of which the encoder uses h), else None."""
    size = vision_cfg.get("image_size") if isinstance(vision_cfg, dict) else None
    if isinstance(size, (list, tuple)) and size:
        size = size[0]
    return int(size) if isinstance(size, int) and not isinstance(size, bool) else None
