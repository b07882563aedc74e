"""Text encoders behind one config: a sentence-transformers model run module by module, with or without
gradients (`TextEncoder`), or (backend "open_clip") the text tower of an open_clip CLIP model
(`OpenClipTextEncoder`). `TextEncoderConfig.build()` picks the class; both live here, beside their config,
so neither imports the other's module.

sentence-transformers: `SentenceTransformer.encode()` always runs without gradients, so this encoder
tokenizes with the model's own preprocessing and calls the modules (`model(features)`) directly: trainable
when configured, under `torch.no_grad()` when frozen. Tokens are the transformer's token embeddings, the
mask its attention mask, and pooled the model's sentence embedding (its own Pooling/Dense/Normalize
modules). The text encoder has no `pooling` setting: a sentence-transformers model pools by itself (its
Pooling module is part of the saved model, usually parameter-free), so `pooled` is always set; a caller
that only wants tokens ignores it. sentence-transformers is imported without bitsandbytes (see
`import_sentence_transformers`).

open_clip: the model is loaded through open_clip's public API (`create_model`, `get_tokenizer`) by
`open_clip_models.create_open_clip_model`, the same path the open_clip vision backend uses, so a model
name and pretrained tag (e.g. ViT-B-32 / openai) name the same CLIP on both sides. The image tower and the
logit scale are dropped after loading (unused weights break DDP; the alignment losses own their
temperature). tokens: the text transformer's outputs after its final LayerNorm (B, context_length,
width); mask: True where the token is not padding; pooled: CLIP's text embedding, the pooled token (the
end-of-text token for OpenAI CLIP) times CLIP's text projection, i.e. exactly `encode_text` (not
normalized).
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import nn

from eg_encoders.common import (
    EncoderError,
    EncoderOutput,
    check_choice,
    check_int,
    first_line,
    is_missing,
    quiet_progress_bars,
)
from eg_encoders.open_clip_models import create_open_clip_model, open_clip_model_config

BACKENDS = ("sentence_transformers", "open_clip")


@dataclass
class TextEncoderConfig:
    """Text encoder settings; checked when constructed (EncoderError naming the key)."""

    backend: str = "sentence_transformers"
    """sentence_transformers, or open_clip: the text tower of an open_clip CLIP model, tokenized with that
    model's own open_clip tokenizer; pooled = CLIP's text embedding, its projection included."""
    model_name: str = "sentence-transformers/all-MiniLM-L6-v2"
    """sentence_transformers: a hub name ("sentence-transformers/all-MiniLM-L6-v2") or a local directory saved
    by SentenceTransformer.save(). open_clip: an open_clip model name ("ViT-B-32"), "hf-hub:org/repo",
    "local-dir:/path", or the file stem of `model_config_file`."""
    pretrained: str = ""
    """open_clip only: a pretrained tag ("openai"), a checkpoint file, or "" for random init."""
    model_config_file: str = ""
    """open_clip only: a JSON model config registered with open_clip ("" = none)."""
    cache_dir: str = ""
    """Download cache ("" = the library's default)."""
    trainable: bool = False
    """True = fine-tune the whole model; False = frozen (no gradients, eval mode)."""
    grad_checkpointing: bool = False
    """Recompute activations in backward to save memory (trainable only)."""
    max_seq_length: int = 0
    """sentence_transformers only: truncate texts to this many tokens (0 = the model's own setting). open_clip
    models have a fixed context length (their tokenizer pads and truncates to it)."""

    def __post_init__(self) -> None:
        """Raise EncoderError naming the first bad key (values still omegaconf.MISSING are skipped)."""
        check_choice(self.backend, BACKENDS, "backend")
        if self.model_name == "":
            raise EncoderError("model_name is empty; name a sentence-transformers model or directory")
        check_int(self.max_seq_length, "max_seq_length", 0)
        if self.backend == "sentence_transformers":
            for key in ("pretrained", "model_config_file"):
                value = getattr(self, key)
                if value and not is_missing(value):
                    raise EncoderError(
                        f"{key}={value!r} is an open_clip setting; set it to '' for backend "
                        "'sentence_transformers' (or set backend: open_clip)"
                    )
        elif self.backend == "open_clip" and not is_missing(self.max_seq_length) and self.max_seq_length:
            raise EncoderError(
                f"max_seq_length={self.max_seq_length} is a sentence_transformers setting; an open_clip "
                "model's context length is fixed by its config (use 0)"
            )

    def pooled_width(self) -> int | None:
        """The width of `pooled` that `build()` will give (its `pooled_dim`), from config files only:
        CLIP's embed_dim for backend open_clip; None for sentence_transformers (known once loaded) or when
        unknown offline."""
        if self.backend != "open_clip" or is_missing(self.model_name):
            return None
        cache_dir = None if is_missing(self.cache_dir) else self.cache_dir or None
        config_file = "" if is_missing(self.model_config_file) else self.model_config_file
        width = (open_clip_model_config(self.model_name, config_file, cache_dir) or {}).get("embed_dim")
        return width if isinstance(width, int) else None

    def build(self) -> TextEncoder | OpenClipTextEncoder:
        """The text encoder of `backend` with these settings (loads the model)."""
        if self.backend == "open_clip":
            return OpenClipTextEncoder(self)
        return TextEncoder(self)


class TextEncoder(nn.Module):
    """texts list[str] -> EncoderOutput(tokens (B, L, D), mask (B, L), pooled (B, D') sentence embedding)."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        if config.backend != "sentence_transformers":
            raise EncoderError(f"backend={config.backend!r}: build it with TextEncoderConfig.build()")
        self.config = config
        self.model = _load_sentence_transformer(config)
        transformer = self.model[0]
        auto_model = getattr(transformer, "auto_model", None)
        if auto_model is not None and getattr(auto_model, "pooler", None) is not None:
            # BERT's pooler head is never used by sentence-transformers; unused weights break DDP
            auto_model.pooler = None
        if config.max_seq_length > 0:
            self.model.max_seq_length = config.max_seq_length
        self.model.requires_grad_(config.trainable)
        if config.grad_checkpointing:
            self.model.gradient_checkpointing_enable()
        dim = self.model.get_embedding_dimension()
        if dim is None:
            raise EncoderError(f"model_name={config.model_name!r} has no sentence embedding dimension")
        self.output_dim: int = int(dim)
        self.train(self.training)

    def train(self, mode: bool = True) -> TextEncoder:
        """Set train mode; a frozen model stays in eval mode (no dropout)."""
        super().train(mode)
        if not self.config.trainable:
            self.model.eval()
        return self

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenize with the model's own preprocessing; tensors land on the model's device."""
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise EncoderError("text input must be a list of strings (use '' for a missing caption)")
        if len(texts) == 0:
            raise EncoderError("text input is an empty list; pass at least one string")
        features = self.model.preprocess(list(texts))
        device = next(self.model.parameters()).device
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in features.items()}

    def forward(self, texts: list[str]) -> EncoderOutput:
        """texts (B strings) -> tokens (B, L, D), mask (B, L) bool, pooled (B, D') sentence embeddings."""
        features = self.tokenize(texts)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.trainable):
            out = self.model(features)
        mask = out["attention_mask"].bool()  # (B, L)
        return EncoderOutput(tokens=out["token_embeddings"], mask=mask, pooled=out["sentence_embedding"])


def import_sentence_transformers() -> ModuleType:
    """Import sentence_transformers without letting it import bitsandbytes.

    sentence_transformers imports transformers' TrainerCallback, whose trainer_utils imports peft when
    peft is installed, and peft imports bitsandbytes when that is installed (in the Edge Glass workspace
    both come with eg-decoders). A text encoder uses neither, and importing bitsandbytes costs time and logs
    a warning on machines without its optional `kernels` package. So while sentence_transformers loads,
    bitsandbytes is marked unimportable (peft guards that import with try/except), then unmarked: a later
    `import bitsandbytes` (e.g. an 8-bit decoder) works as usual. The one trace left: peft's `helpers`
    module keeps `bnb = None`, which only its `find_kappa_target_modules` reads.
    """
    if "sentence_transformers" in sys.modules or "bitsandbytes" in sys.modules:
        return importlib.import_module("sentence_transformers")
    sys.modules["bitsandbytes"] = None  # type: ignore[assignment]  # makes `import bitsandbytes` raise
    try:
        return importlib.import_module("sentence_transformers")
    finally:
        if sys.modules.get("bitsandbytes", 0) is None:
            del sys.modules["bitsandbytes"]


def _load_sentence_transformer(config: TextEncoderConfig):
    sentence_transformer = import_sentence_transformers().SentenceTransformer

    name = os.path.expanduser(config.model_name)
    if name.startswith((".", "/")) and not os.path.isdir(name):
        raise EncoderError(f"model_name={name!r} is not an existing directory (a sentence-transformers save)")
    try:
        with quiet_progress_bars():
            return sentence_transformer(
                name,
                device="cpu",
                cache_folder=config.cache_dir or None,
                local_files_only=os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"),
            )
    except (OSError, ValueError) as exc:
        raise EncoderError(
            f"model_name={name!r} could not be loaded as a sentence-transformers model (a hub name "
            f"such as 'sentence-transformers/all-MiniLM-L6-v2' or a local directory): "
            f"{first_line(exc)}"
        ) from None


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
