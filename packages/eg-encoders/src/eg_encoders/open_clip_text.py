"""Text encoder from open_clip: the text tower of a CLIP model, tokenized with that model's own tokenizer.

Built by `TextEncoderConfig(backend="open_clip").build()`. The model is loaded through open_clip's public
API (`create_model`, `get_tokenizer`), the same path the open_clip vision backend uses, so a model name and
pretrained tag (e.g. ViT-B-32 / openai) name the same CLIP on both sides. The image tower and the logit
scale are dropped after loading (unused weights break DDP; the alignment losses own their temperature).

tokens: the text transformer's outputs after its final LayerNorm (B, context_length, width); mask: True
where the token is not padding; pooled: CLIP's text embedding, the pooled token (the end-of-text token for
OpenAI CLIP) times CLIP's text projection, i.e. exactly `encode_text` (not normalized).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from torch import nn

from eg_encoders.common import EncoderError, EncoderOutput

if TYPE_CHECKING:
    from eg_encoders.text import TextEncoderConfig


def register_open_clip_config(model_config_file: str) -> None:
    """Register a JSON model config with open_clip (so its file stem is a model name); EncoderError if missing."""
    import open_clip

    if not os.path.isfile(model_config_file):
        raise EncoderError(f"model_config_file={model_config_file!r} does not exist")
    open_clip.add_model_config(model_config_file)


def create_open_clip_model(
    model_name: str, pretrained: str, model_config_file: str, cache_dir: str
) -> nn.Module:
    """open_clip.create_model on the CPU after checking the name and pretrained tag (EncoderError naming the key).

    model_name: an open_clip model name, "hf-hub:org/repo", "local-dir:/path", or the stem of
    `model_config_file`. pretrained: a tag of that model, a checkpoint file, or "" for random init.
    """
    import open_clip

    if model_config_file:
        register_open_clip_config(model_config_file)
    has_schema = model_name.startswith(("hf-hub:", "local-dir:"))
    name = model_name.replace("/", "-")
    if not has_schema and name not in open_clip.list_models():
        raise EncoderError(
            f"model_name={model_name!r} is not an open_clip model; use a name from "
            f"open_clip.list_models() (e.g. 'ViT-B-32'), 'hf-hub:org/repo', 'local-dir:/path', or set "
            f"model_config_file to a JSON model config named after its file stem"
        )
    if pretrained and not has_schema and not os.path.isfile(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise EncoderError(
                f"pretrained={pretrained!r} is neither a checkpoint file nor a tag of {name} "
                f"(tags: {tags}); use '' for random init"
            )
    return open_clip.create_model(
        model_name, pretrained=pretrained or None, cache_dir=cache_dir or None, device="cpu"
    )


class OpenClipTextEncoder(nn.Module):
    """texts list[str] -> EncoderOutput(tokens (B, L, W), mask (B, L), pooled (B, E) = CLIP's encode_text).

    output_dim: W, the token width; pooled_dim: E, CLIP's embed_dim (as the vision encoder's attributes).
    """

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        import open_clip
        from open_clip.model import CLIP

        self.config = config
        model = create_open_clip_model(
            config.model_name, config.pretrained, config.model_config_file, config.cache_dir
        )
        if not isinstance(model, CLIP):
            raise EncoderError(
                f"model_name={config.model_name!r} has no plain CLIP text transformer (open_clip builds a "
                f"{type(model).__name__}); pick a CLIP model such as 'ViT-B-32'"
            )
        model.visual = None  # the image tower: unused here (the vision encoder loads its own)
        del model.logit_scale  # the alignment losses own the temperature
        model.logit_bias = None
        self.model = model
        self.tokenizer = open_clip.get_tokenizer(config.model_name, cache_dir=config.cache_dir or None)
        self.pad_id = int(getattr(self.tokenizer, "pad_token_id", 0) or 0)
        projection = model.text_projection
        self.output_dim: int = int(model.transformer.width)  # token width (as the vision encoder's)
        pooled = self.output_dim
        if isinstance(projection, nn.Linear):
            pooled = projection.out_features
        elif projection is not None:
            pooled = projection.shape[1]
        self.pooled_dim: int = int(pooled)  # CLIP's embed_dim: the width of `pooled`
        self.model.requires_grad_(config.trainable)
        if config.grad_checkpointing:
            self.model.transformer.grad_checkpointing = True
        self.train(self.training)

    def train(self, mode: bool = True) -> OpenClipTextEncoder:
        """Set train mode; a frozen model stays in eval mode (no dropout)."""
        super().train(mode)
        if not self.config.trainable:
            self.model.eval()
        return self

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """texts (B strings) -> (B, context_length) token ids from the model's own open_clip tokenizer."""
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise EncoderError("text input must be a list of strings (use '' for a missing caption)")
        if len(texts) == 0:
            raise EncoderError("text input is an empty list; pass at least one string")
        ids = self.tokenizer(list(texts))  # (B, context_length)
        return ids.to(self.model.token_embedding.weight.device)

    def forward(self, texts: list[str]) -> EncoderOutput:
        """texts (B strings) -> tokens (B, L, W), mask (B, L) bool, pooled (B, E) CLIP text embeddings."""
        ids = self.tokenize(texts)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.trainable):
            tokens, pooled = self.encode_ids(ids)
        return EncoderOutput(tokens=tokens, mask=ids != self.pad_id, pooled=pooled)

    def encode_ids(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, L) -> (tokens (B, L, W) after ln_final, pooled (B, E)): open_clip's CLIP.encode_text,
        which returns only the pooled vector, with the token features kept."""
        from open_clip.transformer import text_global_pool

        model = self.model
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(ids).to(cast_dtype)  # (B, L, W)
        x = x + model.positional_embedding.to(cast_dtype)
        x = model.transformer(x, attn_mask=model.attn_mask)
        tokens = model.ln_final(x)  # (B, L, W)
        pooled = text_global_pool(
            tokens, ids, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None)
        )
        projection = model.text_projection
        if isinstance(projection, nn.Linear):
            pooled = projection(pooled)
        elif projection is not None:
            pooled = pooled @ projection  # (B, E)
        return tokens, pooled
