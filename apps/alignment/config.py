"""The typed config tree of a stage-1 (alignment) experiment, loaded from YAML by `apps.config.load_config`.

Each package's own config dataclass is nested as it is (eg-encoders' encoder and projection configs,
eg-resampler's, eg-losses' contrastive config, eg-data's loader config, eg-train's TrainerConfig); the
small dataclasses here only say how the apps compose them. Plain types only (no Literal/Union), so
OmegaConf structured configs hold the whole tree. Every key is read somewhere: values the apps derive
themselves (image size and normalization from the vision encoder, audio context from the audio
encoder) are checked against the file instead of being overwritten silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from eg_data import AudioTransformConfig, ImageTransformConfig, LoaderConfig
from eg_encoders import AudioEncoderConfig, MatryoshkaConfig, TextEncoderConfig, VisionEncoderConfig
from eg_losses import ContrastiveLossConfig
from eg_resampler import PerceiverResamplerConfig
from eg_train import TrainerConfig

from apps.alignment.demo_models import DemoModelsConfig

MODALITIES = ("vision", "audio", "text")


def _declared(spec: Any) -> Any:
    """An encoder's input spec read from its config files, or None where that needs the weights or a file
    not written yet (the demo writes its backbones at the start of the run; the build checks then)."""
    try:
        return spec()
    except ValueError:
        return None


# The eg-data batch key (and presence mask prefix) that feeds each modality's encoder.
BATCH_KEY = {"vision": "image", "audio": "audio", "text": "text"}


@dataclass
class VisionTowerConfig:
    """Vision: a CLIP encoder (its `pooling` pools tokens, or the resampler's latents when one is set)."""

    encoder: VisionEncoderConfig = field(default_factory=VisionEncoderConfig)
    """eg-encoders' vision encoder (open_clip or Hugging Face CLIP)."""
    resampler: PerceiverResamplerConfig | None = None
    """A Perceiver Resampler over the encoder's tokens (null = none); its `input_dim` is set to the encoder's
    width."""
    lr: float = -1.0
    """Learning rate of this tower's trainable encoder weights; -1 = train.lr (the resampler and projection
    always use train.lr)."""


@dataclass
class AudioTowerConfig:
    """Audio: a Whisper encoder, optionally followed by a Perceiver Resampler."""

    encoder: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    """eg-encoders' Whisper audio encoder."""
    resampler: PerceiverResamplerConfig | None = None
    """A Perceiver Resampler over the encoder's tokens (null = none); its `input_dim` is set to the encoder's
    width."""
    lr: float = -1.0
    """Learning rate of this tower's trainable encoder weights; -1 = train.lr (the resampler and projection
    always use train.lr)."""


@dataclass
class TextTowerConfig:
    """Text: a sentence-transformers encoder, or (`encoder.backend: open_clip`) the text tower of an open_clip
    CLIP model with its own tokenizer; its sentence (CLIP: text) embedding is the pooled vector."""

    encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    """eg-encoders' text encoder (sentence-transformers or an open_clip text tower)."""
    lr: float = -1.0
    """Learning rate of this tower's trainable encoder weights; -1 = train.lr (the resampler and projection
    always use train.lr)."""


@dataclass
class ModelConfig:
    """The alignment model: the modalities present (null = absent), the pairs aligned, the shared projection."""

    vision: VisionTowerConfig | None = None
    """The vision tower (null = no vision)."""
    audio: AudioTowerConfig | None = None
    """The audio tower (null = no audio)."""
    text: TextTowerConfig | None = None
    """The text tower (null = no text)."""
    pairs: list[str] = field(default_factory=lambda: ["vision_text"])
    """The pairs aligned, any of vision_text, audio_text, vision_audio; each names two present modalities."""
    projection: MatryoshkaConfig = field(default_factory=MatryoshkaConfig)
    """One MatryoshkaProjection per modality, all to the same `max_dim` (the shared space). `identity: true`
    adds no head: the encoders' own embeddings are the shared space, which is how an open_clip CLIP trains
    exactly as CLIP (`vision.encoder.clip_projection: true`, `text.encoder.backend: open_clip`, max_dim =
    the model's embed_dim; configs/clip_finetune.yaml)."""


@dataclass
class LossesConfig:
    """Per pair: contrastive * InfoNCE(full width) + mrl * Matryoshka(InfoNCE at nested dims), times the pair
    weight."""

    contrastive: float = 1.0
    """Weight of the full-width InfoNCE term (0 switches it off; not both weights 0)."""
    mrl: float = 1.0
    """Weight of the Matryoshka term (0 switches it off)."""
    mrl_dims: list[int] | None = None
    """Nested dims, increasing, the last <= model.projection.max_dim (null = 128, 256, ... capped at max_dim).
    """
    mrl_weights: list[float] | None = None
    """One weight per Matryoshka dim (null = 1.0 each)."""
    sample_single_mrl_dim: bool = False
    """Score one random Matryoshka dim per step instead of all of them."""
    num_sampled_mrl_dims: int = 0
    """k > 0 draws k random dims per step (0 = all, or one with sample_single_mrl_dim)."""
    pair_weights: dict[str, float] = field(default_factory=dict)
    """Weight per pair name; pairs not listed weigh 1.0 (0 = evaluated only)."""
    infonce: ContrastiveLossConfig = field(default_factory=ContrastiveLossConfig)
    """eg-losses' ContrastiveLoss settings (temperature, learnable, distributed gathering)."""


@dataclass
class DataConfig:
    """Where the shards are and how they are read."""

    train: LoaderConfig = field(default_factory=LoaderConfig)
    """eg-data's loader settings for training (shard_dir, batch size, workers, text dropout, ...);
    `image.size/mean/std` and `audio.n_mels/n_samples` come from the encoders and need not be set.
    `train.sources` (instead of shard_dir) mixes several folders, each with a weight and the modalities its
    samples have; every pair of model.pairs must have a source with both sides. With sources, each source's
    own `val_dir` / `test_dir` is evaluated too, on its own, for the pairs whose two sides the source has
    (docs/data.md)."""
    val_dir: str = "data/demo/val"
    """Shards for validation during training, every pair of model.pairs evaluated on them; read with train's
    settings minus shuffling, augmentation and text dropout ("" = none; with no validation split at all, no
    validation)."""
    test_dir: str = "data/demo/test"
    """Shards for the final held-out evaluation (and apps/evaluate), read as val_dir ("" = none; a test split,
    this or a source's, is required)."""
    build_demo: str = ""
    """A folder; when the shards are missing there, eg-data's demo dataset is built into it first ("" = never
    build)."""


@dataclass
class ZeroShotEvalConfig:
    """Zero-shot classification at each validation (train.val_every) on a folder in CLIP_benchmark's
    webdataset layout; its metrics are logged as `val/zeroshot/<modality>/<dim>/acc1|acc5|
    mean_per_class_recall` and `val/zeroshot/mean_acc1`, any of which can be train.best_metric. The folder is
    read when the run starts, not when the config loads (a checkpoint's stored config loads without it)."""

    dataset: str = ""
    """A folder in CLIP_benchmark's layout: classnames.txt, zeroshot_classification_templates.txt and
    <split>/nshards.txt + 0.tar ... (samples with `cls` and an image and/or audio), e.g. data/demo_zeroshot
    (`uv run apps/data demo-zeroshot`)."""
    split: str = "val"
    """The split folder under `dataset` evaluated during training."""
    templates: list[str] | None = None
    """Prompt templates, each with `{c}` (or `{}`) where the class name goes (null = the folder's
    zeroshot_classification_templates.txt)."""
    max_samples: int = 0
    """Cap on the split's samples (0 = all)."""

    def __post_init__(self) -> None:
        if not self.dataset:
            raise ValueError(
                "dataset is empty; name a folder in CLIP_benchmark's layout (or remove eval.zeroshot)"
            )
        if not self.split or "/" in self.split:
            raise ValueError(f"split={self.split!r} must be the name of a split folder, e.g. val")
        if self.templates is not None:
            if not self.templates:
                raise ValueError("templates is an empty list; give templates or null for the folder's")
            for i, template in enumerate(self.templates):
                if "{c}" not in template and "{}" not in template:
                    raise ValueError(
                        f"templates[{i}]={template!r} has no '{{c}}' or '{{}}' for the class name"
                    )
        if self.max_samples < 0:
            raise ValueError(f"max_samples={self.max_samples} must be >= 0 (0 = all)")


@dataclass
class EvalConfig:
    """Retrieval evaluation on val (during training) and test (at the end, and by apps/evaluate)."""

    batch_size: int = 128
    """Batch size of the evaluation loaders."""
    chunk_size: int = 1024
    """Queries per similarity block (bounds the memory of the similarity matrix)."""
    dims: list[int] | None = None
    """The Matryoshka dims evaluated (null = the MRL dims of `losses`)."""
    max_val_samples: int = 0
    """Cap on validation samples per evaluation (0 = all)."""
    plot_max_points: int = 400
    """Points per modality in embedding_space.png (0 = no plot)."""
    zeroshot: ZeroShotEvalConfig | None = None
    """Zero-shot classification at each validation (null = none); see ZeroShotEvalConfig."""


@dataclass
class AlignmentConfig:
    """A stage-1 alignment experiment: everything `uv run apps/train --config FILE` needs.

    Outputs go to `train.output_dir` and `train.checkpoint_dir`, which default to outputs/<experiment_name>
    and checkpoints/<experiment_name>.
    """

    stage: str = "alignment"
    """The stage that runs this config; alignment for this tree (apps/alignment)."""
    experiment_name: str = "alignment"
    """Names the default output and checkpoint folders (outputs/<name>, checkpoints/<name>)."""
    seed: int = 0
    """Seeds the model's initialization, the data order and the Matryoshka dim draws."""
    num_threads: int = 0
    """Torch intra-op threads per process; 0 = torch's default (on a busy or small CPU machine 1 is far faster
    than oversubscribed threads)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where the shards are and how they are read."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The towers, the pairs aligned and the shared projection."""
    losses: LossesConfig = field(default_factory=LossesConfig)
    """Contrastive and Matryoshka loss weights and settings."""
    train: TrainerConfig = field(default_factory=TrainerConfig)
    """eg-train's settings; `train.seed` seeds the trainer's per-rank RNG."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Retrieval evaluation."""
    demo_models: DemoModelsConfig | None = None
    """When set, the tiny random-init demo backbones are written (once) before the encoders load them (the
    demo)."""

    def __post_init__(self) -> None:
        if self.stage != "alignment":
            raise ValueError(f"stage={self.stage!r}: this config tree is stage 'alignment'")
        if not self.experiment_name or "/" in self.experiment_name:
            raise ValueError(f"experiment_name={self.experiment_name!r} must be a non-empty name without '/'")
        defaults = TrainerConfig()
        if self.train.output_dir == defaults.output_dir:
            self.train.output_dir = f"outputs/{self.experiment_name}"
        if self.train.checkpoint_dir == defaults.checkpoint_dir:
            self.train.checkpoint_dir = f"checkpoints/{self.experiment_name}"
        present = self.modalities()
        if not present:
            raise ValueError(
                "model: no modality configured; set at least two of model.vision, model.audio, model.text"
            )
        for pair in self.model.pairs:
            first, _, second = pair.partition("_")
            if first not in MODALITIES or second not in MODALITIES or first == second:
                raise ValueError(f"model.pairs: {pair!r} is not one of vision_text, audio_text, vision_audio")
            for name in (first, second):
                if name not in present:
                    raise ValueError(f"model.pairs: {pair!r} needs model.{name}, which is not configured")
        if not self.model.pairs:
            raise ValueError("model.pairs is empty; list at least one pair, e.g. [vision_text]")
        if len(set(self.model.pairs)) != len(self.model.pairs):
            raise ValueError(f"model.pairs lists a pair twice: {list(self.model.pairs)}")
        for name in present:
            if not any(name in pair.split("_") for pair in self.model.pairs):
                raise ValueError(f"model.{name} is configured but no pair in model.pairs uses it")
        for pair, weight in self.losses.pair_weights.items():
            if pair not in self.model.pairs:
                raise ValueError(
                    f"losses.pair_weights: {pair!r} is not in model.pairs {list(self.model.pairs)}"
                )
            if weight < 0:
                raise ValueError(f"losses.pair_weights.{pair}={weight} must be >= 0")
        if self.losses.contrastive < 0 or self.losses.mrl < 0:
            raise ValueError("losses.contrastive and losses.mrl are weights and must be >= 0")
        if self.losses.contrastive == 0 and self.losses.mrl == 0:
            raise ValueError("losses.contrastive and losses.mrl are both 0: nothing would be trained")
        if self.num_threads < 0:
            raise ValueError(f"num_threads={self.num_threads} must be >= 0 (0 = torch's default)")
        for key in ("batch_size", "chunk_size"):
            if getattr(self.eval, key) < 1:
                raise ValueError(f"eval.{key}={getattr(self.eval, key)} must be >= 1")
        if self.eval.max_val_samples < 0 or self.eval.plot_max_points < 0:
            raise ValueError("eval.max_val_samples and eval.plot_max_points must be >= 0")
        self._check_dims()
        self._check_zeroshot_metric()
        self._check_input_specs()
        self._check_clip_towers()
        self._check_held_out()
        batch_keys = {BATCH_KEY[m] for m in present}
        wanted = set(self.data.train.modalities)
        if not batch_keys <= wanted:
            missing = sorted(batch_keys - wanted)
            raise ValueError(f"data.train.modalities {sorted(wanted)} lacks {missing}, which model.* needs")
        for pair in self.model.pairs:  # a mixture trains a pair on the sources that have both sides
            sides = [BATCH_KEY[m] for m in pair.split("_")]
            if self.losses.pair_weights.get(pair, 1.0) > 0 and not self.data.train.sources_with(*sides):
                raise ValueError(
                    f"model.pairs: {pair!r} needs samples with both {sides[0]} and {sides[1]}, and no source in "
                    "data.train.sources has both (give it losses.pair_weights 0 to evaluate it only)"
                )

    def _check_held_out(self) -> None:
        """A test split somewhere, and every source's val_dir/test_dir with a pair to evaluate on it."""
        data = self.data
        if not data.test_dir and not any(s.test_dir for s in data.train.sources):
            raise ValueError(
                "data.test_dir is empty and no source of data.train.sources has a test_dir: the held-out "
                "evaluation at the end would have no split; set one"
            )
        for i, source in enumerate(data.train.sources):
            for split_key in ("val_dir", "test_dir"):
                if getattr(source, split_key) and not self.pairs_having(source.modalities):
                    raise ValueError(
                        f"data.train.sources[{i}].{split_key}: source {source.label!r} has "
                        f"{list(source.modalities)}, no pair of model.pairs {list(self.model.pairs)} to "
                        "evaluate on it; remove the key"
                    )

    def pairs_having(self, batch_keys: Sequence[str]) -> list[str]:
        """The pairs of model.pairs whose two sides (eg-data names: image, audio, text) are all in
        `batch_keys` and loaded (data.train.modalities): what a split with those modalities evaluates."""
        has = set(batch_keys) & set(self.data.train.modalities)
        return [p for p in self.model.pairs if all(BATCH_KEY[m] in has for m in p.split("_"))]

    def _check_dims(self) -> None:
        """Matryoshka and evaluation dims against the projection width (two components: checked here)."""
        top = self.model.projection.max_dim
        losses = self.losses
        dims = losses.mrl_dims
        if dims is not None:
            if not dims or any(d < 1 for d in dims) or list(dims) != sorted(set(dims)):
                raise ValueError(
                    f"losses.mrl_dims={list(dims)} must be distinct dims >= 1 in increasing order"
                )
            if dims[-1] > top:
                raise ValueError(
                    f"losses.mrl_dims={list(dims)} goes above model.projection.max_dim={top}; "
                    "drop the larger dims or widen the projection"
                )
        num_dims = len(dims) if dims is not None else None
        if losses.mrl_weights is not None and num_dims is not None and len(losses.mrl_weights) != num_dims:
            raise ValueError(
                f"losses.mrl_weights has {len(losses.mrl_weights)} weights for {num_dims} losses.mrl_dims"
            )
        if losses.num_sampled_mrl_dims < 0:
            raise ValueError(f"losses.num_sampled_mrl_dims={losses.num_sampled_mrl_dims} must be >= 0")
        if num_dims is not None and losses.num_sampled_mrl_dims > num_dims:
            raise ValueError(
                f"losses.num_sampled_mrl_dims={losses.num_sampled_mrl_dims} is more than the "
                f"{num_dims} losses.mrl_dims"
            )
        if losses.sample_single_mrl_dim and losses.num_sampled_mrl_dims > 0:
            raise ValueError(
                "losses.sample_single_mrl_dim and losses.num_sampled_mrl_dims are both set; choose one"
            )
        if self.eval.dims is not None:
            bad = [d for d in self.eval.dims if not 1 <= d <= top]
            if bad or not self.eval.dims:
                raise ValueError(
                    f"eval.dims={list(self.eval.dims)} must be non-empty and within 1..{top} "
                    "(model.projection.max_dim)"
                )

    def _check_zeroshot_metric(self) -> None:
        """A train.best_metric naming a zero-shot metric needs eval.zeroshot, a zero-shot modality the model
        has, a dim that is evaluated and a metric that exists."""
        metric = self.train.best_metric
        if not metric.startswith("val/zeroshot/"):
            return
        if self.eval.zeroshot is None:
            raise ValueError(
                f"train.best_metric={metric!r} is a zero-shot metric but eval.zeroshot is not set"
            )
        if metric == "val/zeroshot/mean_acc1":
            return
        parts = metric.split("/")[2:]
        names = ("acc1", "acc5", "mean_per_class_recall")
        modalities = [m for m in ("vision", "audio") if m in self.modalities()]
        if len(parts) != 3 or parts[0] not in modalities or not parts[1].isdigit() or parts[2] not in names:
            raise ValueError(
                f"train.best_metric={metric!r} is not val/zeroshot/mean_acc1 or "
                f"val/zeroshot/<{'|'.join(modalities) or 'vision|audio'}>/<dim>/<{'|'.join(names)}>"
            )
        dims = self.eval.dims if self.eval.dims is not None else self.losses.mrl_dims
        if dims is not None and int(parts[1]) not in dims:
            raise ValueError(
                f"train.best_metric={metric!r}: dim {parts[1]} is not evaluated (dims {list(dims)})"
            )

    def _check_input_specs(self) -> None:
        """An image size or audio setting in data.train that the encoder's own config contradicts, refused at
        load where the encoder's input spec can be read without loading weights (else at build)."""
        image, audio = self.data.train.image, self.data.train.audio
        if self.model.vision is not None and image.size != ImageTransformConfig().size:
            declared = _declared(self.model.vision.encoder.image_size)
            if declared is not None and declared != image.size:
                raise ValueError(
                    f"data.train.image.size={image.size} differs from the vision encoder's input size {declared} "
                    "(model.vision.encoder); remove data.train.image.size, it is taken from the encoder"
                )
        if self.model.audio is not None:
            defaults = AudioTransformConfig()
            for key in ("n_mels", "n_samples"):
                configured = getattr(audio, key)
                declared = _declared(getattr(self.model.audio.encoder, key))
                if configured != getattr(defaults, key) and declared is not None and declared != configured:
                    raise ValueError(
                        f"data.train.audio.{key}={configured} differs from the audio encoder's {declared} "
                        f"(model.audio.encoder); remove data.train.audio.{key}, it is taken from the encoder"
                    )

    def _check_clip_towers(self) -> None:
        """CLIP's own projections against a resampler and the head-free projection's width (config files)."""
        vision = self.model.vision
        if vision is not None and vision.encoder.clip_projection and vision.resampler is not None:
            raise ValueError(
                "model.vision.encoder.clip_projection: true projects CLIP's class token; it cannot feed "
                "model.vision.resampler (remove one of them)"
            )
        if not self.model.projection.identity:
            return
        for name in self.modalities():
            tower = getattr(self.model, name)
            if getattr(tower, "resampler", None) is not None:
                raise ValueError(
                    f"model.projection.identity: true has no head to project model.{name}.resampler's "
                    "latents; remove the resampler or set identity: false"
                )
            width = _declared(getattr(tower.encoder, "pooled_width", lambda: None))
            if width is not None and width != self.model.projection.max_dim:
                raise ValueError(
                    f"model.projection.max_dim={self.model.projection.max_dim} differs from model.{name}.encoder's "
                    f"embedding width {width}; with model.projection.identity (no head) set max_dim to {width}"
                )

    def modalities(self) -> list[str]:
        """The configured modalities, in the fixed order vision, audio, text."""
        return [m for m in MODALITIES if getattr(self.model, m) is not None]
