"""Stage 1 with an open_clip CLIP as both towers, trained as CLIP (its own projections, no Matryoshka head,
contrastive only): the real train app end to end, and the trained weights put back into open_clip give the
same embeddings as the app's model."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from eg_encoders import debug

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: conftest's helpers
from conftest import TRAIN_SCRIPT, run_app, tiny_config, write_config

REPO = Path(__file__).resolve().parent.parent


def clip_config(workdir: Path, data: Path) -> dict:
    """The tiny stage-1 config with a tiny open_clip CLIP (embed_dim 32) as the vision and the text tower."""
    files = debug.write_open_clip_clip(str(workdir / "clip"), seed=0, width=32, layers=1, embed_dim=32)
    cfg = tiny_config(workdir, data)
    cfg["demo_models"] = None
    cfg["data"]["train"].update(modalities=["image", "text"], required=["image", "text"], text_dropout=0.0)
    cfg["model"] = {
        "pairs": ["vision_text"],
        "projection": {"max_dim": 32, "identity": True},
        "vision": {
            "encoder": {**files, "trainable_blocks": -1, "clip_projection": True, "pooling": {"type": "cls"}}
        },
        "text": {"encoder": {**files, "trainable": True}},
    }
    cfg["losses"] = {
        "contrastive": 1.0,
        "mrl": 0.0,
        "infonce": {"temperature": 0.07, "learnable_temperature": True},
    }
    cfg["eval"].update(dims=[32], plot_max_points=0)
    cfg["train"].update(max_steps=2, val_every=0, save_every=2)
    return cfg


@pytest.mark.slow
def test_clip_trains_as_clip_and_exports_back_to_open_clip(tmp_path: Path, demo_data: Path) -> None:
    from apps.alignment.build import load_aligned

    cfg = clip_config(tmp_path, demo_data)
    done = run_app(TRAIN_SCRIPT, ["--config", str(write_config(tmp_path, cfg))], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    aligned = load_aligned(tmp_path / "checkpoints" / "tiny" / "checkpoint_latest.pt")
    model = aligned.model
    assert not list(model.towers["vision"].projection.parameters())  # no head on top of CLIP's projections
    assert not list(model.towers["text"].projection.parameters())

    # The trained towers' weights, renamed back into one open_clip CLIP (the vision tower holds `visual`, the
    # text tower the CLIP's text half): open_clip's own encode_image / encode_text give the app's embeddings.
    vision_cfg, text_cfg = cfg["model"]["vision"]["encoder"], cfg["model"]["text"]["encoder"]
    open_clip.add_model_config(vision_cfg["model_config_file"])
    clip = open_clip.create_model(vision_cfg["model_name"], pretrained=vision_cfg["pretrained"]).eval()
    initial = {k: v.clone() for k, v in clip.state_dict().items()}
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("towers.vision.encoder.backbone."):
            state["visual." + key.removeprefix("towers.vision.encoder.backbone.")] = value
        elif key.startswith("towers.text.encoder.model."):
            state[key.removeprefix("towers.text.encoder.model.")] = value
    missing, unexpected = clip.load_state_dict(state, strict=False)
    assert missing == ["logit_scale"] and not unexpected  # the temperature lives in the loss
    assert not torch.equal(clip.state_dict()["visual.proj"], initial["visual.proj"])  # 2 steps trained it
    assert not torch.equal(clip.state_dict()["text_projection"], initial["text_projection"])
    texts = ["the digit seven", "a handwritten zero"]
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.embed({"image": images, "text": texts})
        theirs_image = clip.encode_image(images)
        theirs_text = clip.encode_text(open_clip.get_tokenizer(text_cfg["model_name"])(texts))
    assert torch.allclose(ours["vision"], theirs_image, atol=1e-5)
    assert torch.allclose(ours["text"], theirs_text, atol=1e-5)


def test_clip_finetune_config_loads_as_clip() -> None:
    """configs/clip_finetune.yaml: both towers ViT-B-32 openai, CLIP's projections, no head, contrastive only;
    the widths are checked from open_clip's bundled model config (no weights, no download)."""
    from apps.alignment.config import AlignmentConfig
    from apps.common.config import load_config

    cfg = load_config(AlignmentConfig, REPO / "configs" / "clip_finetune.yaml")
    vision, text = cfg.model.vision.encoder, cfg.model.text.encoder
    assert (
        (vision.model_name, vision.pretrained) == (text.model_name, text.pretrained) == ("ViT-B-32", "openai")
    )
    assert vision.pooled_width() == text.pooled_width() == cfg.model.projection.max_dim == 512
    assert cfg.model.projection.identity and cfg.losses.mrl == 0.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.projection.max_dim=256", "eval.dims=[256]"],
            "model.projection.max_dim=256 differs from model.vision",
        ),
        (["model.vision.encoder.clip_projection=false"], "model.vision.encoder's embedding width 768"),
        (
            ["model.text.encoder.max_seq_length=16"],
            "model.text.encoder.max_seq_length=16 is a sentence_transformers",
        ),
        (
            ["model.vision.encoder.pooling.type=mean"],
            "model.vision.encoder.pooling.type='mean': clip_projection",
        ),
        (["model.projection.hidden_dim=64"], "model.projection.hidden_dim=64: identity has no head"),
        (
            ["model.vision.resampler={dim: 64}", "model.projection.identity=false"],
            "model.vision.encoder.clip_projection: true projects CLIP's class token",
        ),
    ],
)
def test_bad_clip_combinations_are_refused_at_load(overrides: list[str], message: str) -> None:
    from apps.alignment.config import AlignmentConfig
    from apps.common.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(AlignmentConfig, REPO / "configs" / "clip_finetune.yaml", overrides)
