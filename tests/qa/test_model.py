"""The QA model on stand-in towers (no stage-1 checkpoint): answer-only supervision end to end for each small
decoder kind, modality dropout rates, the prefix mask as removal, blind generation, frozen towers."""

from __future__ import annotations

import pytest
import torch
from eg_decoders import IGNORE_INDEX, TinyDecoderConfig, TRMConfig
from torch import nn

from apps.qa.config import DecoderChoice, ModalityDropoutConfig, QAModelConfig
from apps.qa.model import QAModel

QUESTIONS = ["which digit is this?", "is the digit odd or even?", "what is the digit plus one?"]
ANSWERS = ["7", "odd", "10"]
SMALL = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "max_seq_len": 128}
TRM_SMALL = {**SMALL, "n_latent_steps": 2, "n_cycles": 2, "num_supervision_steps": 2}


class StandInTower(nn.Module):
    """A tower with ModalityTower's interface: `tokens(batch)`, `token_dim`, `resampler`, `encoder`."""

    def __init__(self, key: str, num_tokens: int, dim: int, resampler: bool = False) -> None:
        super().__init__()
        self.key, self.num_tokens, self.token_dim = key, num_tokens, dim
        self.encoder = nn.Linear(8, num_tokens * dim)
        self.resampler = nn.Linear(dim, dim) if resampler else None

    def tokens(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch[self.key]  # (B, 8)
        tokens = self.encoder(x).view(x.shape[0], self.num_tokens, self.token_dim)
        if self.resampler is not None:
            tokens = self.resampler(tokens)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool)
        if "image_valid" in batch and self.key == "image":  # a tower whose tokens carry padding
            mask = batch["image_valid"]
        return tokens, mask


def towers(resampler: bool = False) -> nn.ModuleDict:
    torch.manual_seed(0)
    return nn.ModuleDict(
        {"vision": StandInTower("image", 3, 12), "audio": StandInTower("audio", 2, 10, resampler)}
    )


def build(kind: str, dropout: ModalityDropoutConfig | None = None, **model_kwargs) -> QAModel:
    variant = TRMConfig(**TRM_SMALL) if kind == "trm" else TinyDecoderConfig(**SMALL)
    choice = DecoderChoice(type=kind, **{kind: variant})
    cfg = QAModelConfig(decoder=choice, modality_dropout=dropout or ModalityDropoutConfig(), **model_kwargs)
    torch.manual_seed(1)
    return QAModel(cfg, towers(model_kwargs.get("train_resampler", False)), variant.build())


def rows_of(b: dict, index: slice) -> dict:
    return {k: (v[index] if isinstance(v, (list, torch.Tensor)) else v) for k, v in b.items()}


def batch(size: int = 3, answers: list[str] | None = None, questions: list[str] | None = None) -> dict:
    gen = torch.Generator().manual_seed(2)
    return {
        "image": torch.randn(size, 8, generator=gen),
        "audio": torch.randn(size, 8, generator=gen),
        "image_present": torch.ones(size, dtype=torch.bool),
        "audio_present": torch.ones(size, dtype=torch.bool),
        "qa_present": torch.ones(size, dtype=torch.bool),
        "question": list(questions or QUESTIONS)[:size],
        "answer": list(answers or ANSWERS)[:size],
        "key": [f"s{i}" for i in range(size)],
    }


def recorded_losses(monkeypatch: pytest.MonkeyPatch, kind: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Patch the decoder module's answer_loss to record every (logits, labels) it scores."""
    from eg_decoders import labels

    module = {"trm": "eg_decoders.trm", "tiny": "eg_decoders.tiny"}[kind]
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def recording(logits: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        logits.retain_grad()
        seen.append((logits, lab))
        return labels.answer_loss(logits, lab)

    monkeypatch.setattr(f"{module}.answer_loss", recording)
    return seen


@pytest.mark.parametrize("kind", ["trm", "tiny"])
def test_only_answer_tokens_are_supervised(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    model = build(kind)
    model.eval()  # no dropout: every modality in the prefix
    seen = recorded_losses(monkeypatch, kind)
    out = model(batch())
    out["loss"].backward()
    assert seen, "the decoder scored nothing"
    tok = model.decoder.tokenizer
    for logits, labels in seen:
        assert logits.shape[1] == labels.shape[1]  # text positions only: the prefix is never a target
        for row, (question, answer) in enumerate(zip(QUESTIONS, ANSWERS)):
            prompt, target = tok.prompt_ids(question), tok.answer_ids(answer)
            n_p, n = len(prompt), len(prompt) + len(target)
            assert (labels[row, :n_p] == IGNORE_INDEX).all()  # question: no label
            assert labels[row, n_p:n].tolist() == target  # answer and its eos
            assert (labels[row, n:] == IGNORE_INDEX).all()  # padding: no label
            grad = logits.grad[row].abs().sum(-1)  # (T,): d loss / d logits at each text position
            predicts_answer = torch.zeros_like(grad, dtype=torch.bool)
            predicts_answer[n_p - 1 : n - 1] = True  # position t predicts token t + 1
            assert (grad[~predicts_answer] == 0).all()
            assert (grad[predicts_answer] > 0).all()


@pytest.mark.parametrize("kind", ["trm", "tiny"])
def test_padding_cannot_move_the_loss_an_answer_token_does(kind: str) -> None:
    """Every loss term is a mean over answer tokens: a row's share is the same alone as padded in a batch."""
    model = build(kind)
    model.eval()
    answers = ["seven and more", "odd", "10"]  # row 0 pads rows 1 and 2 by 10 positions
    full_batch = batch(answers=answers)
    with torch.no_grad():
        full = model(full_batch)
        alone = [model(rows_of(full_batch, slice(i, i + 1))) for i in range(3)]
        changed = model(batch(answers=["seven and more", "odd", "11"]))
    weights = [len(model.decoder.answer_ids(a)) for a in answers]
    assert set(full) >= {"loss", "answer_ce"}
    for name, value in full.items():
        expected = sum(w * out[name] for w, out in zip(weights, alone)) / sum(weights)
        assert value.item() == pytest.approx(expected.item(), rel=1e-4), name
    assert abs(changed["loss"].item() - full["loss"].item()) > 1e-4


@pytest.mark.parametrize("kind", ["trm", "tiny"])
def test_masked_prefix_equals_removed_prefix(kind: str) -> None:
    """Training drops a modality through the prefix mask; generation leaves its tokens out: the same thing."""
    model = build(kind)
    model.eval()
    b = batch()
    dec = model.decoder
    with torch.no_grad():
        tokens = model.modality_tokens(b, model.modalities)
        keep = torch.tensor([[False] * 3, [True] * 3])  # vision dropped for every row
        prefix, mask = model.prefix(tokens, keep)
        text = dec.encode_qa(b["question"], b["answer"])
        masked = dec(prefix, prefix_mask=mask, **text).logits
        removed = dec(tokens["audio"][0], **text).logits
    assert torch.allclose(masked, removed, atol=1e-5)


def test_modality_dropout_rates() -> None:
    model = build("tiny", ModalityDropoutConfig(vision=0.3, audio=0.3))
    present = torch.ones(2, 40000, dtype=torch.bool)
    torch.manual_seed(3)
    keep = model.drop_modalities(present)
    both = (keep[0] & keep[1]).float().mean().item()
    vision_only = (keep[0] & ~keep[1]).float().mean().item()
    audio_only = (~keep[0] & keep[1]).float().mean().item()
    assert not (~keep[0] & ~keep[1]).any()  # never both lost (allow_none is false)
    assert both == pytest.approx(0.49, abs=0.01)
    assert vision_only == pytest.approx(0.255, abs=0.01) and audio_only == pytest.approx(0.255, abs=0.01)


def test_dropout_keeps_an_absent_modality_absent_and_can_drop_all_when_allowed() -> None:
    model = build("tiny", ModalityDropoutConfig(vision=1.0, audio=1.0))
    present = torch.tensor([[True, False, True], [True, True, False]])
    keep = model.drop_modalities(present)
    assert (keep.sum(0) == 1).all() and not (keep & ~present).any()  # one restored, and only a present one
    allow = build("tiny", ModalityDropoutConfig(vision=1.0, audio=1.0, allow_none=True))
    assert not allow.drop_modalities(present).any()


def test_training_forward_draws_dropout_and_eval_does_not() -> None:
    model = build("tiny", ModalityDropoutConfig(vision=0.5, audio=0.5))
    b = batch()
    model.eval()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    with torch.no_grad():
        first, second = model(b)["loss"], model(b)["loss"]
    assert torch.equal(first, second) and torch.equal(state, torch.get_rng_state())
    model.train()
    torch.manual_seed(0)
    a = model(b)["loss"].detach()
    torch.manual_seed(0)
    assert torch.equal(a, model(b)["loss"].detach())  # the global RNG decides: resumable


@pytest.mark.parametrize("kind", ["trm", "tiny"])
def test_generate_with_every_prefix(kind: str) -> None:
    model = build(kind)
    b = batch()
    model.train()
    for mods in (["vision", "audio"], ["vision"], ["audio"], []):
        answers = model.generate(b, mods, max_new_tokens=4)
        assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert model.training  # generate restores the mode it found


@pytest.mark.parametrize("kind", ["trm", "tiny"])
def test_generation_leaves_padded_tokens_out(kind: str) -> None:
    model = build(kind)
    b = batch()
    b["image_valid"] = torch.tensor([[True, True, False], [True, True, True], [True, False, False]])
    got = model.generate(b, ["vision"], max_new_tokens=8)
    tokens, mask = model.modality_tokens(b, ["vision"])["vision"]
    with_padding = []
    for row in range(3):
        prompts = model.decoder.encode_prompts([b["question"][row]])
        for prefix, out in ((tokens[row][mask[row]], got[row]), (tokens[row], None)):
            ids = model.decoder.generate(prefix[None], prompts["input_ids"], prompts["attention_mask"], 8)
            text = model.decoder.batch_decode(ids)[0]
            if out is None:
                with_padding.append(text)
            else:
                assert text == out
    assert with_padding != got  # the padded tokens would have changed an answer: the check has teeth


def test_towers_frozen_unless_the_resampler_switch() -> None:
    frozen = build("tiny")
    assert not any(p.requires_grad for p in frozen.towers.parameters())
    assert all(p.requires_grad for p in frozen.decoder.parameters())
    assert all(p.requires_grad for p in frozen.projectors.parameters())
    unfrozen = build("tiny", train_resampler=True)
    resampler = unfrozen.towers["audio"].resampler
    assert all(p.requires_grad for p in resampler.parameters())
    assert not any(p.requires_grad for p in unfrozen.towers["audio"].encoder.parameters())
    unfrozen.train()
    assert resampler.training and not unfrozen.towers["audio"].encoder.training
    unfrozen(batch())["loss"].backward()
    grads = {n for n, p in unfrozen.named_parameters() if p.grad is not None}
    assert any(n.startswith("towers.audio.resampler") for n in grads)
    assert not any(n.startswith("towers.vision") or ".encoder." in n for n in grads)


def test_cached_tokens_are_each_sample_alone_and_only_in_training() -> None:
    model = build("tiny", cache_tokens=True)
    calls = []
    tower = model.towers["audio"]
    original = tower.tokens

    def counting(b: dict) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(len(b["key"]))
        return original(b)

    tower.tokens = counting  # type: ignore[method-assign]
    b = batch()
    model.train()
    first = model.modality_tokens(b, ["audio"])["audio"]
    assert calls == [1, 1, 1]  # each sample alone, once
    again = model.modality_tokens(b, ["audio"])["audio"]
    assert calls == [1, 1, 1] and torch.equal(first[0], again[0])
    for i in range(3):  # the cached values are the sample's own tokens
        alone, _ = original(rows_of(b, slice(i, i + 1)))
        assert torch.equal(model._token_cache["audio"][b["key"][i]], alone[0])
    model.eval()
    model.modality_tokens(b, ["audio"])
    assert calls == [1, 1, 1, 3]  # evaluation runs the tower on the batch


def test_scores_against_hand_computed_values() -> None:
    from apps.qa.evaluate import majority_answers, normalize_answer, score_rows, token_f1

    assert normalize_answer("The  Cat, sat!") == "cat sat" and normalize_answer("an Apple.") == "apple"
    assert token_f1("a red cat", "the red dog") == pytest.approx(0.5)  # 1 common of 2 and 2 tokens
    rows = [
        {"question": "q1", "reference": "Seven.", "generated": {"m": "seven"}},
        {"question": "q1", "reference": "odd", "generated": {"m": "even"}},
        {"question": "q2", "reference": "the red cat", "generated": {"m": "red dog"}},
        {"question": "q3", "reference": "yes", "generated": {"m": "yes"}},
    ]
    scores = score_rows(rows, ["m"], max_questions=2)
    assert scores["question_counts"] == {"q1": 2, "q2": 1, "(other)": 1}
    assert scores["exact_match"]["m"]["overall"] == pytest.approx(2 / 4)
    assert scores["exact_match"]["m"]["per_question"] == {"q1": 0.5, "q2": 0.0, "(other)": 1.0}
    assert scores["token_f1"]["m"]["overall"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    majority = majority_answers([("q1", "b"), ("q1", "a"), ("q1", "b"), ("q2", "x"), ("q2", "w")])
    assert majority == {"q1": "b", "q2": "w", "": "b"}  # ties: alphabetically first
