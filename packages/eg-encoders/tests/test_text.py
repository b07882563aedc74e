"""Text encoder: a tiny sentence-transformers directory loaded back, equivalence with encode(), gradients."""

from __future__ import annotations

import pytest
import torch
from eg_encoders import EncoderError, TextEncoder, TextEncoderConfig

TEXTS = ["a photo of a red square", "hello", ""]


def test_sentence_transformers_dir_roundtrip_matches_encode(sbert_files):
    from sentence_transformers import SentenceTransformer

    enc = TextEncoder(TextEncoderConfig(**sbert_files)).eval()
    out = enc(TEXTS)
    assert enc.output_dim == 64
    assert out.tokens.shape[0] == 3 and out.tokens.shape[2] == 64 and out.pooled.shape == (3, 64)
    # [CLS] a photo of a red square [SEP] = 8 tokens; [CLS] hello [SEP] = 3; [CLS] [SEP] = 2
    assert out.mask.sum(dim=1).tolist() == [8, 3, 2]
    masked_mean = (out.tokens * out.mask.unsqueeze(-1)).sum(1) / out.mask.sum(1, keepdim=True)
    assert torch.allclose(out.pooled, masked_mean, atol=1e-5)  # the saved model's mean Pooling module
    expected = SentenceTransformer(sbert_files["model_name"], device="cpu").encode(
        TEXTS, convert_to_tensor=True
    )
    assert torch.allclose(out.pooled, expected, atol=1e-5)
    assert torch.equal(enc(TEXTS).pooled, out.pooled)


def test_trainable_gets_gradients_frozen_does_not(sbert_files):
    trainable = TextEncoder(TextEncoderConfig(**sbert_files, trainable=True, grad_checkpointing=True)).train()
    pooled = trainable(TEXTS).pooled
    (pooled * torch.randn(pooled.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    params = dict(trainable.model.named_parameters())
    assert all(p.grad is not None for p in params.values())  # every weight is used (no BERT pooler left)
    frozen = TextEncoder(TextEncoderConfig(**sbert_files)).train()
    assert not frozen.model.training
    assert not frozen(TEXTS).pooled.requires_grad


def test_bad_text_inputs_and_names(sbert_files):
    enc = TextEncoder(TextEncoderConfig(**sbert_files, max_seq_length=4))
    assert enc(["one two three four five six"]).mask.shape[1] == 4
    with pytest.raises(EncoderError, match="list of strings"):
        enc("a single string")
    with pytest.raises(EncoderError, match="not an existing directory"):
        TextEncoder(TextEncoderConfig(model_name="/no/such/model"))
    with pytest.raises(EncoderError, match="could not be loaded"):
        TextEncoder(TextEncoderConfig(model_name="no-such-org/no-such-model-eg"))


def test_debug_vocabulary_covers_its_texts(sbert_files):
    """Words of the texts the debug model was built from tokenize to themselves, never to [UNK]."""
    encoder = TextEncoder(TextEncoderConfig(model_name=sbert_files["model_name"]))
    tokenizer = encoder.model.tokenizer
    ids = encoder.tokenize(["a red square", "the sound of a dog barking"])["input_ids"]
    tokens = [tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids]
    assert tokens[0][:4] == ["[CLS]", "a", "red", "square"]
    assert "[UNK]" not in tokens[1]
    unseen = tokenizer.tokenize("zebra")
    assert unseen and "[UNK]" not in unseen  # an unseen word falls back to its characters
