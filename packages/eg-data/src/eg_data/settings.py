"""The settings of a loader: how a shard directory, or a weighted mixture of several (`sources`), becomes
batches. `LoaderSettings` holds the fields and their validation (plain field types, so OmegaConf
structured configs can hold it); it is what the implementation (samples, loader, mixture) reads, and it
imports none of it. `LoaderConfig` (config.py) adds `build()` on top, so the imports run one way:
config -> mixture -> loader -> samples -> settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Self

from eg_data.errors import MISSING, DataError, is_missing
from eg_data.transforms import AudioTransformConfig, ImageTransformConfig

MODALITIES = ("image", "audio", "text", "qa", "conversation")
MODES = ("train", "eval")
QA_PAIRS = ("sample", "first", "all")
DEFAULT_SHARD_DIR = "data/demo/train"


@dataclass
class SourceConfig:
    """One source of a mixture: a shard folder, what its samples have, and how often it is drawn."""

    shard_dir: str = MISSING
    """The source's training shards (required)."""
    modalities: list[str] = MISSING  # type: ignore[assignment]
    """What every sample of the source has, of image/audio/text/qa (required): those the loader reads are
    required of each of its samples (a sample lacking one is bad), the others are absent from its batches
    (presence False, zeros)."""
    weight: float = 1.0
    """The source's share of the batches (weights are normalized over the sources; > 0)."""
    name: str = ""
    """How reports and metrics name the source ("" = its shard_dir)."""
    val_dir: str = ""
    """The source's own validation folder ("" = none), validated on its own for the pairs whose two sides
    the source has (stage 1: metrics.csv `val/sources/<name>/...`; stage 2 does not read it)."""
    test_dir: str = ""
    """The source's own test folder ("" = none), evaluated on its own as `val_dir` (stage 1: eval.json
    `sources.<name>`; stage 2 does not read it)."""

    def __post_init__(self) -> None:
        if not is_missing(self.shard_dir) and not self.shard_dir:
            raise DataError("shard_dir is empty; name the source's folder of .tar shards")
        if not is_missing(self.modalities):
            unknown = [m for m in self.modalities if m not in MODALITIES]
            if unknown or not self.modalities:
                raise DataError(
                    f"modalities must list what the source's samples have, of {list(MODALITIES)}; "
                    f"got {list(self.modalities)}"
                )
        if not is_missing(self.weight) and not self.weight > 0:
            raise DataError(f"weight must be > 0, got {self.weight}")

    @property
    def label(self) -> str:
        """The source's name in reports: `name`, else its shard_dir."""
        return self.name or str(self.shard_dir)


@dataclass
class LoaderSettings:
    """How a shard directory (or a mixture of sources) becomes batches: the fields of `LoaderConfig`."""

    shard_dir: str = DEFAULT_SHARD_DIR
    """Folder of .tar shards to read (left unset when `sources` is given)."""
    batch_size: int = 32
    """Samples per batch on each rank."""
    num_workers: int = 0
    """DataLoader worker processes per rank (0 = read in the main process)."""
    seed: int = 0
    """Seed of the shard order, shuffling, augmentation, text dropout and QA pair draws (with the epoch)."""
    shuffle: bool = True
    """Shuffle the shard order and the samples (a buffer), from (seed, epoch)."""
    shuffle_buffer: int = 1000
    """Raw samples held per worker for shuffling."""
    modalities: list[str] = field(default_factory=lambda: ["image", "audio", "text", "qa"])
    """What the batches carry, of image/audio/text/qa."""
    required: list[str] = field(default_factory=lambda: ["image", "text"])
    """Modalities a sample must have; a sample lacking one is bad (skipped and counted)."""
    text_dropout: float = 0.0
    """Probability that a caption is dropped (text "" and text_present False)."""
    mode: str = "train"
    """train: every rank and worker gets the same number of full batches (the epoch's remainder is dropped, a
    batch of only bad samples is filled by a stand-in), as DDP training needs. eval: every sample of the
    split exactly once across ranks and workers; the last batch of each stream may be short (gather the
    results). Shuffling, augmentation and text dropout are set on their own."""
    qa_pairs: str = "sample"
    """Which QA pairs of a sample become rows: sample = one drawn from (seed, epoch, key), first = the first,
    all = every pair, one row each (key repeated, `qa_index` telling them apart; needs mode eval)."""
    max_bad_fraction: float = 0.5
    """Stop with a DataError when more than this fraction of the samples read in an epoch on a rank is bad,
    checked once 100 samples were read (or all, when the rank reads fewer); 1.0 never stops."""
    image: ImageTransformConfig = field(default_factory=ImageTransformConfig)
    """Image decoding and augmentation."""
    audio: AudioTransformConfig = field(default_factory=AudioTransformConfig)
    """Audio decoding to log-mel."""
    sources: list[SourceConfig] = field(default_factory=list)
    """A mixture instead of one folder (leave shard_dir unset): each batch comes from one source, drawn with
    the sources' weights from (seed, epoch, batch index); every batch carries every modality of
    `modalities` (zeros and presence False where the source has none); `required` must be had by every
    source. Needs mode train. See mixture.py."""

    def __post_init__(self) -> None:
        if self.sources and self.shard_dir == DEFAULT_SHARD_DIR:
            self.shard_dir = ""  # unset: a mixture reads its sources' folders only
        self.validate()

    def validate(self) -> None:
        """Raise DataError naming the first bad key relative to this dataclass (`image.size` for a nested
        one; the nested configs also validate themselves when constructed)."""
        if not is_missing(self.shard_dir) and not self.shard_dir and not self.sources:
            raise DataError("shard_dir is empty; name a folder of .tar shards (or list sources)")
        for key, low in (("batch_size", 1), ("num_workers", 0), ("shuffle_buffer", 1)):
            value = getattr(self, key)
            if not is_missing(value) and not value >= low:
                raise DataError(f"{key} must be >= {low}, got {value}")
        if not is_missing(self.text_dropout) and not 0.0 <= self.text_dropout < 1.0:
            raise DataError(f"text_dropout must be in [0, 1), got {self.text_dropout}")
        if not is_missing(self.max_bad_fraction) and not 0.0 <= self.max_bad_fraction <= 1.0:
            raise DataError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        for key, value, choices in (("mode", self.mode, MODES), ("qa_pairs", self.qa_pairs, QA_PAIRS)):
            if not is_missing(value) and value not in choices:
                raise DataError(f"{key} must be one of {list(choices)}, got {value!r}")
        for key in ("modalities", "required"):
            values = getattr(self, key)
            unknown = [] if is_missing(values) else [m for m in values if m not in MODALITIES]
            if unknown:
                raise DataError(f"{key} has unknown modality {unknown[0]!r}; use {list(MODALITIES)}")
        if not is_missing(self.required) and not is_missing(self.modalities):
            for name in self.required:
                if name not in self.modalities:
                    raise DataError(
                        f"required has {name!r}, which is not in modalities {list(self.modalities)}"
                    )
        if self.qa_pairs == "all" and self.mode == "train":
            raise DataError(
                "qa_pairs 'all' needs mode 'eval': one row per QA pair makes the batch count depend on the "
                "data, while training needs it known and equal on every rank"
            )
        for key in ("image", "audio"):
            nested = getattr(self, key)
            if hasattr(nested, "validate"):
                try:
                    nested.validate()
                except DataError as exn:
                    raise DataError(f"{key}.{exn}") from None
        if self.sources:
            self._validate_sources()

    def _validate_sources(self) -> None:
        if not is_missing(self.shard_dir) and self.shard_dir:
            raise DataError(
                f"shard_dir ({self.shard_dir!r}) and sources are both set; a mixture reads each source's "
                "shard_dir: remove shard_dir"
            )
        if not is_missing(self.mode) and self.mode != "train":
            raise DataError(
                f"mode {self.mode!r} with sources: a mixture is for training; evaluate each source's folder "
                "on its own (sources[i].val_dir / test_dir)"
            )
        labels: dict[str, int] = {}
        for i, source in enumerate(self.sources):
            if not isinstance(source, SourceConfig):
                raise DataError(f"sources[{i}] must be a SourceConfig, got {type(source).__name__}")
            if is_missing(source.modalities) or is_missing(self.modalities):
                continue
            if source.label in labels:
                raise DataError(
                    f"sources[{i}].name {source.label!r} is also sources[{labels[source.label]}]'s"
                )
            labels[source.label] = i
            if not any(m in self.modalities for m in source.modalities):
                raise DataError(
                    f"sources[{i}].modalities {list(source.modalities)} has none of modalities "
                    f"{list(self.modalities)}: nothing of it would be read"
                )
            if not is_missing(self.required):
                lacking = [m for m in self.required if m not in source.modalities]
                if lacking:
                    raise DataError(
                        f"required has {lacking[0]!r}, which source {source.label!r} (sources[{i}]) does not "
                        "have; with sources, list in required only what every source has"
                    )

    def source_configs(self) -> dict[str, Self]:
        """{source name: the single-folder config that reads it}: this config's settings with the
        source's shard_dir, requiring of its samples what the source has (of `modalities`). The mixture
        loader reads these; an app evaluates a source's val_dir/test_dir with them."""
        return {
            source.label: dataclasses.replace(
                self,
                shard_dir=source.shard_dir,
                sources=[],
                required=[m for m in self.modalities if m in source.modalities],
            )
            for source in self.sources
        }

    def sources_with(self, *modalities: str) -> list[str]:
        """Names of the sources whose samples have every one of `modalities` (and the loader reads them);
        for a single folder, [shard_dir] when `modalities` reads them all. Which pairs a config can train."""
        if not all(m in self.modalities for m in modalities):
            return []
        if not self.sources:
            return [self.shard_dir]
        return [s.label for s in self.sources if all(m in s.modalities for m in modalities)]
