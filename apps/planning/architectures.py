"""Published dimensions of the hub models the real configs name, and the GPUs a plan is made for.

open_clip ships its architectures (`open_clip.get_model_config`), so its models need no row here. Whisper,
the sentence-transformers models and Qwen publish theirs only beside their weights, so their config.json
values (or Whisper's checkpoint `dims`) are copied into this table, each row citing where they come from.
A plan builds these models from the rows, at full size and without weights (see apps/planning/offline.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# ---- Whisper: the `dims` stored in each released checkpoint (the audio encoder's half) ---------------------
# https://github.com/openai/whisper/blob/main/model-card.md (sizes) and the checkpoints' `dims` entries, as
# printed by whisper.load_model(name).dims; "turbo" is large-v3 with a 4-layer decoder (same encoder).
WHISPER_SOURCE = "https://github.com/openai/whisper/blob/main/model-card.md (checkpoint dims)"
_WHISPER = {  # name: (n_mels, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer)
    "tiny": (80, 1500, 384, 6, 4),
    "base": (80, 1500, 512, 8, 6),
    "small": (80, 1500, 768, 12, 12),
    "medium": (80, 1500, 1024, 16, 24),
    "large-v1": (80, 1500, 1280, 20, 32),
    "large-v2": (80, 1500, 1280, 20, 32),
    "large-v3": (128, 1500, 1280, 20, 32),
    "large-v3-turbo": (128, 1500, 1280, 20, 32),
}
WHISPER_DIMS: dict[str, tuple[int, int, int, int, int]] = {
    **_WHISPER,
    **{f"{n}.en": _WHISPER[n] for n in ("tiny", "base", "small", "medium")},
    "large": _WHISPER["large-v3"],
    "turbo": _WHISPER["large-v3-turbo"],
}


@dataclass(frozen=True)
class HubModel:
    """A Hugging Face model's published config.json (the keys that shape it) and where it is published.

    `kind`: "sentence_transformers" (an encoder with mean pooling and normalization, `max_seq_length`
    from its sentence_bert_config.json) or "causal_lm".
    """

    kind: str
    config: dict[str, Any]
    source: str
    max_seq_length: int = 0
    modules: tuple[str, ...] = field(default=())


HUB_MODELS: dict[str, HubModel] = {
    "sentence-transformers/all-mpnet-base-v2": HubModel(
        kind="sentence_transformers",
        config={
            "model_type": "mpnet",
            "architectures": ["MPNetForMaskedLM"],
            "vocab_size": 30527,
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "hidden_act": "gelu",
            "max_position_embeddings": 514,
            "relative_attention_num_buckets": 32,
            "layer_norm_eps": 1e-05,
            "pad_token_id": 1,
            "bos_token_id": 0,
            "eos_token_id": 2,
        },
        source="https://huggingface.co/sentence-transformers/all-mpnet-base-v2/blob/main/config.json",
        max_seq_length=384,
        modules=("Pooling:mean", "Normalize"),
    ),
    "sentence-transformers/all-MiniLM-L6-v2": HubModel(
        kind="sentence_transformers",
        config={
            "model_type": "bert",
            "architectures": ["BertModel"],
            "vocab_size": 30522,
            "hidden_size": 384,
            "num_hidden_layers": 6,
            "num_attention_heads": 12,
            "intermediate_size": 1536,
            "hidden_act": "gelu",
            "max_position_embeddings": 512,
            "type_vocab_size": 2,
            "layer_norm_eps": 1e-12,
            "pad_token_id": 0,
        },
        source="https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2/blob/main/config.json",
        max_seq_length=256,
        modules=("Pooling:mean", "Normalize"),
    ),
    "Qwen/Qwen2.5-7B-Instruct": HubModel(
        kind="causal_lm",
        config={
            "model_type": "qwen2",
            "architectures": ["Qwen2ForCausalLM"],
            "vocab_size": 152064,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "hidden_act": "silu",
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0,
            "tie_word_embeddings": False,
            "use_sliding_window": False,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
        },
        source="https://huggingface.co/Qwen/Qwen2.5-7B-Instruct/blob/main/config.json",
    ),
    "Qwen/Qwen2.5-14B-Instruct": HubModel(
        kind="causal_lm",
        config={
            "model_type": "qwen2",
            "architectures": ["Qwen2ForCausalLM"],
            "vocab_size": 152064,
            "hidden_size": 5120,
            "intermediate_size": 13824,
            "num_hidden_layers": 48,
            "num_attention_heads": 40,
            "num_key_value_heads": 8,
            "hidden_act": "silu",
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0,
            "tie_word_embeddings": False,
            "use_sliding_window": False,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
        },
        source="https://huggingface.co/Qwen/Qwen2.5-14B-Instruct/blob/main/config.json",
    ),
}


@dataclass(frozen=True)
class GPU:
    """A GPU's memory and its peak dense bf16 tensor throughput (no sparsity), from NVIDIA's datasheet."""

    name: str
    memory_gib: float
    peak_bf16_tflops: float
    source: str


GPUS: dict[str, GPU] = {
    "h100": GPU(
        "NVIDIA H100 SXM 80GB",
        80.0,
        989.4,
        "https://www.nvidia.com/en-us/data-center/h100/ (datasheet: BF16 Tensor Core 1,979 TFLOPS with sparsity)",
    ),
    "h200": GPU(
        "NVIDIA H200 SXM 141GB",
        141.0,
        989.4,
        "https://www.nvidia.com/en-us/data-center/h200/ (datasheet: BF16 Tensor Core 1,979 TFLOPS with sparsity)",
    ),
    "a100": GPU(
        "NVIDIA A100 SXM 80GB",
        80.0,
        312.0,
        "https://www.nvidia.com/en-us/data-center/a100/ (datasheet: BF16 Tensor Core 312 TFLOPS, 624 with sparsity)",
    ),
}
