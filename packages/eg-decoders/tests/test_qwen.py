"""QwenDecoder on a tiny random-init Qwen2 and a locally trained BPE tokenizer with a chat template, saved to
disk and loaded through the same path as a hub id: LoRA, 8/4-bit on CPU, prefix use, eos, save/load."""

import os
import warnings

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

QWEN_EXTRA = "the Qwen decoder needs the extra: pip install 'eg-decoders[qwen]'"
for _module in ("transformers", "peft", "tokenizers"):
    pytest.importorskip(_module, reason=QWEN_EXTRA)

from eg_decoders import DecoderError, QwenDecoder, QwenDecoderConfig, count_trainable, load_decoder
from eg_decoders.debug import write_qwen2

HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS = 64, 128, 2, 4, 2
QUESTIONS = ["what is shown?", "what is shown?"]
ANSWERS = ["a red cat", "two dogs"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Qwen2 + byte-level BPE tokenizer (chat template, Qwen's special tokens) in HF format."""
    path = str(tmp_path_factory.mktemp("tiny-qwen"))
    fields = write_qwen2(
        path,
        ["what is shown? a red cat, two dogs"],
        vocab_size=300,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_layers=LAYERS,
        num_heads=HEADS,
        num_kv_heads=KV_HEADS,
        max_position_embeddings=256,
    )
    assert fields == {"model_name": path}
    return path


def config(model_dir, **overrides):
    values = {"model_name": model_dir, "dtype": "float32", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
    return QwenDecoderConfig(**{**values, "prefix_dim": 16, **overrides})


def lora_count(r, shapes):
    return sum(r * (fan_in + fan_out) for fan_in, fan_out in shapes) * LAYERS


HEAD_DIM = HIDDEN // HEADS
ALL_LINEAR = [  # (in, out) of q, k, v, o, gate, up, down in one layer
    (HIDDEN, HIDDEN),
    (HIDDEN, KV_HEADS * HEAD_DIM),
    (HIDDEN, KV_HEADS * HEAD_DIM),
    (HIDDEN, HIDDEN),
    (HIDDEN, INTERMEDIATE),
    (HIDDEN, INTERMEDIATE),
    (INTERMEDIATE, HIDDEN),
]
PROJECTOR = 16 * HIDDEN + HIDDEN + HIDDEN * HIDDEN + HIDDEN


def test_lora_trainable_count_matches_r_and_targets(model_dir):
    decoder = config(model_dir).build()
    assert isinstance(decoder, QwenDecoder)
    assert count_trainable(decoder.model) == lora_count(4, ALL_LINEAR)
    assert count_trainable(decoder) == lora_count(4, ALL_LINEAR) + PROJECTOR
    narrow = QwenDecoder(config(model_dir, lora_r=2, lora_target_modules=["q_proj", "v_proj"]))
    assert count_trainable(narrow.model) == lora_count(2, [ALL_LINEAR[0], ALL_LINEAR[2]])
    assert narrow.hidden_size == HIDDEN


def test_chat_template_wraps_the_question(model_dir):
    decoder = QwenDecoder(config(model_dir))
    text = decoder.tokenizer.decode(decoder.prompt_ids("what is shown?"))
    assert text == "<|im_start|>user\nwhat is shown?<|im_end|>\n<|im_start|>assistant\n"
    plain = QwenDecoder(config(model_dir, use_chat_template=False))
    assert plain.tokenizer.decode(plain.prompt_ids("hi")) == "hi\n"
    assert decoder.answer_ids("two dogs")[-1] == decoder.eos_id


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_forward_backward_on_cpu(model_dir, quantization):
    pytest.importorskip("bitsandbytes", reason=QWEN_EXTRA)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decoder = QwenDecoder(
            config(model_dir, quantization=quantization, gradient_checkpointing=True)
        ).train()
    assert [str(w.message) for w in caught] == []  # no deprecation of peft/transformers reaches the user
    assert any(getattr(m, "gradient_checkpointing", False) for m in decoder.model.modules())  # still on
    linear = decoder.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(linear).__name__ == ("Linear8bitLt" if quantization == "8bit" else "Linear4bit")
    assert decoder.projector.net[0].weight.dtype == torch.float32  # never quantized
    batch = decoder.encode_qa(QUESTIONS, ANSWERS)
    out = decoder(torch.randn(2, 3, 16), **batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    trainable = {n for n, p in decoder.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("projector.") for n in trainable)
    assert any(n.startswith("projector.") for n in trainable)
    assert all(p.grad is not None for n, p in decoder.named_parameters() if n.startswith("projector."))
    assert count_trainable(decoder) == lora_count(4, ALL_LINEAR) + PROJECTOR


@pytest.fixture(scope="module")
def trained(model_dir):
    """LoRA + projector trained until two prefixes give two different answers to the same question."""
    torch.manual_seed(0)
    decoder = QwenDecoder(config(model_dir, lora_r=8, lora_alpha=16, gradient_checkpointing=True)).train()
    prefixes = torch.randn(2, 2, 16, generator=torch.Generator().manual_seed(3))
    batch = decoder.encode_qa(QUESTIONS, ANSWERS)
    opt = torch.optim.AdamW([p for p in decoder.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(40):
        loss = decoder(prefixes, **batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return decoder.eval(), prefixes


def generate_text(decoder, prefixes, questions, max_new_tokens=12):
    prompts = decoder.encode_prompts(questions)
    ids = decoder.generate(
        prefixes, prompts["input_ids"], prompts["attention_mask"], max_new_tokens=max_new_tokens
    )
    return ids, decoder.batch_decode(ids)


def test_trained_toy_uses_prefix_and_stops_at_eos(trained):
    decoder, prefixes = trained
    ids, texts = generate_text(decoder, prefixes, QUESTIONS)
    assert texts == ANSWERS
    assert ids.shape[1] < 12  # both rows emitted eos, so generation stopped early
    assert all(decoder.eos_id in row.tolist() for row in ids)
    assert torch.equal(ids, generate_text(decoder, prefixes, QUESTIONS)[0])  # greedy is deterministic
    _, swapped = generate_text(decoder, prefixes.flip(0), QUESTIONS)
    assert swapped == ANSWERS[::-1]


def test_kv_cache_generation_matches_a_full_recompute(trained):
    decoder, prefixes = trained
    questions = ["what is shown?", "shown?"]  # different lengths: left padding in the batch
    ids, _ = generate_text(decoder, prefixes, questions, max_new_tokens=5)
    prompts = decoder.encode_prompts(questions)
    seq, mask = prompts["input_ids"], prompts["attention_mask"]
    with torch.no_grad():
        for step in range(ids.shape[1]):
            nxt = decoder(prefixes, seq, mask).logits[:, -1].argmax(-1)
            finished = (ids[:, :step] == decoder.eos_id).any(-1)
            assert torch.equal(nxt[~finished], ids[~finished, step])
            seq = torch.cat([seq, nxt[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(nxt[:, None])], 1)


def test_save_then_load_gives_identical_generations(trained, tmp_path):
    decoder, prefixes = trained
    decoder.save(str(tmp_path))
    assert os.path.isfile(tmp_path / "adapter" / "adapter_model.safetensors")
    loaded = load_decoder(str(tmp_path)).eval()
    assert isinstance(loaded, QwenDecoder)
    assert torch.equal(
        generate_text(decoder, prefixes, QUESTIONS)[0], generate_text(loaded, prefixes, QUESTIONS)[0]
    )
    batch = decoder.encode_qa(QUESTIONS, ANSWERS)
    with torch.no_grad():
        assert torch.equal(decoder(prefixes, **batch).logits, loaded(prefixes, **batch).logits)
    assert count_trainable(loaded) == count_trainable(
        decoder
    )  # reloaded adapter and projector stay trainable


def test_bad_model_name_and_settings_are_decoder_errors(model_dir, tmp_path):
    with pytest.raises(DecoderError, match="^model_name '.*missing' could not be loaded"):
        config(str(tmp_path / "missing")).build()
    with pytest.raises(DecoderError, match=r"^lora_target_modules \['no_such_proj'\]: "):
        config(model_dir, lora_target_modules=["no_such_proj"]).build()  # known once the model is loaded


def test_sampling_is_seeded_and_stays_within_top_k(trained):
    decoder, prefixes = trained
    prompts = decoder.encode_prompts(QUESTIONS)

    def sample(seed, **kwargs):
        torch.manual_seed(seed)
        return decoder.generate(
            prefixes,
            prompts["input_ids"],
            prompts["attention_mask"],
            max_new_tokens=6,
            do_sample=True,
            **kwargs,
        )

    assert torch.equal(sample(0, temperature=3.0), sample(0, temperature=3.0))
    greedy = generate_text(decoder, prefixes, QUESTIONS, max_new_tokens=6)[0]
    assert torch.equal(sample(1, temperature=3.0, top_k=1), greedy)  # top-k 1 is greedy whatever the seed


def test_without_lora_only_the_projector_trains(model_dir):
    decoder = QwenDecoder(config(model_dir, use_lora=False))
    assert count_trainable(decoder) == PROJECTOR
    batch = decoder.encode_qa(QUESTIONS, ANSWERS)
    decoder(torch.randn(2, 3, 16), **batch).loss.backward()
    assert all(p.grad is None for p in decoder.model.parameters())


def test_debug_qwen2_is_its_seed_alone(tmp_path):
    """write_qwen2: the same seed writes the same bytes, another seed other weights; torch's RNG untouched."""
    texts = ["what is shown? a red cat, two dogs"]
    before = torch.get_rng_state()
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        write_qwen2(str(tmp_path / name), texts, seed=seed, vocab_size=300, num_layers=1)
    assert torch.equal(torch.get_rng_state(), before)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert "model.safetensors" in files and "tokenizer.json" in files
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    weights = [(tmp_path / n / "model.safetensors").read_bytes() for n in ("a", "c")]
    assert weights[0] != weights[1]
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "c" / "tokenizer.json"
    ).read_bytes()
