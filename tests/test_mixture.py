"""Stage 1 on a mixture of sources (data.train.sources): each pair's loss uses only the samples that have
both sides (against a hand-written InfoNCE), a batch of a single-pair source trains nothing else, the
config refuses pairs that no source can feed, and the app's loader on a mixture resumes exactly."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from eg_data import MixtureLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: conftest's helpers
from apps.alignment.build import build_model, prepare_assets
from apps.alignment.config import AlignmentConfig
from apps.alignment.evaluate import encoders_of
from apps.common.config import ConfigError, build_config
from apps.common.loaders import loader_for_encoders
from conftest import tiny_config

PAIRS = ("vision_text", "audio_text", "vision_audio")


def mixture_overrides(data: Path, **weights: float) -> dict:
    sources = [
        {
            "name": "image_text",
            "shard_dir": str(data / "image_text" / "train"),
            "modalities": ["image", "text"],
        },
        {
            "name": "audio_text",
            "shard_dir": str(data / "audio_text" / "train"),
            "modalities": ["audio", "text"],
        },
    ]
    return {
        "data.train.shard_dir": "",
        "data.train.sources": sources,
        "data.train.required": ["text"],
        "losses.pair_weights": {"vision_audio": 0.0, **weights},
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, demo_data: Path):
    folder = tmp_path_factory.mktemp("mixture")
    # the tiny backbones, written from the single-folder config (prepare_assets reads the demo text model's
    # vocabulary from data.train.shard_dir, which a mixture leaves unset)
    prepare_assets(build_config(AlignmentConfig, tiny_config(folder, demo_data), "test"), is_main=True)
    raw = tiny_config(folder, demo_data, **mixture_overrides(demo_data))
    cfg = build_config(AlignmentConfig, raw, "test")
    model = build_model(cfg)
    model.eval()  # every MRL dim, no draws: deterministic parts
    loader_cfg = loader_for_encoders(cfg.data.train, encoders_of(model), "data.train")
    return cfg, model, loader_cfg


def infonce_by_hand(
    a: torch.Tensor, b: torch.Tensor, keep: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE over the kept rows only, written out: mean cross-entropy of each direction."""
    a, b = F.normalize(a[keep], dim=-1), F.normalize(b[keep], dim=-1)  # (K, D)
    logits = scale * a @ b.T  # (K, K)
    labels = torch.arange(len(a))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def first_batch_of(loader, source: str) -> dict:
    loader.set_epoch(0)
    for batch in loader:
        has = "image_text" if batch["image_present"].any() else "audio_text"
        if has == source:
            return batch
    raise AssertionError(f"no {source} batch in epoch 0")


def test_pair_losses_ignore_samples_missing_a_side(built, demo_data) -> None:
    """A tri-modal batch with some sides marked absent: each pair's contrastive loss equals InfoNCE over
    the rows that have both sides, and differs from InfoNCE over all rows (so ignoring the masks fails)."""
    _, model, loader_cfg = built
    full = dataclasses.replace(loader_cfg, sources=[], shard_dir=str(demo_data / "train"), required=["text"])
    loader = full.build()
    loader.set_epoch(0)
    batch = next(iter(loader))
    size = len(batch["key"])
    batch["image_present"][:4] = False  # samples without an image (their pixels stay: must be ignored)
    batch["audio_present"][3:7] = False
    batch["text_present"][10] = False
    with torch.no_grad():
        out = model(batch)
        z = model.embed(batch)
    sides = {"vision": "image_present", "audio": "audio_present", "text": "text_present"}
    for pair in PAIRS:
        first, second = pair.split("_")
        keep = batch[sides[first]] & batch[sides[second]]
        assert 0 < int(keep.sum()) < size
        scale = model.contrastive[pair].logit_scale
        expected = infonce_by_hand(z[first], z[second], keep, scale)
        assert torch.allclose(out[f"{pair}/contrastive"], expected, atol=1e-5), pair
        every_row = infonce_by_hand(z[first], z[second], torch.ones(size, dtype=torch.bool), scale)
        assert not torch.allclose(every_row, expected, atol=1e-3)
        dims = model.mrl_dims  # eval: the MRL term is every dim's InfoNCE on the same rows
        mrl = sum(infonce_by_hand(z[first][:, :d], z[second][:, :d], keep, scale) for d in dims)
        assert torch.allclose(out[f"{pair}/mrl"], mrl * model.mrl_dims_per_step / len(dims), atol=1e-5)


def test_a_source_batch_trains_only_the_pairs_it_has(built) -> None:
    """An audio-text batch of the mixture: audio_text is InfoNCE over all its rows, vision_text and
    vision_audio add nothing and report no part (so their logged curves average only the steps that
    trained them), and the vision projection gets no gradient from it."""
    _, model, loader_cfg = built
    loader = loader_cfg.build()
    assert isinstance(loader, MixtureLoader)
    batch = first_batch_of(loader, "audio_text")
    assert batch["audio_present"].all() and not batch["image_present"].any()
    model.zero_grad()
    out = model(batch)
    z = model.embed(batch)
    everyone = batch["text_present"].clone()  # all rows, but those whose caption text dropout removed
    scale = model.contrastive["audio_text"].logit_scale
    expected = infonce_by_hand(z["audio"], z["text"], everyone, scale)
    assert torch.allclose(out["audio_text/contrastive"], expected, atol=1e-5)
    assert not {"vision_text/contrastive", "vision_text/mrl", "vision_audio/contrastive"} & set(out)
    expected_total = model.pair_weights["audio_text"] * (
        model.cfg.losses.contrastive * out["audio_text/contrastive"]
        + model.cfg.losses.mrl * out["audio_text/mrl"]
    )
    assert torch.allclose(out["loss"], expected_total, atol=1e-5)
    out["loss"].backward()
    vision_grads = [p.grad for p in model.towers["vision"].projection.parameters()]
    assert all(g is None or not g.any() for g in vision_grads)
    audio_grads = [p.grad for p in model.towers["audio"].projection.parameters()]
    assert any(g is not None and g.any() for g in audio_grads)
    model.zero_grad()


def test_config_refuses_pairs_no_source_can_feed(tmp_path, demo_data) -> None:
    raw = tiny_config(tmp_path, demo_data, **mixture_overrides(demo_data, vision_audio=1.0))
    with pytest.raises(
        ConfigError, match=r"model\.pairs: 'vision_audio' needs samples with both image and audio"
    ):
        build_config(AlignmentConfig, raw, "test")
    raw = tiny_config(tmp_path, demo_data, **mixture_overrides(demo_data))
    raw["data"]["train"]["required"] = ["image", "text"]
    with pytest.raises(
        ConfigError, match=r"^test: data\.train\.required has 'image', which source 'audio_text'"
    ):
        build_config(AlignmentConfig, raw, "test")
    build_config(AlignmentConfig, tiny_config(tmp_path, demo_data, **mixture_overrides(demo_data)), "test")


def test_the_apps_mixture_loader_resumes_exactly(built) -> None:
    """Batches 5.. of epoch 1 after set_epoch(1, 5) on a fresh loader equal the uninterrupted run's."""
    _, _, loader_cfg = built
    uninterrupted = loader_cfg.build()
    reference = []
    for epoch in (0, 1):
        uninterrupted.set_epoch(epoch)
        reference = [{k: v.clone() if torch.is_tensor(v) else v for k, v in b.items()} for b in uninterrupted]
    resumed = loader_cfg.build()
    resumed.set_epoch(1, 5)
    got = list(resumed)
    assert len(got) == len(reference) - 5 > 0
    for mine, theirs in zip(got, reference[5:]):
        assert mine["key"] == theirs["key"]
        for name in ("image", "audio", "audio_mask", "image_present", "audio_present", "text_present"):
            assert torch.equal(mine[name], theirs[name]), name
