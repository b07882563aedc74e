"""Incremental (KV-cached) generation of the tiny decoders gives the tokens, and logits within float noise,
of recomputing the whole sequence for every token: prefixes, left-padded prompts of different lengths,
several lengths, sampling, and TRM with halting at inference (including the cache's catch-up)."""

import pytest
import torch
from eg_decoders import TinyDecoderConfig, TRMConfig, TRMDecoder
from eg_decoders import small as small_module

QUESTIONS = ["what colour is it?", "x", "and a longer question, padded least"]


def make(kind, halting="off", seed=0):
    torch.manual_seed(seed)
    if kind == "tiny":
        return TinyDecoderConfig(hidden_size=32, num_heads=2, prefix_dim=8, max_seq_len=96).build().eval()
    config = TRMConfig(
        hidden_size=32,
        num_heads=2,
        prefix_dim=8,
        max_seq_len=96,
        n_latent_steps=2,
        n_cycles=2,
        num_supervision_steps=3,
        halt_at_inference=halting != "off",
    )
    model = config.build().eval()
    if halting == "random":  # halting probabilities near 0.5, different per row and per token
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            model.halt_head.weight.copy_(0.1 * torch.randn(model.halt_head.weight.shape, generator=generator))
            model.halt_head.bias.zero_()
    return model


def generate_with_logits(model, prefix, questions, **kwargs):
    """(tokens (B, N), [next-token logits (B, V) per step]) of model.generate."""
    seen = []
    select = small_module.select_next_token

    def spy(logits, *args, **kw):
        seen.append(logits.clone())
        return select(logits, *args, **kw)

    prompts = model.encode_prompts(questions)
    small_module.select_next_token = spy
    try:
        ids = model.generate(prefix, prompts["input_ids"], prompts["attention_mask"], **kwargs)
    finally:
        small_module.select_next_token = select
    return ids, seen


@pytest.mark.parametrize("max_new_tokens", [1, 4, 23])
@pytest.mark.parametrize(("kind", "halting"), [("tiny", "off"), ("trm", "off"), ("trm", "random")])
def test_cached_greedy_generation_equals_full_recompute(kind, halting, max_new_tokens):
    model = make(kind, halting)
    prefix = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(2))  # (B, P, prefix_dim)
    cached, cached_logits = generate_with_logits(model, prefix, QUESTIONS, max_new_tokens=max_new_tokens)
    plain, plain_logits = generate_with_logits(
        model, prefix, QUESTIONS, max_new_tokens=max_new_tokens, use_cache=False
    )
    assert cached.shape == (3, max_new_tokens)  # random weights: no eos, every step runs
    assert torch.equal(cached, plain)
    assert len(cached_logits) == len(plain_logits) == max_new_tokens
    for a, b in zip(cached_logits, plain_logits):
        assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    # left padding is invisible to the cached path too: each row alone gives its batched tokens
    for i, question in enumerate(QUESTIONS):
        alone, _ = generate_with_logits(model, prefix[i : i + 1], [question], max_new_tokens=max_new_tokens)
        assert torch.equal(alone[0], cached[i])


def test_cached_sampling_draws_the_same_tokens():
    model = make("trm", "random")
    prefix = torch.randn(3, 2, 8, generator=torch.Generator().manual_seed(4))

    def sample(use_cache):
        ids, _ = generate_with_logits(
            model,
            prefix,
            QUESTIONS,
            max_new_tokens=12,
            do_sample=True,
            temperature=2.0,
            generator=torch.Generator().manual_seed(7),
            use_cache=use_cache,
        )
        return ids

    assert torch.equal(sample(True), sample(False))


def _full_logits(model, prefix, ids, mask):
    """Next-token logits from the whole sequence (prefix already projected), no cache."""
    x, attn, _ = model._embed(prefix, ids, mask, None)
    return model._last_logits(x, attn)


@pytest.mark.parametrize(("prefill_bias", "token_bias"), [(10.0, -10.0), (-10.0, 10.0)])
def test_trm_cache_catches_up_or_extends_when_halting_changes(prefill_bias, token_bias):
    """Prefill halting after 1 step then a token needing all 3 (the cached positions catch up), and the
    reverse (the token halts after 1 step, then runs the other 2 for the positions after it)."""
    model = make("trm", "on")
    prefix = model.project_prefix(torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(5)))
    prompts = model.encode_prompts(QUESTIONS[:2])
    ids, mask = prompts["input_ids"], prompts["attention_mask"]
    token = torch.tensor([[65], [66]])
    cache = model._new_cache(2, prefix.shape[1] + ids.shape[1] + 2, ids.device)
    with torch.no_grad():
        model.halt_head.bias.fill_(prefill_bias)
        model._extend(cache, prefix, ids, mask)
        assert cache.num_steps == (1 if prefill_bias > 0 else 3)
        model.halt_head.bias.fill_(token_bias)
        cached = model._extend(cache, None, token, torch.ones_like(token))
        assert cache.num_steps == 3 and cache.num_catch_ups == (2 if prefill_bias > 0 else 0)
        full = _full_logits(
            model, prefix, torch.cat([ids, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
        )
        assert torch.allclose(cached, full, atol=1e-5)
        # one more token, halting as the last one did: it sees every position at every step it needs
        nxt = torch.tensor([[67], [68]])
        cached = model._extend(cache, None, nxt, torch.ones_like(nxt))
        ids2 = torch.cat([ids, token, nxt], 1)
        full = _full_logits(model, prefix, ids2, torch.ones_like(ids2).masked_fill(ids2 == model.pad_id, 0))
        assert torch.allclose(cached, full, atol=1e-5)


def test_trm_halting_generation_exercises_catch_up(monkeypatch):
    """One row, halting near 0.5, a few seeds: some token needs more steps than the positions before it ran,
    and the tokens still match the full recompute."""
    calls = []
    catch_up = TRMDecoder._catch_up
    monkeypatch.setattr(TRMDecoder, "_catch_up", lambda self, *a: calls.append(a) or catch_up(self, *a))
    for seed in range(6):
        model = make("trm", "random", seed=seed)
        prefix = torch.randn(1, 2, 8, generator=torch.Generator().manual_seed(seed))
        cached, cached_logits = generate_with_logits(model, prefix, QUESTIONS[:1], max_new_tokens=16)
        plain, plain_logits = generate_with_logits(
            model, prefix, QUESTIONS[:1], max_new_tokens=16, use_cache=False
        )
        assert torch.equal(cached, plain)
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(cached_logits, plain_logits))
    assert calls, "no generation had to catch up; the halting setup no longer varies the step count"
