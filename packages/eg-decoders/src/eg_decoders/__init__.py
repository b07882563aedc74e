"""eg-decoders: Decoders for multimodal QA: TRM (tiny recursive), a tiny causal baseline, Qwen with LoRA and 8/4-bit."""

__version__ = "0.1.0"

__all__: list[str] = []
