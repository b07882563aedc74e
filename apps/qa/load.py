"""Ask a trained stage-2 (QA) model outside a training run: `load_qa(checkpoint)` -> `QAAssistant`.

    assistant = load_qa("checkpoints/demo_qa_trm/checkpoint_best.pt")
    assistant.answer("which digit is this?", image="digit.png", audio="digit.flac")  # '7'

The model is rebuilt as the evaluation rebuilds it (`apps.qa.build.load_trained`): the config stored in the
stage-2 checkpoint names the stage-1 checkpoint, whose towers are rebuilt from its own stored config and
loaded strictly; then the decoder and projectors are loaded strictly from the stage-2 checkpoint.

Inputs are prepared as the evaluation loader prepares a shard sample: images and audio decoded as eg-data
decodes shard bytes (`read_image` / `read_audio`), transformed with the loader settings the stage-1 encoders
dictate and no augmentation (`transform_image` / `transform_audio`); the question stripped, as eg-data strips
it. The answer is `QAModel.generate` with the prefix of exactly the modalities given (image+audio, image,
audio, or none: the evaluation's variants, blind included), greedy, at the evaluation's `eval.max_new_tokens`,
so it equals the evaluation's answer for the same sample and prefix.

Paths stored in the checkpoint's config (the stage-1 checkpoint, the backbone files it names) resolve from the
current folder, as they did in training: run from the folder the model was trained in.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from eg_data import transform_audio, transform_image
from eg_data.transforms import SAMPLE_RATE
from eg_train import load_checkpoint

from apps.alignment.embed import AudioInput, ImageInput, InputError, read_audio, read_image
from apps.common.config import build_config
from apps.qa.build import load_trained, qa_loader_config
from apps.qa.config import BATCH_KEY, QAConfig
from apps.qa.model import QAModel

INPUT_MODALITY = {key: modality for modality, key in BATCH_KEY.items()}  # "image" -> "vision", "audio"
NAMES = {"vision": "images", "audio": "audio"}


def config_of_qa_checkpoint(checkpoint: str | Path) -> QAConfig:
    """The stage-2 config stored in `checkpoint`, validated as if loaded from YAML; InputError for a missing
    file, a stage-1 (alignment) checkpoint, or any other checkpoint without a stage-2 config."""
    path = Path(checkpoint)
    if not path.is_file():
        raise InputError(f"checkpoint {str(path)!r} does not exist")
    raw: dict[str, Any] = load_checkpoint(path).get("run_config") or {}
    stage = raw.get("stage", "alignment")
    if stage == "alignment" and "model" in raw:
        raise InputError(
            f"{path} is a stage-1 (alignment) checkpoint; asking needs a stage-2 (QA) checkpoint, written by "
            "a `stage: qa` config (e.g. checkpoints/demo_qa_trm/checkpoint_best.pt)"
        )
    if stage != "qa" or "model" not in raw:
        held = f"its stored config has stage={stage!r}" if raw else "it stores no run config"
        raise InputError(f"{path} is not a stage-2 (QA) checkpoint ({held})")
    return build_config(QAConfig, raw, f"{path} (stored config)")


def load_qa(checkpoint: str | Path, device: str | torch.device = "cpu") -> QAAssistant:
    """Rebuild the stage-2 model of `checkpoint` and its stage-1 towers on `device`, weights loaded strictly."""
    cfg = config_of_qa_checkpoint(checkpoint)
    stage1 = cfg.stage1.checkpoint
    if not Path(stage1).is_file():
        where = (
            ""
            if Path(stage1).is_absolute()
            else " (a path relative to the folder it was trained in: run from there)"
        )
        raise InputError(
            f"{checkpoint} needs its stage-1 checkpoint {stage1!r} (stage1.checkpoint of its stored config), "
            f"which does not exist{where}"
        )
    model, aligned, meta = load_trained(cfg, checkpoint, device)
    return QAAssistant(cfg, model, aligned, str(checkpoint), int(meta.get("step") or 0))


@dataclasses.dataclass
class Prepared:
    """One question with its inputs transformed as the evaluation loader transforms a sample."""

    question: str
    image: torch.Tensor | None = None  # (3, S, S) normalized
    audio: tuple[torch.Tensor, torch.Tensor] | None = (
        None  # log-mel (n_mels, n_frames), frame mask (n_frames,)
    )

    @property
    def modalities(self) -> tuple[str, ...]:
        """The prefix modalities this question is asked with, in prefix order."""
        return tuple(
            m for m, has in (("vision", self.image is not None), ("audio", self.audio is not None)) if has
        )


class QAAssistant:
    """A trained stage-2 model ready to answer: `answer(question, image=, audio=)`, `answer_many(items)`.

    `modalities`: the stage-1 towers the model was trained with as prefix ("vision", "audio");
    `inputs`: the same as input names ("image", "audio"); `checkpoint`, `step`, `config` (the stored one).
    """

    def __init__(self, config: QAConfig, model: QAModel, aligned: Any, checkpoint: str, step: int) -> None:
        self.config, self.model, self.aligned = config, model.eval(), aligned
        self.checkpoint, self.step = checkpoint, step
        loader_cfg = qa_loader_config(config, aligned.towers)
        self.image_config = dataclasses.replace(loader_cfg.image, augment=False)  # as eval_loader sets it
        self.audio_config = loader_cfg.audio
        self.max_new_tokens = config.eval.max_new_tokens
        self.batch_size = config.eval.batch_size

    @property
    def modalities(self) -> list[str]:
        """The prefix modalities the model was trained with, in prefix order (a subset of vision, audio)."""
        return list(self.model.modalities)

    @property
    def inputs(self) -> list[str]:
        """`modalities` as the input names of `answer`: "image" for vision, "audio"."""
        return [BATCH_KEY[m] for m in self.modalities]

    @property
    def device(self) -> torch.device:
        return next(self.model.projectors.parameters()).device

    def prepare(
        self, question: str, image: ImageInput | None = None, audio: AudioInput | None = None, what: str = ""
    ) -> Prepared:
        """Check and transform one question's inputs (`what` prefixes the names in errors, e.g. "items[3].").

        image: a path or PIL image; audio: a path (flac/wav, any rate), a 1-D float wave at 16 kHz
        (`sample_rate`), or a (wave, rate) pair. InputError for an empty question, an unreadable file, or an
        input of a modality the model was not trained with.
        """
        if not isinstance(question, str) or not question.strip():
            raise InputError(f"{what}question is {question!r}; ask a non-empty question")
        prepared = Prepared(question.strip())  # eg-data strips the questions of the shards
        for key, item in (("image", image), ("audio", audio)):
            if item is None:
                continue
            modality = INPUT_MODALITY[key]
            if modality not in self.modalities:
                raise InputError(
                    f"{self.checkpoint} was trained without {NAMES[modality]} (its modalities: "
                    f"{', '.join(self.modalities)}); ask without the {key} {_shown(item)}"
                )
            if key == "image":
                prepared.image = transform_image(read_image(item, f"{what}image"), self.image_config)
            else:
                wave = read_audio(item, f"{what}audio")
                if (
                    len(wave) > self.audio_config.n_samples
                ):  # cut as the evaluation loader cuts; said, not silent
                    warnings.warn(
                        f"{what}audio {_shown(item)} lasts {len(wave) / SAMPLE_RATE:.1f} s; the model hears its "
                        f"first {self.audio_config.n_samples / SAMPLE_RATE:.1f} s (the audio encoder's context)",
                        stacklevel=2,
                    )
                prepared.audio = transform_audio(wave, self.audio_config)
        return prepared

    def answer(self, question: str, image: ImageInput | None = None, audio: AudioInput | None = None) -> str:
        """The model's greedy answer to `question` with the prefix of the inputs given (none: blind)."""
        return self.answer_prepared([self.prepare(question, image, audio)])[0]

    def answer_many(self, items: Iterable[Mapping[str, Any]]) -> list[str]:
        """Answers to `{"question": str, "image": ... (optional), "audio": ... (optional)}` items, in order,
        batched (`eval.batch_size` questions a batch, grouped by the modalities given). Every item is
        checked before any is answered."""
        prepared = []
        for i, item in enumerate(items):
            unknown = sorted(set(item) - {"question", "image", "audio"})
            if unknown:
                raise InputError(f"items[{i}] has keys {unknown}; use question, image, audio")
            prepared.append(
                self.prepare(item.get("question"), item.get("image"), item.get("audio"), f"items[{i}].")
            )
        return self.answer_prepared(prepared)

    def answer_prepared(self, prepared: Sequence[Prepared]) -> list[str]:
        """Answers to prepared questions: one `QAModel.generate` per batch of questions sharing modalities."""
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, item in enumerate(prepared):
            groups.setdefault(item.modalities, []).append(i)
        answers = [""] * len(prepared)
        for modalities, rows in groups.items():
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                batch = self.collate([prepared[i] for i in chunk], modalities)
                for i, text in zip(chunk, self.model.generate(batch, modalities, self.max_new_tokens)):
                    answers[i] = text
        return answers

    def collate(self, items: Sequence[Prepared], modalities: Sequence[str]) -> dict[str, Any]:
        """A batch dict as eg-data collates one, on the model's device, for items that all have `modalities`."""
        batch: dict[str, Any] = {"question": [item.question for item in items]}
        if "vision" in modalities:
            batch["image"] = torch.stack([item.image for item in items]).to(self.device)  # (B, 3, S, S)
        if "audio" in modalities:
            batch["audio"] = torch.stack([item.audio[0] for item in items]).to(self.device)  # (B, M, F)
            batch["audio_mask"] = torch.stack([item.audio[1] for item in items]).to(self.device)  # (B, F)
        return batch


def _shown(item: Any) -> str:
    """A path as given, else the kind of object (for error messages)."""
    return repr(str(item)) if isinstance(item, (str, Path)) else f"({type(item).__name__})"
