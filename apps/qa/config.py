"""The typed config tree of a stage-2 (question answering) experiment, loaded by `apps.common.config.load_config`.

A stage-2 config names a stage-1 checkpoint and nothing else about stage 1: the towers are rebuilt from the
config stored in that checkpoint. The decoder is a `type:`-picked variant (OmegaConf structured configs
cannot hold a Union): `model.decoder.type` names it and only that variant's key (`trm`, `tiny` or `qwen`)
may be set; it holds eg-decoders' own config dataclass. Every dataclass validates on construction and names
the key relative to itself; `load_config` adds the YAML path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from eg_data import LoaderConfig
from eg_decoders import QwenDecoderConfig, TinyDecoderConfig, TRMConfig
from eg_train import TrainerConfig

from apps.common.config import ConfigError
from apps.qa.demo_qwen import DemoQwenConfig

MISSING = "???"  # omegaconf.MISSING: a required value not given yet (load_config refuses it)
PREFIX_ORDER = ("vision", "audio")  # the decoder sees [image tokens][audio tokens][question][answer]
BATCH_KEY = {"vision": "image", "audio": "audio"}  # eg-data's batch key (and presence flag prefix)
DECODER_VARIANTS = {"trm": TRMConfig, "tiny": TinyDecoderConfig, "qwen": QwenDecoderConfig}


@dataclass
class Stage1Config:
    """The stage-1 checkpoint whose towers encode the prefix (e.g. checkpoints/demo/checkpoint_best.pt)."""

    checkpoint: str = MISSING
    """The stage-1 checkpoint file (e.g. checkpoints/demo/checkpoint_best.pt); its stored config rebuilds the
    towers, loaded strictly and frozen."""
    fingerprint: str = ""
    """The stage-1 tower weights' fingerprint (16 hex digits of a sha256). Empty: not checked. A run records
    the one it trained on in its stored config, so loading a stage-2 checkpoint against a replaced stage-1
    file is refused; set it to pin a config to one stage-1 model."""

    def __post_init__(self) -> None:
        if self.fingerprint and not re.fullmatch(r"[0-9a-f]{16}", self.fingerprint):
            raise ConfigError(
                f"fingerprint must be 16 lowercase hex digits or empty, got {self.fingerprint!r}"
            )


@dataclass
class DecoderChoice:
    """`type` (required) picks the decoder; only its key (`trm`, `tiny` or `qwen`) may be set; left unset,
    it takes that variant's defaults (filled in, so the resolved config shows every setting).

    The variant's `prefix_dim` stays 0: the QA model puts one PrefixProjector per modality in front of the
    decoder (the variant's `projector` picks its kind), since modalities differ in width.
    """

    type: str = MISSING
    """The decoder: trm, tiny or qwen (required); only the key of that name may be set below."""
    trm: TRMConfig | None = None
    """The TRM decoder's settings, when type is trm (unset: its defaults)."""
    tiny: TinyDecoderConfig | None = None
    """The tiny causal transformer baseline's settings, when type is tiny (unset: its defaults)."""
    qwen: QwenDecoderConfig | None = None
    """The Qwen (Hugging Face causal LM, LoRA, 8/4-bit) decoder's settings, when type is qwen (unset: its
    defaults)."""

    def __post_init__(self) -> None:
        if self.type == MISSING:
            return
        if self.type not in DECODER_VARIANTS:
            raise ConfigError(f"type={self.type!r} is not one of {', '.join(DECODER_VARIANTS)}")
        for other in DECODER_VARIANTS:
            if other != self.type and getattr(self, other) is not None:
                raise ConfigError(
                    f"{other} is set but type is {self.type!r}, so it would be ignored; "
                    f"remove {other} or set type: {other}"
                )
        if getattr(self, self.type) is None:
            setattr(self, self.type, DECODER_VARIANTS[self.type]())
        variant = self.variant()
        if variant.prefix_dim != 0:
            raise ConfigError(
                f"{self.type}.prefix_dim={variant.prefix_dim}: the QA model projects each modality "
                "itself (one projector per modality); leave it 0"
            )

    def variant(self) -> TRMConfig | TinyDecoderConfig | QwenDecoderConfig:
        """The chosen variant's config."""
        return getattr(self, self.type)


@dataclass
class ModalityDropoutConfig:
    """Training only: the probability that a sample loses each modality from its prefix.

    A sample that would lose all of them gets one back (picked uniformly) unless `allow_none`. With 0.3
    and 0.3: both 49 %, image only 25.5 %, audio only 25.5 %.
    """

    vision: float = 0.0
    """Probability that a training sample loses its image prefix."""
    audio: float = 0.0
    """Probability that a training sample loses its audio prefix."""
    allow_none: bool = False
    """Let a sample lose every modality (a blind question); false gives one back, picked uniformly."""

    def __post_init__(self) -> None:
        for key in PREFIX_ORDER:
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{key}={value} must be a probability in [0, 1]")


@dataclass
class QAModelConfig:
    """The VLM: which stage-1 towers feed the prefix, whether the resampler trains, the decoder, dropout."""

    modalities: list[str] = field(default_factory=lambda: ["vision", "audio"])
    """Towers of the stage-1 checkpoint used as prefix, from vision and audio (in that order)."""
    train_resampler: bool = False
    """Unfreeze the towers' Perceiver Resamplers (encoders and projections stay frozen)."""
    cache_tokens: bool = False
    """Keep each training sample's tower tokens in memory after its first step (frozen towers and un-augmented
    inputs only; memory: samples x tokens x width floats, e.g. 9 MB for the demo)."""
    decoder: DecoderChoice = field(default_factory=DecoderChoice)
    """The decoder variant and its settings."""
    modality_dropout: ModalityDropoutConfig = field(default_factory=ModalityDropoutConfig)
    """Training only: dropping modalities from the prefix."""

    def __post_init__(self) -> None:
        bad = [m for m in self.modalities if m not in PREFIX_ORDER]
        if bad:
            raise ConfigError(f"modalities: {bad} not supported; use any of {list(PREFIX_ORDER)}")
        if not self.modalities:
            raise ConfigError("modalities is empty; list at least one of vision, audio")
        if len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"modalities lists a modality twice: {list(self.modalities)}")
        if self.cache_tokens and self.train_resampler:
            raise ConfigError("cache_tokens needs frozen towers, but train_resampler is true; drop one")


def _qa_loader() -> LoaderConfig:
    return LoaderConfig(modalities=["image", "audio", "qa"], required=["qa"])


@dataclass
class QADataConfig:
    """Shards with QA pairs in their json (`qa: [{question, answer}, ...]`)."""

    train: LoaderConfig = field(default_factory=_qa_loader)
    """eg-data's loader for training; every step sees one QA pair per sample, drawn per (seed, epoch, sample).
    `image.size/mean/std` and `audio.n_mels/n_samples` come from the stage-1 encoders."""
    val_dir: str = "data/demo/val"
    """Validation shards, read with train's settings minus shuffling and augmentation, every QA pair asked."""
    test_dir: str = "data/demo/test"
    """Test shards for the final evaluation, read as val_dir."""

    def __post_init__(self) -> None:
        if "qa" not in self.train.required:
            raise ConfigError(
                f"train.required={list(self.train.required)} must include 'qa': a sample without a "
                "QA pair has nothing to train on"
            )


@dataclass
class QAEvalConfig:
    """Generation-based evaluation: on val during training (exact match), on test at the end."""

    batch_size: int = 64
    """Question-answer rows per evaluation batch (each QA pair of a sample is one row; its pairs are consecutive)."""
    max_new_tokens: int = 16
    """Most tokens generated per answer (greedy)."""
    max_val_samples: int = 0
    """Samples of val whose pairs are generated at each validation (0 = all; -1 = none: validation then
    reports the teacher-forced loss only)."""
    max_questions: int = 20
    """Rows of the per-question table (the most frequent questions; the rest pooled as "(other)")."""
    num_rows: int = 30
    """(question, reference, generated) rows kept in eval.json."""
    print_rows: int = 6
    """Of those rows, how many are printed."""

    def __post_init__(self) -> None:
        for key in ("batch_size", "max_new_tokens", "max_questions"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1")
        if self.max_val_samples < -1:
            raise ConfigError(f"max_val_samples={self.max_val_samples} must be >= -1 (-1 = no generation)")
        for key in ("num_rows", "print_rows"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 0")


@dataclass
class QAConfig:
    """A stage-2 experiment: `uv run apps/train --config FILE` with `stage: qa`.

    Outputs go to `train.output_dir` / `train.checkpoint_dir`, by default outputs/<experiment_name> and
    checkpoints/<experiment_name>.
    """

    stage: str = "qa"
    """The stage that runs this config; qa for this tree."""
    experiment_name: str = "qa"
    """Names the default output and checkpoint folders (outputs/<name>, checkpoints/<name>)."""
    seed: int = 0
    """Seeds the decoder's initialization."""
    num_threads: int = 0
    """Torch intra-op threads per process; 0 = torch's default."""
    stage1: Stage1Config = field(default_factory=Stage1Config)
    """The stage-1 checkpoint that provides the towers."""
    data: QADataConfig = field(default_factory=QADataConfig)
    """Where the QA shards are and how they are read."""
    model: QAModelConfig = field(default_factory=QAModelConfig)
    """The prefix towers, the decoder and modality dropout."""
    train: TrainerConfig = field(default_factory=TrainerConfig)
    """eg-train's settings (the trainer's per-rank RNG, seeded by train.seed, also draws the modality
    dropout)."""
    eval: QAEvalConfig = field(default_factory=QAEvalConfig)
    """Generation-based evaluation."""
    demo_qwen: DemoQwenConfig | None = None
    """When set, a tiny random-init Qwen2 and its tokenizer are written (once) to demo_qwen.dir before the
    decoder loads it from there (the Qwen demo)."""

    def __post_init__(self) -> None:
        if self.stage != "qa":
            raise ConfigError(f"stage={self.stage!r}: this config tree is stage 'qa'")
        if not self.experiment_name or "/" in self.experiment_name:
            raise ConfigError(
                f"experiment_name={self.experiment_name!r} must be a non-empty name without '/'"
            )
        if self.num_threads < 0:
            raise ConfigError(f"num_threads={self.num_threads} must be >= 0 (0 = torch's default)")
        defaults = TrainerConfig()
        if self.train.output_dir == defaults.output_dir:
            self.train.output_dir = f"outputs/{self.experiment_name}"
        if self.train.checkpoint_dir == defaults.checkpoint_dir:
            self.train.checkpoint_dir = f"checkpoints/{self.experiment_name}"
        wanted = [BATCH_KEY[m] for m in self.model.modalities]
        lacking = [k for k in wanted if k not in self.data.train.modalities]
        if lacking:
            raise ConfigError(
                f"data.train.modalities={list(self.data.train.modalities)} lacks {lacking}, "
                "which model.modalities needs"
            )
        if "qa" not in self.data.train.modalities:
            raise ConfigError("data.train.modalities must include 'qa'")
        if self.model.cache_tokens and self.data.train.image.augment:
            raise ConfigError(
                "model.cache_tokens keeps each sample's first tokens, but data.train.image.augment changes "
                "the image every epoch; drop one"
            )
        if self.demo_qwen is not None:
            decoder = self.model.decoder
            if decoder.type != "qwen" or decoder.variant().model_name != self.demo_qwen.dir:
                raise ConfigError(
                    f"demo_qwen.dir={self.demo_qwen.dir!r} is written for the decoder to load, so set "
                    "model.decoder.type: qwen and model.decoder.qwen.model_name to it (or remove demo_qwen)"
                )
