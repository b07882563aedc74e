"""Config dataclasses, one per decoder kind; each checks itself when constructed and builds its decoder.

Plain field types only (str/int/float/bool/list/Optional) so OmegaConf structured configs can hold them.
The `type` string names the kind in YAML and in a saved `decoder_config.json`; `decoder_config_from_dict`
reads such a dict. A message starts with the key as the dataclass names it (`hidden_size 30 must be
divisible by num_heads 4`), without a prefix: the application that nests the config adds its path.
Values equal to omegaconf's MISSING ("???") are left unchecked until they are set.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from eg_decoders.errors import DecoderError, is_missing

if TYPE_CHECKING:
    from eg_decoders.qwen import QwenDecoder
    from eg_decoders.tiny import TinyDecoder
    from eg_decoders.trm import TRMDecoder

PROJECTOR_KINDS = ("linear", "mlp")
QUANTIZATIONS = ("none", "8bit", "4bit")
DTYPE_NAMES = ("bfloat16", "float16", "float32")
# what the Qwen decoder imports (the `qwen` extra); the last two only for 8/4-bit loading
QWEN_MODULES = ("transformers", "peft", "bitsandbytes", "accelerate")
QWEN_EXTRA_INSTALL = "pip install 'eg-decoders[qwen]'"


def _check_type(config: Any, kind: str) -> None:
    if not is_missing(config.type) and config.type != kind:
        raise DecoderError(f"type must be '{kind}' for {type(config).__name__}, got {config.type!r}")


def _check_int(config: Any, key: str, minimum: int) -> None:
    value = getattr(config, key)
    if is_missing(value):
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise DecoderError(f"{key} must be an integer, got {value!r}")
    if value < minimum:
        raise DecoderError(f"{key} must be >= {minimum}, got {value}")


def _check_range(config: Any, key: str, low: float, high: float, high_open: bool) -> None:
    value = getattr(config, key)
    if is_missing(value):
        return
    inside = low <= value < high if high_open else low <= value <= high
    if not inside:
        raise DecoderError(f"{key} must be in [{low}, {high}{')' if high_open else ']'}, got {value}")


def _check_choice(config: Any, key: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, key)
    if not is_missing(value) and value not in choices:
        raise DecoderError(f"{key} {value!r} is unknown; use one of {list(choices)}")


def _check_small(config: Any) -> None:
    """Checks shared by the byte-level tiny decoders (TRM and the baseline)."""
    for key in ("hidden_size", "num_layers", "num_heads"):
        _check_int(config, key, 1)
    _check_int(config, "max_seq_len", 2)
    _check_int(config, "prefix_dim", 0)
    size, heads = config.hidden_size, config.num_heads
    if not is_missing(size) and not is_missing(heads) and size % heads:
        raise DecoderError(f"hidden_size {size} must be divisible by num_heads {heads}")
    if not is_missing(config.mlp_ratio) and not config.mlp_ratio > 0:
        raise DecoderError(f"mlp_ratio must be > 0, got {config.mlp_ratio}")
    _check_range(config, "dropout", 0.0, 1.0, high_open=True)
    _check_choice(config, "projector", PROJECTOR_KINDS)


@dataclass
class TRMConfig:
    """Tiny Recursive Model decoder (Jolicoeur-Martineau, 2025), adapted to causal decoding.

    n_latent_steps is the paper's n, n_cycles its T, num_supervision_steps its N_sup.
    """

    type: str = "trm"
    """The decoder kind, always trm (names it in YAML and in a saved decoder_config.json)."""
    hidden_size: int = 256
    """Width of the token embeddings and of every block."""
    num_layers: int = 2
    """Causal blocks of the one tiny network f that does every recursion update."""
    num_heads: int = 4
    """Attention heads; hidden_size must divide by it."""
    mlp_ratio: float = 4.0
    """SwiGLU hidden width = int(hidden_size * mlp_ratio)."""
    n_latent_steps: int = 6
    """The paper's n: latent updates z <- f(z + x + y) per cycle, before the answer update y <- f(y + z)."""
    n_cycles: int = 3
    """The paper's T: cycles per supervision step; the first T-1 run without gradients."""
    num_supervision_steps: int = 3
    """The paper's N_sup: deep supervision steps, each scored by the answer loss, with (y, z) detached between
    them."""
    halting: bool = True
    """Add the halting head, trained (BCE) on whether the current prediction of the next token is right."""
    halt_loss_weight: float = 0.5
    """Weight of the halting BCE added to each supervision step's answer loss."""
    halt_threshold: float = 0.5
    """At generation, a row stops refining the next token once its halting probability passes this."""
    halt_at_inference: bool = True
    """Use the halting head to stop early at generation (false: always run every supervision step)."""
    max_seq_len: int = 512
    """Positions (prefix + question + answer) of the learned position embedding; longer sequences are refused.
    """
    dropout: float = 0.0
    """Dropout on the attention weights and after the attention and feed-forward sublayers (training only)."""
    prefix_dim: int = 0
    """Width of the prefix embeddings, projected to hidden_size by a `projector`; 0 = they already have
    hidden_size (no projector)."""
    projector: str = "mlp"
    """Kind of prefix projector: linear, or mlp (LLaVA-1.5 style: Linear, GELU, Linear)."""

    def __post_init__(self) -> None:
        """Raise DecoderError naming the first bad key."""
        _check_type(self, "trm")
        _check_small(self)
        for key in ("n_latent_steps", "n_cycles", "num_supervision_steps"):
            _check_int(self, key, 1)
        if not is_missing(self.halt_loss_weight) and not self.halt_loss_weight >= 0:
            raise DecoderError(f"halt_loss_weight must be >= 0, got {self.halt_loss_weight}")
        _check_range(self, "halt_threshold", 0.0, 1.0, high_open=False)

    def build(self) -> TRMDecoder:
        """A fresh (randomly initialized) TRMDecoder with these settings."""
        from eg_decoders.trm import TRMDecoder

        return TRMDecoder(self)


@dataclass
class TinyDecoderConfig:
    """Plain pre-norm causal transformer baseline with the same tokenizer and interface as TRM."""

    type: str = "tiny"
    """The decoder kind, always tiny (names it in YAML and in a saved decoder_config.json)."""
    hidden_size: int = 256
    """Width of the token embeddings and of every block."""
    num_layers: int = 2
    """Transformer blocks (causal, pre-norm, SwiGLU feed-forward)."""
    num_heads: int = 4
    """Attention heads; hidden_size must divide by it."""
    mlp_ratio: float = 4.0
    """SwiGLU hidden width = int(hidden_size * mlp_ratio)."""
    max_seq_len: int = 512
    """Positions (prefix + question + answer) of the learned position embedding; longer sequences are refused.
    """
    dropout: float = 0.0
    """Dropout on the attention weights and after the attention and feed-forward sublayers (training only)."""
    prefix_dim: int = 0
    """Width of the prefix embeddings, projected to hidden_size by a `projector`; 0 = they already have
    hidden_size (no projector)."""
    projector: str = "mlp"
    """Kind of prefix projector: linear, or mlp (LLaVA-1.5 style: Linear, GELU, Linear)."""

    def __post_init__(self) -> None:
        """Raise DecoderError naming the first bad key."""
        _check_type(self, "tiny")
        _check_small(self)

    def build(self) -> TinyDecoder:
        """A fresh (randomly initialized) TinyDecoder with these settings."""
        from eg_decoders.tiny import TinyDecoder

        return TinyDecoder(self)


@dataclass
class QwenDecoderConfig:
    """A Hugging Face causal LM (hub id or local dir) with LoRA and optional 8/4-bit quantization."""

    type: str = "qwen"
    """The decoder kind, always qwen (names it in YAML and in a saved decoder_config.json)."""
    model_name: str = "Qwen/Qwen2.5-7B-Instruct"
    """A Hugging Face causal LM: a hub id (from the local cache when offline) or a local directory with its
    tokenizer."""
    quantization: str = "none"
    """none, 8bit or 4bit (nf4), with bitsandbytes; quantized weights are frozen."""
    dtype: str = "bfloat16"
    """Weights dtype of the unquantized parts (and the 4-bit compute dtype): bfloat16, float16 or float32."""
    use_lora: bool = True
    """Train LoRA adapters (peft) on the LM; false trains only the prefix projector on a frozen LM."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA alpha (the update is scaled by lora_alpha / lora_r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA input."""
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names that get LoRA adapters; [all-linear] = every linear layer but the output head."""
    gradient_checkpointing: bool = False
    """Recompute the LM's activations in backward to save memory."""
    use_chat_template: bool = True
    """Wrap the question in the tokenizer's chat template (with the generation prompt) when it has one."""
    system_prompt: str | None = None
    """A system message put before the question in the chat template (null = none)."""
    device: str | None = None
    """Where a quantized model is loaded (null = cuda:<current device>, or cpu without CUDA)."""
    max_length: int = 512
    """Most tokens of prompt + answer; a longer pair loses the start of its prompt first."""
    prefix_dim: int = 0
    """Width of the prefix embeddings, projected to hidden_size by a `projector`; 0 = they already have
    hidden_size (no projector)."""
    projector: str = "mlp"
    """Kind of prefix projector: linear, or mlp (LLaVA-1.5 style: Linear, GELU, Linear)."""

    def __post_init__(self) -> None:
        """Raise DecoderError naming the first bad key."""
        _check_type(self, "qwen")
        if self.model_name == "":
            raise DecoderError("model_name is empty; name a causal LM (hub id or local directory)")
        _check_choice(self, "quantization", QUANTIZATIONS)
        _check_choice(self, "dtype", DTYPE_NAMES)
        _check_int(self, "lora_r", 1)
        if not is_missing(self.lora_alpha) and not self.lora_alpha > 0:
            raise DecoderError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        _check_range(self, "lora_dropout", 0.0, 1.0, high_open=True)
        targets = self.lora_target_modules
        if self.use_lora is True and not is_missing(targets) and not list(targets):
            raise DecoderError("lora_target_modules is empty; use ['all-linear'] or module names")
        _check_int(self, "max_length", 2)
        _check_int(self, "prefix_dim", 0)
        _check_choice(self, "projector", PROJECTOR_KINDS)

    def build(self) -> QwenDecoder:
        """A QwenDecoder with these settings: the base model loaded from model_name, a fresh LoRA adapter.

        Needs the `qwen` extra (transformers, peft; bitsandbytes and accelerate when quantized): without
        it, a one-line DecoderError says which library is missing and how to install the extra.
        """
        needed = QWEN_MODULES if self.quantization != "none" else QWEN_MODULES[:2]
        missing = [name for name in needed if importlib.util.find_spec(name) is None]
        if missing:
            raise DecoderError(
                f"type 'qwen' needs {', '.join(missing)} (not installed): {QWEN_EXTRA_INSTALL}"
            )
        from eg_decoders.qwen import QwenDecoder  # deferred: transformers and peft take seconds to import

        return QwenDecoder(self)


DecoderConfig = TRMConfig | TinyDecoderConfig | QwenDecoderConfig
DECODER_CONFIGS: dict[str, type] = {"trm": TRMConfig, "tiny": TinyDecoderConfig, "qwen": QwenDecoderConfig}


def decoder_config_from_dict(values: dict[str, Any]) -> DecoderConfig:
    """The config dataclass named by `values["type"]` (default "trm"), checked; unknown types or keys raise."""
    kind = values.get("type", "trm")
    if kind not in DECODER_CONFIGS:
        raise DecoderError(f"type '{kind}' is unknown; use one of {sorted(DECODER_CONFIGS)}")
    cls = DECODER_CONFIGS[kind]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise DecoderError(f"keys {unknown} are not fields of {cls.__name__}; remove or rename them")
    return cls(**values)
