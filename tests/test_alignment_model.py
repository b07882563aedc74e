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


def _infonce_02(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """eg-losses 0.2's InfoNCE written out: two matmuls, -inf masks, cross-entropy over the valid rows."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    labels, mask = torch.arange(a.shape[0]), ~valid[None, :]
    loss_ab = F.cross_entropy(
        (scale * a @ b.T).masked_fill(mask, float("-inf"))[valid], labels[valid], reduction="sum"
    )
    loss_ba = F.cross_entropy(
        (scale * b @ a.T).masked_fill(mask, float("-inf"))[valid], labels[valid], reduction="sum"
    )
    return (loss_ab + loss_ba) / (2 * valid.sum().clamp(min=1))


@pytest.mark.parametrize(
    "overrides", [{}, {"losses.sample_single_mrl_dim": True}, {"losses.num_sampled_mrl_dims": 2}]
)
def test_fused_pair_loss_equals_the_two_terms_computed_apart(workdir, overrides) -> None:
    """Training mode: the pair loss (contrastive at max_dim taken from the fused MRL pass, + MRL at the drawn
    dims) equals 0.25 x InfoNCE + 1.0 x MRL computed dim by dim with the 0.2 formula, and so do the gradients
    of the embeddings and of every pair's temperature (1e-5 relative), with text-dropout rows masked."""
    cfg, model, batch = _model_and_batch(workdir, **overrides)
    model.train()
    batch["text_present"] = torch.ones(len(batch["key"]), dtype=torch.bool)
    batch["text_present"][[1, 5, 6]] = False  # captions removed by text dropout
    with torch.no_grad():
        fixed = {m: z.detach() for m, z in model.embed(batch).items()}
    z = {m: t.clone().requires_grad_() for m, t in fixed.items()}
    model.embed = lambda _batch: z  # the loss part alone, on fixed embeddings
    draws = {p: torch.Generator().set_state(model.mrl[p].generator.get_state()) for p in model.pairs}
    out = model(batch)
    out["loss"].backward()
    ref_z = {m: t.clone().requires_grad_() for m, t in fixed.items()}
    scales = {p: model.contrastive[p].log_logit_scale.detach().clone().requires_grad_() for p in model.pairs}
    expected = torch.zeros(())
    for pair in model.pairs:
        first, second = pair.split("_")
        valid = model.present(batch, first, len(batch["key"]), "cpu") & model.present(
            batch, second, 64, "cpu"
        )
        mrl = model.mrl[pair]
        k = 1 if cfg.losses.sample_single_mrl_dim else cfg.losses.num_sampled_mrl_dims
        picked = torch.randperm(len(mrl.dims), generator=draws[pair])[:k].tolist() if k else range(3)
        a, b, scale = ref_z[first], ref_z[second], scales[pair].exp()
        con = _infonce_02(a, b, valid, scale)
        mrl_term = sum(
            mrl.weights[i] * _infonce_02(a[:, : mrl.dims[i]], b[:, : mrl.dims[i]], valid, scale)
            for i in sorted(picked)
        )
        torch.testing.assert_close(out[f"{pair}/contrastive"], con, rtol=1e-5, atol=1e-5 * con.abs().item())
        torch.testing.assert_close(out[f"{pair}/mrl"], mrl_term, rtol=1e-5, atol=1e-5 * mrl_term.abs().item())
        expected = expected + cfg.losses.contrastive * con + cfg.losses.mrl * mrl_term
    expected.backward()
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=0.0)
    for m, grad in ((m, t.grad) for m, t in z.items()):
        top = ref_z[m].grad.abs().max().item()
        torch.testing.assert_close(grad, ref_z[m].grad, rtol=1e-5, atol=1e-5 * top)
    assert z["text"].grad[[1, 5, 6]].abs().sum() == 0  # dropped captions take no part
    assert z["vision"].grad[[1, 5, 6]].abs().sum() > 0  # their images still do, in vision_audio
    for pair in model.pairs:
        grad, ref = model.contrastive[pair].log_logit_scale.grad, scales[pair].grad
        torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-5 * ref.abs().item())
