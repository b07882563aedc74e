"""eg-encoders: Vision (CLIP), audio (Whisper) and text (Sentence-BERT) encoders with pooling and a Matryoshka projection head."""

__version__ = "0.1.0"

__all__: list[str] = []
