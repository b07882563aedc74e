"""eg-encoders: vision (CLIP), audio (Whisper) and text (Sentence-BERT, or an open_clip CLIP text tower) encoders with pooling and a
Matryoshka projection head. Every encoder returns an `EncoderOutput(tokens, mask, pooled)`; every config
checks itself when constructed and builds its component with `build(...)`."""

from eg_encoders.audio import AudioEncoder, AudioEncoderConfig, AudioSpec, WhisperEncoderDims
from eg_encoders.common import EncoderError, EncoderOutput
from eg_encoders.matryoshka import MatryoshkaConfig, MatryoshkaProjection, truncate_normalize
from eg_encoders.pooling import AttentionPooling, ClsPooling, MeanPooling, PoolingConfig
from eg_encoders.pretrained import AlignedEncoders, PretrainedError
from eg_encoders.text import OpenClipTextEncoder, TextEncoder, TextEncoderConfig
from eg_encoders.vision import ImageSpec, VisionEncoder, VisionEncoderConfig

__version__ = "0.3.0"

__all__ = [
    "AlignedEncoders",
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
    "OpenClipTextEncoder",
    "PoolingConfig",
    "PretrainedError",
    "TextEncoder",
    "TextEncoderConfig",
    "VisionEncoder",
    "VisionEncoderConfig",
    "WhisperEncoderDims",
    "truncate_normalize",
]
