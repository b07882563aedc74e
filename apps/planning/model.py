"""The model a config trains, built by the apps' own builders under FakeTensorMode, and a batch to step it.

Stage 1: `apps.alignment.build.build_model` on the config whose backbones build offline (offline.py).
Stage 2: the stage-1 towers from the stage-1 config (the checkpoint's stored config when it exists, else
`--stage1-config`), then `apps.qa.build.build_model`; a quantized Qwen gets its 8/4-bit layers through
int8.py, since bitsandbytes' weights cannot be fake tensors.

The batch is the worst case the run can meet: every sample has every modality, audio fills the encoder's
context, and every text is as long as its tokenizer or decoder allows (captions truncated at the text
tower's max length, question + answer at the decoder's max_length, or what max_seq_len leaves after the
prefix). Its masks and token ids are real tensors (they steer control flow); images and log-mels are fake.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import unset_fake_temporarily

from apps.common.config import ConfigError, load_config
from apps.planning import int8, offline

QA_ANSWER = "a short answer"


@dataclass
class PlannedModel:
    """A model built for planning: the module, its trainer settings, components and batch shapes."""

    model: nn.Module
    stage: str
    config: Any  # the offline config the model was built from
    train: Any  # eg_train.TrainerConfig
    param_groups: list[dict[str, Any]]
    components: list[tuple[str, nn.Module]]
    inputs: dict[str, Any]  # shapes of the batch: image size, n_mels/n_frames, text lengths
    notes: list[str] = field(default_factory=list)
    quantized: int8.QuantizedSummary | None = None


def _stage1_components(model: nn.Module, prefix: str = "towers") -> list[tuple[str, nn.Module]]:
    """(label, module) per part of each tower: encoder backbone and pooling, resampler, pooling, projection."""
    parts: list[tuple[str, nn.Module]] = []
    for name, tower in model.towers.items():
        for child_name, child in tower.encoder.named_children():
            parts.append((f"{name}.encoder.{child_name}", child))
        for child_name in ("resampler", "pooling", "projection"):
            child = getattr(tower, child_name, None)
            if child is not None:
                parts.append((f"{name}.{child_name}", child))
    return parts


def _load_stage1(path: str, overrides: list[str] | None = None) -> Any:
    from apps.alignment.config import AlignmentConfig

    return load_config(AlignmentConfig, path, overrides or [])


def build_alignment(cfg: Any, work_dir: Path, notes: list[str], real: bool = False) -> PlannedModel:
    """The stage-1 model of `cfg` (call under FakeTensorMode); with `real`, as configured: weights loaded,
    for a real step (apps/planning/truncated.py)."""
    from apps.alignment.build import build_model

    offline_cfg = cfg if real else offline.offline_alignment_config(cfg, work_dir, notes)
    model = build_model(offline_cfg)
    parts = _stage1_components(model)
    parts.append(("losses", nn.ModuleList([model.contrastive, model.mrl])))
    return PlannedModel(
        model=model,
        stage="alignment",
        config=offline_cfg,
        train=cfg.train,
        param_groups=model.param_groups(cfg.train.lr),
        components=parts,
        inputs=_tower_inputs(model.towers, offline_cfg),
        notes=notes,
    )


def stage1_config_of(cfg: Any, stage1_config: str | None, notes: list[str]) -> Any:
    """The stage-1 config whose towers a stage-2 config uses: the checkpoint's stored one, or the file given."""
    checkpoint = cfg.stage1.checkpoint
    if Path(checkpoint).is_file():
        from apps.alignment.build import config_of_checkpoint

        notes.append(f"stage1: towers from the config stored in {checkpoint}")
        return config_of_checkpoint(checkpoint)
    if not stage1_config:
        raise ConfigError(
            f"stage1.checkpoint={checkpoint!r} does not exist yet; plan it from the stage-1 config with "
            "--stage1-config configs/<stage-1>.yaml"
        )
    notes.append(f"stage1: {checkpoint} not written yet; towers from {stage1_config}")
    return _load_stage1(stage1_config)


def build_qa(cfg: Any, stage1_cfg: Any, work_dir: Path, notes: list[str], real: bool = False) -> PlannedModel:
    """The stage-2 model of `cfg` over the towers of `stage1_cfg` (call under FakeTensorMode); with `real`,
    as configured (weights loaded, bitsandbytes' own 8/4-bit layers), for a real step."""
    from apps.alignment.build import build_towers
    from apps.qa.build import build_model

    towers_cfg = stage1_cfg if real else offline.offline_alignment_config(stage1_cfg, work_dir, notes)
    absent = [m for m in cfg.model.modalities if getattr(towers_cfg.model, m) is None]
    if absent:
        raise ConfigError(f"model.modalities: {absent} not among the stage-1 config's towers")
    towers = build_towers(towers_cfg)
    towers.requires_grad_(False)  # load_stage1 freezes the loaded towers
    offline_cfg = cfg if real else offline.offline_qa_config(cfg, work_dir, notes)
    model = build_model(offline_cfg, towers)
    quantized = None
    if not real and cfg.model.decoder.type == "qwen" and cfg.model.decoder.qwen.quantization != "none":
        quantized = int8.quantize_like_bitsandbytes(model.decoder, cfg.model.decoder.qwen)
        notes.append(quantized.note)
    parts = _stage1_components(model)
    parts += [(f"projectors.{m}", p) for m, p in model.projectors.items()]
    parts.append(("decoder", model.decoder))
    inputs = _tower_inputs(model.towers, towers_cfg)
    inputs["text_tokens"] = _qa_text_tokens(model)
    return PlannedModel(
        model=model,
        stage="qa",
        config=offline_cfg,
        train=cfg.train,
        param_groups=model.param_groups(cfg.train.lr),
        components=parts,
        inputs=inputs,
        notes=notes,
        quantized=quantized,
    )


def _tower_inputs(towers: nn.ModuleDict, cfg: Any) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    if "vision" in towers:
        inputs["image_size"] = towers["vision"].encoder.image_spec.size
    if "audio" in towers:
        spec = towers["audio"].encoder.audio_spec
        inputs["n_mels"], inputs["n_frames"] = spec.n_mels, spec.n_frames
    if "text" in towers:
        encoder = towers["text"].encoder
        length = getattr(encoder, "model", None)
        if hasattr(encoder, "tokenizer") and hasattr(encoder.tokenizer, "context_length"):
            inputs["text_tokens"] = int(encoder.tokenizer.context_length)
        else:
            inputs["text_tokens"] = int(length.max_seq_length)
    return inputs


def _prefix_tokens(model: nn.Module) -> int:
    """Prefix positions of a full sample: each modality's token count (resampler latents or encoder tokens)."""
    total = 0
    for name, tower in model.towers.items():
        if tower.resampler is not None:
            total += tower.resampler.config.num_latents
        elif name == "vision":
            spec = tower.encoder.image_spec.size
            patch = (
                tower.encoder.backbone.patch_size if hasattr(tower.encoder.backbone, "patch_size") else None
            )
            side = spec // (patch[0] if isinstance(patch, tuple) else patch)
            total += side * side + 1
        else:
            total += tower.encoder.audio_spec.n_frames // 2
    return total


def _qa_text_tokens(model: nn.Module) -> int:
    """Question + answer tokens of the longest sample the decoder takes."""
    decoder = model.decoder
    if hasattr(decoder.config, "max_seq_len"):  # the byte-level decoders count the prefix in max_seq_len
        return decoder.config.max_seq_len - _prefix_tokens(model)
    return decoder.max_length


def _long_text(tokens: int) -> str:
    return " ".join(["a"] * (tokens + 8))


def _question(decoder: Any, tokens: int) -> str:
    """A question whose prompt plus QA_ANSWER has exactly `tokens` tokens (or more: the decoder truncates)."""
    answer = len(decoder.answer_ids(QA_ANSWER))
    words = max(1, tokens - answer)
    question = _long_text(words)
    if hasattr(decoder.config, "max_seq_len"):  # byte tokens: trim to the exact length
        while len(decoder.prompt_ids(question)) + answer > tokens and len(question) > 1:
            question = question[: len(question) - max(1, len(decoder.prompt_ids(question)) + answer - tokens)]
    return question


def make_batch(planned: PlannedModel, batch_size: int, step: int = 0) -> dict[str, Any]:
    """A full batch of `batch_size` samples (call under the fake step mode)."""
    inputs = planned.inputs
    size = batch_size
    with unset_fake_temporarily():  # masks and flags: real, whatever the batch size
        flags = torch.ones(size, dtype=torch.bool)
        audio_mask = torch.ones(size, inputs["n_frames"], dtype=torch.bool) if "n_frames" in inputs else None
    batch: dict[str, Any] = {"key": [f"plan-{step}-{i}" for i in range(size)]}
    towers = planned.model.towers
    if "vision" in towers:
        side = inputs["image_size"]
        batch["image"] = torch.empty(size, 3, side, side).normal_()  # (B, 3, S, S) fake
        batch["image_present"] = flags
    if "audio" in towers:
        batch["audio"] = torch.empty(size, inputs["n_mels"], inputs["n_frames"]).normal_()  # (B, M, T) fake
        batch["audio_mask"] = audio_mask
        batch["audio_present"] = flags
    if planned.stage == "alignment":
        if "text" in towers:
            batch["text"] = [_long_text(inputs["text_tokens"])] * size
            batch["text_present"] = flags
    else:
        batch["question"] = [_question(planned.model.decoder, inputs["text_tokens"])] * size
        batch["answer"] = [QA_ANSWER] * size
        batch["qa_present"] = flags
    return batch


def without_checkpointing(cfg: Any) -> Any:
    """`cfg` with every gradient checkpointing switch off (model FLOPs are counted without recompute)."""
    if getattr(cfg, "stage", "alignment") == "qa":
        choice = cfg.model.decoder
        if choice.type != "qwen" or not choice.qwen.gradient_checkpointing:
            return cfg
        decoder = dataclasses.replace(
            choice, qwen=dataclasses.replace(choice.qwen, gradient_checkpointing=False)
        )
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, decoder=decoder))
    towers = {}
    for name in ("vision", "audio", "text"):
        tower = getattr(cfg.model, name)
        if tower is not None and tower.encoder.grad_checkpointing:
            towers[name] = dataclasses.replace(
                tower, encoder=dataclasses.replace(tower.encoder, grad_checkpointing=False)
            )
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **towers)) if towers else cfg


def uses_checkpointing(cfg: Any) -> bool:
    """Whether any part of `cfg` recomputes activations in backward."""
    return without_checkpointing(cfg) is not cfg
