"""Answer-only labels, the masked loss, configs, projector and token selection, checked by hand."""

import math

import pytest
import torch
from eg_decoders import (
    IGNORE_INDEX,
    ByteTokenizer,
    DecoderError,
    PrefixProjector,
    TinyDecoderConfig,
    answer_loss,
    build_answer_only_batch,
    build_prompt_batch,
    decoder_config_from_dict,
    select_next_token,
)


def test_answer_only_batch_masks_prompt_and_padding():
    batch = build_answer_only_batch([[5, 6], [7]], [[8, 9], [10, 11, 12]], pad_id=0, max_length=16)
    assert batch["input_ids"].tolist() == [[5, 6, 8, 9], [7, 10, 11, 12]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[-100, -100, 8, 9], [-100, 10, 11, 12]]
    batch = build_answer_only_batch([[5, 6, 7]], [[8]], pad_id=0, max_length=16)
    short = build_answer_only_batch([[5, 6, 7], [1]], [[8], [2]], pad_id=0, max_length=16)
    assert short["input_ids"].tolist()[1] == [1, 2, 0, 0]
    assert short["labels"].tolist()[1] == [-100, 2, -100, -100]
    assert short["attention_mask"].tolist()[1] == [1, 1, 0, 0]


def test_truncation_drops_prompt_start_first():
    batch = build_answer_only_batch([[1, 2, 3, 4, 5]], [[8, 9]], pad_id=0, max_length=4)
    assert batch["input_ids"].tolist() == [[4, 5, 8, 9]]
    assert batch["labels"].tolist() == [[-100, -100, 8, 9]]


def test_prompt_batch_is_left_padded():
    batch = build_prompt_batch([[1, 2, 3], [4]], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [0, 0, 4]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(DecoderError):
        build_prompt_batch([[1], []], pad_id=0)


def test_answer_loss_matches_hand_computation():
    vocab = 4
    logits = torch.zeros(1, 3, vocab)
    logits[0, 1, 2] = math.log(3.0)  # p(token 2) = 3 / (3 + 3) = 0.5 at position 1
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 2]])
    # only position 1 -> label 2 is scored; position 0 -> label at 1 is the question (-100)
    assert answer_loss(logits, labels).item() == pytest.approx(math.log(2.0), abs=1e-6)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2]])
    assert answer_loss(logits, labels).item() == pytest.approx((math.log(4.0) + math.log(2.0)) / 2, abs=1e-6)


def test_all_masked_batch_is_an_error_not_zero():
    with pytest.raises(DecoderError, match="no answer tokens"):
        answer_loss(torch.zeros(2, 3, 5), torch.full((2, 3), IGNORE_INDEX))


def test_byte_tokenizer_roundtrip():
    tok = ByteTokenizer()
    ids = tok.answer_ids("héllo")
    assert ids[-1] == tok.eos_id and tok.decode(ids + [65, 66]) == "héllo"
    assert tok.prompt_ids("a")[0] == tok.bos_id


def test_config_from_dict_and_errors():
    cfg = decoder_config_from_dict({"type": "tiny", "hidden_size": 32})
    assert isinstance(cfg, TinyDecoderConfig) and cfg.hidden_size == 32
    with pytest.raises(DecoderError, match=r"^type 'gpt9' is unknown; use one of \['qwen', 'tiny', 'trm'\]"):
        decoder_config_from_dict({"type": "gpt9"})
    with pytest.raises(DecoderError, match=r"^keys \['hiden_size'\] are not fields of TRMConfig"):
        decoder_config_from_dict({"type": "trm", "hiden_size": 32})
    with pytest.raises(DecoderError, match="^hidden_size 30 must be divisible by num_heads 4"):
        decoder_config_from_dict({"type": "tiny", "hidden_size": 30})  # the dataclass checks itself


def test_projector_kinds_and_sizes():
    linear, mlp = PrefixProjector(8, 16, "linear"), PrefixProjector(8, 16, "mlp")
    assert sum(p.numel() for p in linear.parameters()) == 8 * 16 + 16
    assert sum(p.numel() for p in mlp.parameters()) == 8 * 16 + 16 + 16 * 16 + 16
    assert mlp(torch.randn(2, 3, 8)).shape == (2, 3, 16)
    with pytest.raises(DecoderError, match="^projector 'conv' is unknown"):
        PrefixProjector(8, 16, "conv")
    with pytest.raises(DecoderError, match="prefix_dim"):
        linear(torch.randn(2, 3, 9))


def test_select_next_token():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    assert select_next_token(logits, do_sample=False).tolist() == [1, 0]
    gen = torch.Generator().manual_seed(0)
    # top-k 1 and a tiny top-p both leave only the argmax to sample from
    assert select_next_token(logits, True, top_k=1, generator=gen).tolist() == [1, 0]
    assert select_next_token(logits, True, top_p=0.01, generator=gen).tolist() == [1, 0]
    draws = torch.stack([select_next_token(logits, True, generator=gen) for _ in range(200)])
    assert len(set(draws[:, 0].tolist())) > 1  # plain sampling does explore
