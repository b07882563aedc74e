"""open_clip interop: a run whose vision and text towers are the two towers of one open_clip CLIP
(configs/clip_finetune.yaml: both `backend: open_clip` with the same model, `clip_projection: true`,
`projection.identity: true`) also exports DIR/open_clip/: `open_clip_model.safetensors`, the full CLIP
state dict that `open_clip.create_model_and_transforms(NAME, pretrained=FILE)` loads strictly, giving the
same image and text features as the export (the fine-tuned CLIP used in open_clip as it is), plus the
model config JSON when the model is not one of open_clip's own names (register it with
`open_clip.add_model_config(FILE)` first).

The image tower is CLIP's `visual` (its class token after ln_post times `proj`); the text tower is the
CLIP text transformer with its projection; `logit_scale` is the trained temperature (log of the capped
scale, as open_clip stores it).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import torch

OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"


def open_clip_reason(aligned: Any) -> str | None:
    """Why the run cannot be exported as one open_clip CLIP (None when it can)."""
    cfg = aligned.config
    towers = set(aligned.model.towers)
    if towers != {"vision", "text"}:
        return f"the towers are {sorted(towers)}, not vision and text"
    vision, text = cfg.model.vision.encoder, cfg.model.text.encoder
    if vision.backend != "open_clip" or text.backend != "open_clip":
        return "both towers must use backend open_clip"
    if vision.model_name != text.model_name or vision.model_config_file != text.model_config_file:
        return "the vision and text towers are different open_clip models"
    if not vision.clip_projection or not cfg.model.projection.identity:
        return "needs model.vision.encoder.clip_projection: true and model.projection.identity: true"
    if getattr(cfg.model.vision, "resampler", None) is not None:
        return "the vision tower has a resampler"
    return None


def open_clip_state(aligned: Any) -> dict[str, torch.Tensor]:
    """The CLIP state dict (open_clip's key names) of the trained towers, sorted, contiguous CPU copies."""
    towers = aligned.model.towers
    state = {f"visual.{k}": v for k, v in towers["vision"].encoder.backbone.state_dict().items()}
    state |= dict(towers["text"].encoder.model.state_dict().items())
    scale = aligned.model.contrastive["vision_text"].logit_scale.detach().float()
    state["logit_scale"] = torch.tensor(math.log(float(scale)))
    return {k: state[k].detach().cpu().contiguous().clone() for k in sorted(state)}


def export_open_clip(aligned: Any, out: Path) -> dict[str, str]:
    """Write out/open_clip/; returns {"model_name", "pretrained", "model_config_file"} for open_clip."""
    from safetensors.torch import save_file

    folder = out / "open_clip"
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / OPEN_CLIP_WEIGHTS
    save_file(open_clip_state(aligned), str(weights))
    vision = aligned.config.model.vision.encoder
    config_file = ""
    if vision.model_config_file:
        config_file = str(folder / Path(vision.model_config_file).name)
        shutil.copy2(vision.model_config_file, config_file)
    return {"model_name": vision.model_name, "pretrained": str(weights), "model_config_file": config_file}
