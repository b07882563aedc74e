"""Config dataclasses, one per decoder kind; the `type` string lets an app pick the kind from YAML.

Plain field types only (str/int/float/bool/list/Optional) so OmegaConf structured configs can hold them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from eg_decoders.errors import DecoderError


@dataclass
class TRMConfig:
    """Tiny Recursive Model decoder (Jolicoeur-Martineau, 2025), adapted to causal decoding.

    n_latent_steps is the paper's n, n_cycles its T, num_supervision_steps its N_sup.
    """

    type: str = "trm"
    hidden_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    n_latent_steps: int = 6
    n_cycles: int = 3
    num_supervision_steps: int = 3
    halting: bool = True
    halt_loss_weight: float = 0.5
    halt_threshold: float = 0.5
    halt_at_inference: bool = True
    max_seq_len: int = 512
    dropout: float = 0.0
    prefix_dim: int = 0  # encoder width; 0 means prefix_embeds already have hidden_size (no projector)
    projector: str = "mlp"  # "linear" or "mlp"


@dataclass
class TinyDecoderConfig:
    """Plain pre-norm causal transformer baseline with the same tokenizer and interface as TRM."""

    type: str = "tiny"
    hidden_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    max_seq_len: int = 512
    dropout: float = 0.0
    prefix_dim: int = 0
    projector: str = "mlp"


@dataclass
class QwenDecoderConfig:
    """A Hugging Face causal LM (hub id or local dir) with LoRA and optional 8/4-bit quantization."""

    type: str = "qwen"
    model_name: str = "Qwen/Qwen2.5-7B-Instruct"
    quantization: str = "none"  # "none", "8bit" or "4bit" (nf4)
    dtype: str = "bfloat16"  # weights dtype of the unquantized parts: "bfloat16", "float16", "float32"
    use_lora: bool = True  # False trains only the projector on a frozen model
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    gradient_checkpointing: bool = False
    use_chat_template: bool = True
    system_prompt: str | None = None
    device: str | None = None  # where a quantized model is loaded; default cuda:<current> or cpu
    max_length: int = 512
    prefix_dim: int = 0
    projector: str = "mlp"


DECODER_CONFIGS: dict[str, type] = {"trm": TRMConfig, "tiny": TinyDecoderConfig, "qwen": QwenDecoderConfig}


def decoder_config_from_dict(values: dict[str, Any]) -> TRMConfig | TinyDecoderConfig | QwenDecoderConfig:
    """Build the config dataclass named by `values["type"]`; unknown types or keys raise DecoderError."""
    kind = values.get("type", "trm")
    if kind not in DECODER_CONFIGS:
        raise DecoderError(f"decoder.type '{kind}' is unknown; use one of {sorted(DECODER_CONFIGS)}")
    cls = DECODER_CONFIGS[kind]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise DecoderError(f"decoder keys {unknown} are not fields of {cls.__name__}; remove or rename them")
    return cls(**values)
