"""Building stage 2 from its config: the stage-1 towers (from the checkpoint the config names), the decoder,
the QA model, and the loader settings the stage-1 encoders dictate. Training and evaluation share these.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from eg_data import LoaderConfig
from eg_decoders import Decoder
from eg_train import load_model_weights

from apps.common.config import ConfigError
from apps.common.loaders import loader_for_encoders
from apps.qa.config import DecoderChoice, QAConfig
from apps.qa.model import QAModel


def stage1_command(checkpoint: str) -> str:
    """The command that writes `checkpoint`: `uv run apps/train --config configs/<name>.yaml` when the
    checkpoint sits in checkpoints/<name>/ and that config exists, else a generic form."""
    parts = Path(checkpoint).parts
    if len(parts) >= 2 and parts[-3:-2] == ("checkpoints",):
        config = Path("configs") / f"{parts[-2]}.yaml"
        if config.is_file():
            return f"uv run apps/train --config {config}"
    return "uv run apps/train --config <the stage-1 config that writes it>"


def load_stage1(cfg: QAConfig, device: str | torch.device = "cpu") -> Any:
    """The trained stage-1 model of `stage1.checkpoint` (apps.alignment's `Aligned`), frozen, on `device`.

    A missing file is refused with the command that trains it; a checkpoint whose weights do not match the
    config stored in it (a missing, unexpected or mis-shaped key) is refused by `load_aligned`; towers whose
    fingerprint differs from a non-empty `stage1.fingerprint` are refused.
    """
    checkpoint = cfg.stage1.checkpoint
    if not Path(checkpoint).is_file():
        raise ConfigError(
            f"stage1.checkpoint={checkpoint!r} not found; train stage 1 first: {stage1_command(checkpoint)}"
        )
    from apps.alignment import load_aligned

    aligned = load_aligned(checkpoint, device)
    expected = cfg.stage1.fingerprint
    if expected:
        from apps.alignment.embed import weights_fingerprint

        found = weights_fingerprint(aligned.towers)
        if found != expected:
            raise ConfigError(
                f"stage1.fingerprint={expected!r} but stage1.checkpoint {checkpoint} holds other tower weights "
                f"(fingerprint {found!r}): it is not the stage-1 model this config was trained on"
            )
    absent = [m for m in cfg.model.modalities if m not in aligned.towers]
    if absent:
        raise ConfigError(
            f"model.modalities: {absent} not in stage1.checkpoint {checkpoint} (it has {list(aligned.towers)})"
        )
    return aligned


def make_decoder(choice: DecoderChoice) -> Decoder:
    """A fresh decoder of the chosen variant (no projector of its own: the QA model projects per modality)."""
    variant = choice.variant()
    if choice.type == "qwen" and variant.quantization == "8bit":
        # bitsandbytes logs "inputs will be cast ... to float16" on every 8-bit matmul whose input is not
        # float16 (always, after prepare_model_for_kbit_training keeps norms in float32): said once here.
        logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
        print("note: bitsandbytes computes the 8-bit matmuls in float16 (its per-call warning is silenced)")
    return variant.build()


def build_model(cfg: QAConfig, towers: Any) -> QAModel:
    """The QA model over `towers` (the stage-1 ModalityTowers), seeded by `seed` so every rank starts equal."""
    torch.manual_seed(cfg.seed)
    return QAModel(cfg.model, towers, make_decoder(cfg.model.decoder))


def qa_loader_config(cfg: QAConfig, towers: Any) -> LoaderConfig:
    """data.train with the image/audio settings the stage-1 encoders dictate."""
    encoders = {m: towers[m].encoder for m in cfg.model.modalities}
    return loader_for_encoders(cfg.data.train, encoders, "data.train")


def load_trained(
    cfg: QAConfig, checkpoint: str | Path, device: str | torch.device = "cpu"
) -> tuple[QAModel, Any, dict]:
    """(the QA model of `cfg` with the weights of `checkpoint` on `device`, its stage-1 `Aligned`, the
    checkpoint's metadata): the stage-1 towers from `stage1.checkpoint`, then the decoder and projectors,
    each loaded strictly. The evaluation and `load_qa` rebuild a trained model with this one function."""
    aligned = load_stage1(cfg)
    model = build_model(cfg, aligned.towers)
    meta = load_model_weights(model, checkpoint)
    model.to(device)
    return model, aligned, meta
