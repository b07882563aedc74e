"""The stage-1 demo's tiny backbones: their settings (`demo_models:`) and when to write them; the writers are
eg-encoders' (`eg_encoders.debug`), as the Qwen writer is eg-decoders' (`apps/qa/demo_qwen.py`).

`eg_encoders.debug` writes tiny random-init backbones of the real kinds (open_clip ViT, Whisper,
sentence-transformers) in the on-disk formats the pretrained models come in, so the demo loads them through
the same public paths as real weights. Here they are written once into `demo_models.dir` (a manifest per
part records the settings; changed settings rewrite that part). The text model's WordPiece vocabulary is
built from the training captions, so it needs the data first.

Written files (with the defaults): `<dir>/vision/eg-debug-vit-i32-p8-w64-l2.{json,pt}`,
`<dir>/audio/eg-debug-whisper.pt`, `<dir>/text/` (a sentence-transformers directory).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from eg_encoders.debug import write_open_clip_vit, write_sentence_transformer, write_whisper

MANIFEST = "demo_models.json"


@dataclass
class DemoModelsConfig:
    """Sizes of the demo's tiny backbones; `dir` is where they are written ("" = none)."""

    dir: str = "data/demo_models"
    """Folder the tiny backbones are written to (vision/, audio/, text/), once per set of settings."""
    seed: int = 0
    """Seed of the random initialization of the three backbones."""
    image_size: int = 32
    """The tiny open_clip ViT's input side in pixels (a multiple of patch_size)."""
    patch_size: int = 8
    """The ViT's patch side in pixels."""
    vision_width: int = 64
    """The ViT's width."""
    vision_layers: int = 2
    """The ViT's transformer blocks."""
    n_mels: int = 80
    """Log-mel bins of the tiny Whisper encoder (80 or 128)."""
    n_audio_ctx: int = 200
    """The Whisper encoder's audio tokens: 20 ms each, 200 = 4 s of audio."""
    audio_width: int = 64
    """The Whisper encoder's width."""
    audio_layers: int = 2
    """The Whisper encoder's blocks."""
    text_width: int = 64
    """The sentence-transformers (BERT) model's width; its vocabulary is built from the captions."""
    text_layers: int = 2
    """The sentence-transformers model's layers."""

    def __post_init__(self) -> None:
        for key in (
            "image_size",
            "patch_size",
            "vision_width",
            "vision_layers",
            "n_mels",
            "n_audio_ctx",
            "audio_width",
            "audio_layers",
            "text_width",
            "text_layers",
        ):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}"
            )


def _fresh(folder: Path, cfg: DemoModelsConfig, part: str) -> bool:
    """True when `folder` holds `part` written with these exact settings."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()) == {"part": part, **asdict(cfg)}
    except ValueError:
        return False


def _stamp(folder: Path, cfg: DemoModelsConfig, part: str) -> None:
    (folder / MANIFEST).write_text(json.dumps({"part": part, **asdict(cfg)}, indent=2))


def write_vision_audio(cfg: DemoModelsConfig) -> None:
    """Write the ViT and the Whisper checkpoints unless already there with these settings."""
    root = Path(cfg.dir)
    vision = root / "vision"
    if not _fresh(vision, cfg, "vision"):
        write_open_clip_vit(
            str(vision),
            seed=cfg.seed,
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            width=cfg.vision_width,
            layers=cfg.vision_layers,
        )
        _stamp(vision, cfg, "vision")
    audio = root / "audio"
    if not _fresh(audio, cfg, "audio"):
        write_whisper(
            str(audio),
            seed=cfg.seed,
            n_mels=cfg.n_mels,
            n_audio_ctx=cfg.n_audio_ctx,
            width=cfg.audio_width,
            layers=cfg.audio_layers,
        )
        _stamp(audio, cfg, "audio")


def write_text(cfg: DemoModelsConfig, captions: list[str]) -> None:
    """Write the sentence-transformers model, its vocabulary built from `captions`, unless already there."""
    text = Path(cfg.dir) / "text"
    if not _fresh(text, cfg, "text"):
        write_sentence_transformer(
            str(text),
            seed=cfg.seed,
            texts=sorted(set(captions)),
            width=cfg.text_width,
            layers=cfg.text_layers,
        )
        _stamp(text, cfg, "text")
