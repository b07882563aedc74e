"""The tiny decoders (TRM and the baseline) behind the shared interface: causality, masking, generation,
save/load, and a real learning check (overfitting prefix-dependent QA pairs to exact match)."""

import pytest
import torch
import torch.nn.functional as F
from eg_decoders import (
    DecoderError,
    TinyDecoder,
    TinyDecoderConfig,
    TRMConfig,
    TRMDecoder,
    load_decoder,
)

QUESTIONS = ["what color?"] * 4  # one question: only the prefix tells the answers apart
ANSWERS = ["red", "blue", "green", "cyan"]


def tiny_config(kind):
    if kind == "tiny":
        return TinyDecoderConfig(hidden_size=64, num_heads=4, prefix_dim=16, max_seq_len=48)
    return TRMConfig(
        hidden_size=64,
        num_heads=4,
        prefix_dim=16,
        max_seq_len=48,
        n_latent_steps=2,
        n_cycles=2,
        num_supervision_steps=2,
    )


def make(kind, seed=0):
    torch.manual_seed(seed)
    return tiny_config(kind).build().eval()


@pytest.fixture(scope="module", params=["tiny", "trm"])
def trained(request, one_thread):
    """A decoder overfit on four (prefix, question) -> answer pairs, with its prefixes."""
    model = make(request.param)
    model.train()
    prefixes = torch.randn(4, 2, 16, generator=torch.Generator().manual_seed(1))
    batch = model.encode_qa(QUESTIONS, ANSWERS)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = model(prefixes, **batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), prefixes


def generate_text(model, prefixes, questions, **kwargs):
    prompts = model.encode_prompts(questions)
    return model.batch_decode(
        model.generate(prefixes, prompts["input_ids"], prompts["attention_mask"], **kwargs)
    )


def test_overfits_to_exact_match_and_uses_the_prefix(trained):
    model, prefixes = trained
    assert generate_text(model, prefixes, QUESTIONS, max_new_tokens=10) == ANSWERS
    # same question, prefixes permuted: the answers follow the prefixes
    order = [2, 0, 3, 1]
    assert generate_text(model, prefixes[order], QUESTIONS, max_new_tokens=10) == [ANSWERS[i] for i in order]


def test_greedy_stops_at_eos_and_is_deterministic(trained):
    model, prefixes = trained
    prompts = model.encode_prompts(QUESTIONS)
    first = model.generate(prefixes, prompts["input_ids"], prompts["attention_mask"], max_new_tokens=20)
    second = model.generate(prefixes, prompts["input_ids"], prompts["attention_mask"], max_new_tokens=20)
    assert torch.equal(first, second)
    # longest answer "green" + eos = 6 tokens: every row stopped, the loop ended long before 20
    assert first.shape[1] == 6
    assert first[1].tolist() == list(b"blue") + [model.eos_id, model.pad_id]


def test_batched_left_padding_matches_single_rows(trained):
    model, prefixes = trained
    questions = ["what color?", "x", "what color? really", "y"]
    batched = generate_text(model, prefixes, questions, max_new_tokens=8)
    single = [
        generate_text(model, prefixes[i : i + 1], [q], max_new_tokens=8)[0] for i, q in enumerate(questions)
    ]
    assert batched == single


def test_sampling_respects_generator_seed(trained):
    model, prefixes = trained
    run = lambda seed: generate_text(
        model,
        prefixes,
        QUESTIONS,
        max_new_tokens=6,
        do_sample=True,
        temperature=5.0,
        generator=torch.Generator().manual_seed(seed),
    )
    assert run(3) == run(3)
    assert run(3) != run(4)


@pytest.mark.parametrize("kind", ["tiny", "trm"])
def test_output_at_t_ignores_later_tokens(kind):
    model = make(kind)
    prefix = torch.randn(1, 3, 16)
    ids = torch.randint(0, 256, (1, 12))
    mask = torch.ones_like(ids)
    changed = ids.clone()
    changed[0, 6:] = torch.randint(0, 256, (6,))
    a, b = model(prefix, ids, mask).logits, model(prefix, changed, mask).logits
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-5)
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-3)


@pytest.mark.parametrize("kind", ["tiny", "trm"])
def test_loss_is_answer_tokens_only(kind):
    model = make(kind)
    prefix = torch.randn(2, 2, 16)
    batch = model.encode_qa(["a question", "q"], ["yes", "no"])
    out = model(prefix, **batch)
    # hand computation from the returned logits over answer positions only
    logits, labels = out.logits, batch["labels"]
    keep = labels[:, 1:] != -100
    manual = F.cross_entropy(logits[:, :-1][keep], labels[:, 1:][keep])
    last_step = out.step_losses[-1] if kind == "tiny" else out.parts["answer_ce"]
    assert last_step.item() == pytest.approx(manual.item(), rel=1e-5)
    # padding: other pad ids behind attention_mask 0 change neither the logits of real tokens nor the loss
    noisy = dict(batch, input_ids=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 65))
    out2 = model(prefix, **noisy)
    assert out2.loss.item() == pytest.approx(out.loss.item(), rel=1e-6)
    # question tokens are never targets: labelling them as targets would change the loss
    labelled = dict(batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100))
    assert model(prefix, **labelled).loss.item() != pytest.approx(out.loss.item(), rel=1e-3)


@pytest.mark.parametrize("kind", ["tiny", "trm"])
def test_all_masked_batch_raises(kind):
    model = make(kind)
    batch = model.encode_qa(["q"], ["a"])
    batch["labels"].fill_(-100)
    with pytest.raises(DecoderError, match="no answer tokens"):
        model(torch.randn(1, 2, 16), **batch)


@pytest.mark.parametrize("kind", ["tiny", "trm"])
def test_save_load_reproduces_outputs(kind, tmp_path):
    model = make(kind)
    prefix = torch.randn(2, 2, 16)
    batch = model.encode_qa(["q1", "q2"], ["a", "b"])
    model.save(str(tmp_path))
    loaded = load_decoder(str(tmp_path)).eval()
    assert type(loaded) is type(model)
    assert torch.equal(model(prefix, **batch).logits, loaded(prefix, **batch).logits)


def test_default_sizes_fit_the_budget():
    trm, tiny = TRMConfig().build(), TinyDecoderConfig().build()
    assert isinstance(trm, TRMDecoder) and isinstance(tiny, TinyDecoder)
    assert trm.num_parameters() <= 10_000_000
    assert abs(trm.num_parameters() - tiny.num_parameters()) / trm.num_parameters() < 0.1
    assert trm.hidden_size == 256


def test_user_errors_are_decoder_errors():
    model = make("tiny")
    with pytest.raises(DecoderError, match="max_seq_len"):
        model(None, torch.zeros(1, 60, dtype=torch.long), torch.ones(1, 60, dtype=torch.long))
    with pytest.raises(DecoderError, match="prefix_dim"):
        model(torch.randn(1, 2, 7), torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(DecoderError, match="^prefix_embeds width 7 != the projector's prefix_dim 16"):
        model(torch.randn(1, 2, 7), torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))
