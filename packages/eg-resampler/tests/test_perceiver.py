"""PerceiverResampler: shapes, exact invariance to masked padding, media embeddings, gradients, errors."""

import pytest
import torch
from eg_resampler import PerceiverResampler, PerceiverResamplerConfig, ResamplerError

CONFIG = PerceiverResamplerConfig(
    dim=16, depth=2, num_latents=5, heads=2, dim_head=8, ff_mult=2, input_dim=12
)


def _model(**changes) -> PerceiverResampler:
    torch.manual_seed(0)
    config = PerceiverResamplerConfig(**{**CONFIG.__dict__, **changes})
    return config.build().eval()


def test_output_shape_and_config_build():
    model = _model()
    assert model(torch.randn(3, 7, 12)).shape == (3, 5, 16)
    torch.manual_seed(0)
    same = PerceiverResampler(CONFIG)  # the constructor build() calls: same weights from the same seed
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), same.state_dict().values()))
    assert model.config == CONFIG
    no_proj = _model(input_dim=None)
    assert isinstance(no_proj.input_proj, torch.nn.Identity)
    assert no_proj(torch.randn(2, 4, 16)).shape == (2, 5, 16)


def test_garbage_padding_with_mask_equals_unpadded():
    model = _model()
    torch.manual_seed(1)
    short, long = torch.randn(1, 4, 12), torch.randn(1, 9, 12)
    batch = torch.full((2, 9, 12), 1e4)  # garbage in the padding
    batch[0, :4], batch[1] = short[0], long[0]
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, :4], mask[1] = True, True
    with torch.no_grad():
        out = model(batch, mask)
        assert torch.allclose(out[0], model(short)[0], atol=1e-5)
        assert torch.allclose(out[1], model(long)[0], atol=1e-5)
        batch[0, 4:] = torch.randn(5, 12) * 50  # other garbage, same result
        assert torch.allclose(model(batch, mask)[0], out[0], atol=1e-5)


def test_padding_inside_each_medium_and_media_embeddings():
    model = _model(max_num_media=3)
    torch.manual_seed(2)
    frames = torch.randn(1, 2, 3, 12)  # (B, M, T, D_in)
    padded = torch.randn(1, 2, 5, 12) * 100
    padded[:, :, :3] = frames
    mask = torch.zeros(1, 2, 5, dtype=torch.bool)
    mask[:, :, :3] = True
    with torch.no_grad():
        out = model(frames)
        assert torch.allclose(model(padded, mask), out, atol=1e-5)
        # Media embeddings make the frame order matter; without them the resampler is order-blind.
        swapped = frames.flip(1)
        assert not torch.allclose(model(swapped), out, atol=1e-4)
        plain = _model()
        assert torch.allclose(plain(swapped), plain(frames), atol=1e-5)
        with pytest.raises(ResamplerError, match="max_num_media"):
            model(torch.randn(1, 4, 3, 12))


def test_gradients_reach_latents_and_valid_inputs_only():
    model = _model().train()
    x = torch.randn(2, 6, 12, requires_grad=True)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 3:] = False
    model(x, mask).square().sum().backward()
    assert model.latents.grad is not None and model.latents.grad.abs().sum() > 0
    assert x.grad[mask].abs().sum() > 0
    assert torch.all(x.grad[~mask] == 0)
    assert all(p.grad is not None for p in model.parameters())


def test_fully_masked_sample_stays_finite():
    model = _model()
    out = model(torch.randn(2, 4, 12), torch.tensor([[False] * 4, [True] * 4]))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dim": -3}, "dim must be >= 1, got -3"),
        ({"dim": 0}, "dim must be >= 1, got 0"),
        ({"heads": -1}, "heads must be >= 1, got -1"),
        ({"depth": 0}, "depth must be >= 1, got 0"),
        ({"input_dim": 0}, "input_dim must be >= 1, got 0"),
        ({"max_num_media": 0}, "max_num_media must be >= 1, got 0"),
        ({"dropout": 1.5}, "dropout must be in [0, 1), got 1.5"),
        ({"num_latents": 2.5}, "num_latents must be an integer, got 2.5"),
    ],
)
def test_bad_config_is_refused_at_construction_naming_the_key(changes, message):
    with pytest.raises(ResamplerError) as error:
        PerceiverResamplerConfig(**{**CONFIG.__dict__, **changes})
    assert str(error.value) == message


def test_defaults_and_missing_values_are_accepted():
    assert PerceiverResamplerConfig().build()(torch.randn(1, 3, 512)).shape == (1, 64, 512)
    PerceiverResamplerConfig(dim="???", input_dim="???", dropout="???")  # omegaconf.MISSING: later


def test_bad_inputs_raise():
    model = _model()
    with pytest.raises(ResamplerError, match="input_dim"):
        model(torch.randn(2, 4, 16))
    with pytest.raises(ResamplerError, match="mask"):
        model(torch.randn(2, 4, 12), torch.ones(2, 3, dtype=torch.bool))
