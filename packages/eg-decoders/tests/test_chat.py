"""Conversations as decoder input: labels on exactly the assistant turns (read back against the text) in the
plain role format and through a chat template; the prefix spliced in at the media turn; a prefix mask that
lets rows of different prefix lengths and places batch together, in forward and in generation."""

import os

import pytest
import torch
from eg_decoders import IGNORE_INDEX, DecoderError, TinyDecoderConfig, TRMConfig

os.environ["HF_HUB_OFFLINE"] = "1"

SMALL = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "max_seq_len": 256, "prefix_dim": 8}
KINDS = {
    "trm": lambda: TRMConfig(**SMALL, n_latent_steps=2, n_cycles=2, num_supervision_steps=2),
    "tiny": lambda: TinyDecoderConfig(**SMALL),
}
CHAT = [
    {"role": "user", "content": "my number is 4. which digit is this?"},
    {"role": "assistant", "content": "7"},
    {"role": "user", "content": "what is my number plus the digit?"},
    {"role": "assistant", "content": "11"},
]
OTHER = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]


def build(kind: str):
    torch.manual_seed(0)
    return KINDS[kind]().build().eval()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_plain_format_labels_cover_exactly_the_assistant_turns(kind: str) -> None:
    decoder = build(kind)
    batch = decoder.encode_chats([CHAT, OTHER], [2, 0])
    tok = decoder.tokenizer
    for row, (messages, media_turn) in enumerate([(CHAT, 2), (OTHER, 0)]):
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        labels = batch["labels"][row][: len(ids)]
        assert ids[0] == tok.bos_id
        text = "".join(
            f"user: {m['content']}\n" if m["role"] == "user" else f"assistant: {m['content']}\x00"
            for m in messages
        )
        shown = bytes(255 if i == tok.bos_id else 0 if i == tok.eos_id else i for i in ids[1:]).decode()
        assert shown == text  # the plain role format, eos where \x00 stands
        supervised = [i for i, label in zip(ids, labels.tolist()) if label != IGNORE_INDEX]
        assert torch.equal(labels[labels != IGNORE_INDEX], torch.tensor(supervised))
        answers = [list(m["content"].encode()) + [tok.eos_id] for m in messages if m["role"] == "assistant"]
        assert supervised == [i for answer in answers for i in answer]
        before = "".join(f"user: {m['content']}\n" if m["role"] == "user" else f"assistant: {m['content']}\x00"
                         for m in messages[:media_turn]) + "user: "  # fmt: skip
        assert int(batch["prefix_at"][row]) == 1 + len(before.encode())
    prompts = decoder.encode_chat_prompts([CHAT[:3], OTHER[:1]], [0, 0])
    first = prompts["input_ids"][0].tolist()
    assert bytes(first[-len("assistant: ") :]).decode() == "assistant: "
    pad = int((prompts["attention_mask"][1] == 0).sum())
    assert int(prompts["prefix_at"][1]) == pad + 1 + len(b"user: ")


def test_bad_message_lists_are_decoder_errors() -> None:
    decoder = build("tiny")
    with pytest.raises(DecoderError, match="message 1 has role 'user' where 'assistant' was due"):
        decoder.encode_chats([[CHAT[0], CHAT[2]]], [0])
    with pytest.raises(DecoderError, match="last message must be from user"):
        decoder.encode_chat_prompts([CHAT], [0])
    with pytest.raises(DecoderError, match="media_turn 1 is not the index of a user message"):
        decoder.encode_chats([CHAT], [1])


def test_a_conversation_cut_before_any_answer_is_refused_as_today() -> None:
    decoder = TinyDecoderConfig(**{**SMALL, "max_seq_len": 20}).build()
    batch = decoder.encode_chats([CHAT], [0])  # 20 bytes: no assistant token left
    assert bool((batch["labels"] == IGNORE_INDEX).all())
    with pytest.raises(DecoderError, match="no answer tokens"):
        decoder(None, **batch)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_prefix_spliced_in_is_seen_only_from_its_place_on(kind: str) -> None:
    decoder = build(kind)
    batch = decoder.encode_chats([CHAT], [2])
    text = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    at = int(batch["prefix_at"][0])
    prefix = torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        none = decoder(None, **text).logits
        spliced = decoder(prefix, prefix_at=batch["prefix_at"], **text).logits
        first = decoder(prefix, **text).logits
        zero = decoder(prefix, prefix_at=torch.zeros(1, dtype=torch.long), **text).logits
        masked = decoder(
            prefix, prefix_mask=torch.zeros(1, 3, dtype=torch.bool), prefix_at=batch["prefix_at"], **text
        )
    assert torch.equal(first, zero)  # at 0 is the QA layout, [prefix | text], to the bit
    assert torch.allclose(masked.logits, none, atol=1e-5)  # a masked prefix is a removed one
    assert torch.allclose(spliced[:, :at], none[:, :at], atol=1e-5)  # causal: before it, unseen
    assert not torch.allclose(spliced[:, at:], none[:, at:], atol=1e-3)
    assert not torch.allclose(spliced, first, atol=1e-3)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_rows_of_different_prefix_lengths_and_places_batch_together(kind: str) -> None:
    """Forward and generation of a batch with a masked prefix tail equal each row alone with its own
    prefix; the KV cache gives the tokens a full recompute gives."""
    decoder = build(kind)
    gen = torch.Generator().manual_seed(2)
    prefixes = [torch.randn(1, 3, 8, generator=gen), torch.randn(1, 1, 8, generator=gen)]
    chats, turns = [CHAT, OTHER], [2, 0]
    batch = decoder.encode_chats(chats, turns)
    padded = torch.zeros(2, 3, 8)
    padded[0], padded[1, :1] = prefixes[0][0], prefixes[1][0]
    mask = torch.tensor([[True, True, True], [True, False, False]])
    with torch.no_grad():
        together = decoder(padded, prefix_mask=mask, **batch).logits
        for row in range(2):
            alone = decoder.encode_chats([chats[row]], [turns[row]])
            logits = decoder(prefixes[row], **alone).logits[0]
            n = int(alone["attention_mask"].sum())
            assert torch.allclose(together[row, :n], logits[:n], atol=1e-5)
    prompts = decoder.encode_chat_prompts([CHAT[:3], OTHER[:1]], turns)
    args = (padded, prompts["input_ids"], prompts["attention_mask"])
    kwargs = {"prefix_mask": mask, "prefix_at": prompts["prefix_at"], "max_new_tokens": 6}
    cached = decoder.generate(*args, **kwargs)
    assert torch.equal(cached, decoder.generate(*args, use_cache=False, **kwargs))
    for row, messages in enumerate([CHAT[:3], OTHER[:1]]):
        alone = decoder.encode_chat_prompts([messages], [turns[row]])
        ids = decoder.generate(
            prefixes[row],
            alone["input_ids"],
            alone["attention_mask"],
            prefix_at=alone["prefix_at"],
            max_new_tokens=6,
        )
        assert torch.equal(ids[0], cached[row, : ids.shape[1]])


# ---- a chat template (Qwen) ------------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """A tiny random-init Qwen2 with a byte-level BPE tokenizer and a ChatML template, loaded as a hub id."""
    for module in ("transformers", "peft", "tokenizers"):
        pytest.importorskip(
            module, reason="the Qwen decoder needs the extra: pip install 'eg-decoders[qwen]'"
        )
    from eg_decoders import QwenDecoderConfig
    from eg_decoders.debug import write_qwen2

    path = str(tmp_path_factory.mktemp("chat-qwen"))
    texts = [m["content"] for m in CHAT + OTHER]
    written = write_qwen2(
        path,
        texts,
        vocab_size=320,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        num_kv_heads=1,
        init_std=0.2,
    )
    settings = {"dtype": "float32", "lora_r": 2, "lora_alpha": 4, "lora_dropout": 0.0, "prefix_dim": 8}
    return QwenDecoderConfig(**written, **settings, system_prompt="be brief").build().eval()


def test_the_chat_template_labels_cover_exactly_the_assistant_turns(qwen) -> None:
    batch = qwen.encode_chats([CHAT, OTHER], [2, 0])
    tok = qwen.tokenizer
    for row, (messages, media_turn) in enumerate([(CHAT, 2), (OTHER, 0)]):
        n = int(batch["attention_mask"][row].sum())
        ids, labels = batch["input_ids"][row, :n], batch["labels"][row, :n]
        full = [{"role": "system", "content": "be brief"}, *messages]
        assert tok.decode(ids) == tok.apply_chat_template(full, tokenize=False)
        supervised = labels[labels != IGNORE_INDEX]
        assert torch.equal(supervised, ids[labels != IGNORE_INDEX])
        expected = "".join(m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant")
        assert tok.decode(supervised) == expected
        at = int(batch["prefix_at"][row])
        assert tok.decode(ids[:at]).endswith("<|im_start|>user\n")
        assert tok.decode(ids[at:]).startswith(messages[media_turn]["content"])
    prompt = qwen.encode_chat_prompts([CHAT[:3]], [0])
    assert tok.decode(prompt["input_ids"][0]).endswith(
        "what is my number plus the digit?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_qwen_batches_rows_of_different_prefix_lengths_in_generation(qwen) -> None:
    gen = torch.Generator().manual_seed(2)
    prefixes = [torch.randn(1, 3, 8, generator=gen), torch.randn(1, 1, 8, generator=gen)]
    padded = torch.zeros(2, 3, 8)
    padded[0], padded[1, :1] = prefixes[0][0], prefixes[1][0]
    mask = torch.tensor([[True, True, True], [True, False, False]])
    chats, turns = [CHAT[:3], OTHER[:1]], [2, 0]
    prompts = qwen.encode_chat_prompts(chats, turns)
    together = qwen.generate(
        padded,
        prompts["input_ids"],
        prompts["attention_mask"],
        5,
        prefix_mask=mask,
        prefix_at=prompts["prefix_at"],
    )
    for row in range(2):
        alone = qwen.encode_chat_prompts([chats[row]], [turns[row]])
        ids = qwen.generate(
            prefixes[row], alone["input_ids"], alone["attention_mask"], 5, prefix_at=alone["prefix_at"]
        )
        assert torch.equal(ids[0], together[row, : ids.shape[1]])
        with torch.no_grad():
            first = qwen(
                prefixes[row], alone["input_ids"], alone["attention_mask"], prefix_at=alone["prefix_at"]
            )
        assert int(first.logits[0, -1].argmax()) == int(ids[0, 0])  # generate's positions are forward's
