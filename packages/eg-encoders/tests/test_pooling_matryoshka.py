"""Pooling against hand computations, attention queries that drive the output, the Matryoshka head."""

from __future__ import annotations

import pytest
import torch
from eg_encoders import (
    AttentionPooling,
    EncoderError,
    MatryoshkaConfig,
    MatryoshkaProjection,
    PoolingConfig,
)

TOKENS = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]], [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]])
MASK = torch.tensor([[True, True, False], [True, True, True]])


def test_mean_pooling_ignores_padding():
    pooled = PoolingConfig(type="mean").build(2)(TOKENS, MASK)
    assert torch.allclose(pooled, torch.tensor([[2.0, 3.0], [2.0, 3.0]]))


def test_cls_pooling_takes_first_token():
    pooled = PoolingConfig(type="cls").build(2)(TOKENS, MASK)
    assert torch.equal(pooled, torch.tensor([[1.0, 2.0], [0.0, 1.0]]))


def test_attention_pooling_queries_drive_output_and_get_gradients():
    torch.manual_seed(0)
    pool = PoolingConfig(type="attention", num_queries=3, num_heads=2).build(8)
    assert isinstance(pool, AttentionPooling)
    tokens, mask = torch.randn(2, 5, 8), torch.tensor([[True] * 5, [True, True, True, False, False]])
    out = pool(tokens, mask)
    assert out.shape == (2, 8)
    out.pow(2).sum().backward()
    assert pool.queries.grad is not None and pool.queries.grad.abs().sum() > 0
    assert pool.queries.grad[1].abs().sum() > 0  # every query, not only the first, is used
    with torch.no_grad():
        before = pool(tokens, mask)
        pool.queries[2].add_(1.0)
        assert not torch.allclose(before, pool(tokens, mask))
        assert pool.forward_queries(tokens, mask).shape == (2, 3, 8)


def test_attention_pooling_ignores_padding_content():
    torch.manual_seed(0)
    pool = PoolingConfig(type="attention", num_queries=2, num_heads=2).build(8).eval()
    tokens, mask = torch.randn(1, 6, 8), torch.tensor([[True, True, True, True, False, False]])
    garbage = tokens.clone()
    garbage[:, 4:] = 1e3
    assert torch.allclose(pool(tokens, mask), pool(garbage, mask), atol=1e-6)
    assert torch.allclose(pool(tokens, mask), pool(tokens[:, :4], mask[:, :4]), atol=1e-6)


def test_pooling_none_builds_nothing():
    assert PoolingConfig(type="none").build(8) is None


def test_pooling_config_errors():
    with pytest.raises(EncoderError, match=r"^type='max' is not supported; choose one of \['cls', 'mean'"):
        PoolingConfig(type="max")
    with pytest.raises(EncoderError, match="^num_queries must be >= 1, got 0"):
        PoolingConfig(type="attention", num_queries=0)
    with pytest.raises(EncoderError, match="^num_heads=3 must divide the token width 8"):
        PoolingConfig(type="attention", num_heads=3).build(8)  # the width is known at build


def test_matryoshka_embed_truncates_then_normalizes():
    torch.manual_seed(0)
    head = MatryoshkaConfig(max_dim=16).build(in_dim=8)
    assert isinstance(head, MatryoshkaProjection) and head.max_dim == 16 and head.in_dim == 8
    x = torch.randn(3, 8)
    full = head(x)
    assert full.shape == (3, 16)
    for dim in (4, 8, 16):
        z = head.embed(x, dim)
        assert z.shape == (3, dim)
        assert torch.allclose(z.norm(dim=-1), torch.ones(3), atol=1e-6)
        assert torch.allclose(z, full[:, :dim] / full[:, :dim].norm(dim=-1, keepdim=True), atol=1e-6)
    mlp = MatryoshkaConfig(max_dim=4096, hidden_dim=32).build(8)
    assert mlp.embed(x, 4096).shape == (3, 4096)
    assert [tuple(p.shape) for p in mlp.parameters()] == [(32, 8), (32,), (4096, 32), (4096,)]


def test_matryoshka_errors():
    with pytest.raises(EncoderError, match="^max_dim must be in 1..4096, got 8192"):
        MatryoshkaConfig(max_dim=8192)
    with pytest.raises(EncoderError, match="^hidden_dim must be >= 0, got -1"):
        MatryoshkaConfig(hidden_dim=-1)
    with pytest.raises(EncoderError, match="dim 32"):
        MatryoshkaConfig(max_dim=16).build(8).embed(torch.randn(1, 8), 32)
