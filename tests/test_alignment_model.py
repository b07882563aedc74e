"""The stage-1 AlignmentModel against hand computations: per-pair loss weights, the two loss terms, and
the validation MRL term on the training loss's scale in every MRL mode."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from eg_data import ShardLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: conftest's helpers
from apps.alignment.build import build_model, prepare_assets
from apps.alignment.config import AlignmentConfig
from apps.alignment.evaluate import encoders_of
from apps.common.config import build_config
from apps.common.loaders import loader_for_encoders
from conftest import tiny_config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> tuple[Path, Path]:
    return tmp_path_factory.mktemp("alignment_model"), demo_data


def _model_and_batch(workdir: tuple[Path, Path], **overrides: object):
    folder, data = workdir
    cfg = build_config(AlignmentConfig, tiny_config(folder, data, **overrides), "test")
    prepare_assets(cfg, is_main=True)
    model = build_model(cfg)
    loader = ShardLoader(loader_for_encoders(cfg.data.train, encoders_of(model), "data.train"))
    loader.set_epoch(0)
    batch = next(iter(loader))
    return cfg, model, batch


def _by_hand(model, batch, pair: str, dims: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Contrastive loss at full width and at each dim, from the towers' projections and the pair's loss."""
    first, second = pair.split("_")
    z = model.embed(batch)
    valid = model.present(batch, first, len(batch["key"]), z[first].device)
    valid &= model.present(batch, second, len(batch["key"]), z[first].device)
    loss = model.contrastive[pair]
    full = loss(z[first], z[second], valid=valid)
    per_dim = [
        loss(F.normalize(z[first][:, :d], dim=-1), F.normalize(z[second][:, :d], dim=-1), valid=valid)
        for d in dims
    ]
    return full, per_dim


def test_pair_weights_scale_each_pair_in_the_total(workdir) -> None:
    """losses.pair_weights multiplies each pair's (contrastive + MRL) term: a model that ignored it fails."""
    weights = {"vision_text": 2.5, "audio_text": 0.5, "vision_audio": 0.0}
    cfg, model, batch = _model_and_batch(workdir, **{"losses.pair_weights": weights})
    model.eval()  # no dim draws, no dropout: the parts are deterministic
    with torch.no_grad():
        out = model(batch)
        expected = torch.zeros(())
        for pair, weight in weights.items():
            full, per_dim = _by_hand(model, batch, pair, model.mrl_dims)
            assert torch.allclose(out[f"{pair}/contrastive"], full, atol=1e-6)
            mrl = sum(per_dim)  # all dims trained: the weighted sum (weights 1)
            assert torch.allclose(out[f"{pair}/mrl"], mrl, atol=1e-6)
            expected = expected + weight * (cfg.losses.contrastive * full + cfg.losses.mrl * mrl)
    assert torch.allclose(out["loss"], expected, atol=1e-5)
    assert not torch.allclose(
        out["loss"],
        out["loss"] * 0
        + sum(
            cfg.losses.contrastive * out[f"{p}/contrastive"] + cfg.losses.mrl * out[f"{p}/mrl"]
            for p in weights
        ),
        atol=1e-3,
    )


@pytest.mark.parametrize(
    ("overrides", "dims_per_step"),
    [
        ({}, 3),
        ({"losses.sample_single_mrl_dim": True}, 1),
        ({"losses.num_sampled_mrl_dims": 2}, 2),
    ],
)
def test_validation_mrl_is_the_expected_training_draw(workdir, overrides, dims_per_step) -> None:
    """Eval MRL = k/n x sum over all n dims: the mean when one dim is drawn, the sum when all are trained,
    and the average of the training-mode values over every possible draw."""
    _, model, batch = _model_and_batch(workdir, **overrides)
    model.eval()
    with torch.no_grad():
        out = model(batch)
        _, per_dim = _by_hand(model, batch, "vision_text", model.mrl_dims)
    expected = torch.stack(per_dim).sum() * dims_per_step / len(per_dim)
    assert torch.allclose(out["vision_text/mrl"], expected, atol=1e-6)
    if dims_per_step == 1:
        assert torch.allclose(out["vision_text/mrl"], torch.stack(per_dim).mean(), atol=1e-6)
