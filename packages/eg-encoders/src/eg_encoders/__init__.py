"""eg-encoders: vision (CLIP), audio (Whisper) and text (Sentence-BERT) encoders with pooling and a
Matryoshka projection head. Every encoder returns an `EncoderOutput(tokens, mask, pooled)`."""

from .audio import AudioEncoder, AudioEncoderConfig, AudioSpec, WhisperEncoderDims
from .common import EncoderError, EncoderOutput
from .matryoshka import MatryoshkaConfig, MatryoshkaProjection, truncate_normalize
from .pooling import AttentionPooling, ClsPooling, MeanPooling, PoolingConfig, build_pooling
from .text import TextEncoder, TextEncoderConfig
from .vision import ImageSpec, VisionEncoder, VisionEncoderConfig

__version__ = "0.1.0"

__all__ = [
    "AttentionPooling",
    "AudioEncoder",
    "AudioEncoderConfig",
    "AudioSpec",
    "ClsPooling",
    "EncoderError",
    "EncoderOutput",
    "ImageSpec",
    "MatryoshkaConfig",
    "MatryoshkaProjection",
    "MeanPooling",
    "PoolingConfig",
    "TextEncoder",
    "TextEncoderConfig",
    "VisionEncoder",
    "VisionEncoderConfig",
    "WhisperEncoderDims",
    "build_pooling",
    "truncate_normalize",
]
