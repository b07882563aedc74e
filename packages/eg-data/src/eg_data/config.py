"""`LoaderConfig`: how a shard directory becomes batches. Validated when constructed (plain field types,
so OmegaConf structured configs can hold it); `build()` makes the `ShardLoader`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import DataError, is_missing
from .transforms import AudioTransformConfig, ImageTransformConfig

if TYPE_CHECKING:
    from .loader import ShardLoader

MODALITIES = ("image", "audio", "text", "qa")
MODES = ("train", "eval")
QA_PAIRS = ("sample", "first", "all")


@dataclass
class LoaderConfig:
    """How a shard directory becomes batches.

    mode: "train": every rank and worker gets the same number of full batches (a remainder of the epoch's
        samples is dropped, a batch whose samples are all bad is filled by a stand-in sample), as DDP
        training needs. "eval": every sample of the split exactly once across ranks and workers; each
        stream's last batch may be short and ranks may get different batch counts (gather the results).
        `mode` changes only this coverage: shuffling, augmentation and text dropout are set on their own.
    qa_pairs: which QA pairs of a sample become rows: "sample" one drawn from (seed, epoch, key), "first"
        the first, "all" every pair, one row each (key repeated, `qa_index` telling them apart; needs
        mode "eval", as the row count is only known once read).
    max_bad_fraction: stop with a DataError when more than this fraction of the samples read in an epoch
        on a rank is bad, checked once 100 samples were read (or all of them, when the rank reads fewer);
        1.0 never stops.
    """

    shard_dir: str = "data/demo/train"
    batch_size: int = 32
    num_workers: int = 0
    seed: int = 0
    shuffle: bool = True  # shard permutation and shuffle buffer, from (seed, epoch)
    shuffle_buffer: int = 1000  # raw samples held per worker for shuffling
    modalities: list[str] = field(default_factory=lambda: ["image", "audio", "text", "qa"])
    required: list[str] = field(default_factory=lambda: ["image", "text"])  # else the sample is bad
    text_dropout: float = 0.0  # probability a caption is dropped (text "" and text_present False)
    mode: str = "train"  # train | eval (see above)
    qa_pairs: str = "sample"  # sample | first | all (see above)
    max_bad_fraction: float = 0.5
    image: ImageTransformConfig = field(default_factory=ImageTransformConfig)
    audio: AudioTransformConfig = field(default_factory=AudioTransformConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise DataError naming the first bad key relative to this dataclass (`image.size` for a nested
        one; the nested configs also validate themselves when constructed)."""
        if not is_missing(self.shard_dir) and not self.shard_dir:
            raise DataError("shard_dir is empty; name a folder of .tar shards")
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

    def build(self, rank: int | None = None, world_size: int | None = None) -> ShardLoader:
        """The loader of this config (rank and world size from torch.distributed when not given)."""
        from .loader import ShardLoader

        return ShardLoader(self, rank=rank, world_size=world_size)
