"""Debug flavours: tiny random-init backbones written in the real on-disk formats (torchtitan style).

Each `write_*` function builds a deterministic (given `seed`) tiny model of a real kind, saves it the way
the pretrained model is distributed, and returns the encoder-config fields that load it back through the
normal loading path, e.g. `VisionEncoderConfig(**write_open_clip_vit(tmp_dir))`. Widths 64, 2 layers:
CPU tests and the demo run the real library code in well under a second per forward.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict

import torch

from eg_encoders.common import quiet_progress_bars

DEBUG_TEXTS = (
    "a photo of a red square",
    "a photo of a blue circle",
    "a green triangle on a white background",
    "the sound of a dog barking",
    "a person says hello world",
    "what colour is the shape? it is yellow.",
)


def write_open_clip_vit(
    out_dir: str, seed: int = 0, image_size: int = 32, patch_size: int = 8, width: int = 64, layers: int = 2
) -> dict[str, str]:
    """Write a tiny open_clip ViT-CLIP: `<name>.json` (model config) and `<name>.pt` (full CLIP state dict).

    Returns VisionEncoderConfig fields: backend, model_name (the config's file stem, registered through
    model_config_file), pretrained (the checkpoint path), model_config_file. The model is open_clip's own
    `CLIP` class built from that config (what `open_clip.create_model` builds, without its "No pretrained
    weights loaded" warning: random weights are the point here).
    """
    import open_clip

    name = f"eg-debug-vit-i{image_size}-p{patch_size}-w{width}-l{layers}"
    model_cfg = {
        "embed_dim": width,
        "vision_cfg": {
            "image_size": image_size,
            "layers": layers,
            "width": width,
            "patch_size": patch_size,
            "head_width": 32,
        },
        "text_cfg": {"context_length": 16, "vocab_size": 512, "width": width, "heads": 2, "layers": 1},
    }
    os.makedirs(out_dir, exist_ok=True)
    config_file = os.path.join(out_dir, f"{name}.json")
    with open(config_file, "w", encoding="utf-8") as f:
        json.dump(model_cfg, f, indent=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(**model_cfg)
    checkpoint = os.path.join(out_dir, f"{name}.pt")
    torch.save(model.state_dict(), checkpoint)
    return {
        "backend": "open_clip",
        "model_name": name,
        "pretrained": checkpoint,
        "model_config_file": config_file,
    }


def write_open_clip_clip(
    out_dir: str,
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    width: int = 64,
    layers: int = 2,
    embed_dim: int = 32,
    context_length: int = 32,
) -> dict[str, str]:
    """Write a tiny open_clip CLIP whose text tower reads open_clip's own tokenizer (the OpenAI BPE, 49408 ids).

    Like `write_open_clip_vit` (`<name>.json` + `<name>.pt`, open_clip's `CLIP` class), but both towers are
    meant to be used: the text tower has the real tokenizer's vocabulary, and `embed_dim` (the width of
    both CLIP projections) differs from `width` so a test sees which one it gets. Returns the fields that
    load it as either tower: backend, model_name, pretrained, model_config_file (VisionEncoderConfig and
    TextEncoderConfig(backend="open_clip") both take them).
    """
    import open_clip

    name = f"eg-debug-clip-i{image_size}-p{patch_size}-w{width}-l{layers}-e{embed_dim}"
    model_cfg = {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": layers, "width": width, "patch_size": patch_size},
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": 49408,
            "width": width,
            "heads": 2,
            "layers": layers,
        },
    }
    model_cfg["vision_cfg"]["head_width"] = 32
    os.makedirs(out_dir, exist_ok=True)
    config_file = os.path.join(out_dir, f"{name}.json")
    with open(config_file, "w", encoding="utf-8") as f:
        json.dump(model_cfg, f, indent=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(**model_cfg)
    checkpoint = os.path.join(out_dir, f"{name}.pt")
    torch.save(model.state_dict(), checkpoint)
    return {
        "backend": "open_clip",
        "model_name": name,
        "pretrained": checkpoint,
        "model_config_file": config_file,
    }


def write_hf_clip_vision(
    out_dir: str, seed: int = 0, image_size: int = 32, patch_size: int = 8, width: int = 64, layers: int = 2
) -> dict[str, str]:
    """Write a tiny Hugging Face CLIPVisionModel directory: config.json, safetensors weights and a
    preprocessor_config.json.

    Returns VisionEncoderConfig fields: backend "hf", model_name (the directory), pretrained "".
    """
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModel(config)
    with quiet_progress_bars():
        model.save_pretrained(out_dir)
    preprocessor = {
        "image_processor_type": "CLIPImageProcessor",
        "size": {"shortest_edge": image_size},
        "crop_size": {"height": image_size, "width": image_size},
        "do_resize": True,
        "do_center_crop": True,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
    }
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w", encoding="utf-8") as f:
        json.dump(preprocessor, f, indent=2)
    return {"backend": "hf", "model_name": out_dir, "pretrained": ""}


def write_whisper(
    out_dir: str, seed: int = 0, n_mels: int = 80, n_audio_ctx: int = 200, width: int = 64, layers: int = 2
) -> dict[str, str]:
    """Write a tiny Whisper checkpoint `eg-debug-whisper.pt` ({"dims", "model_state_dict"}, as released).

    n_audio_ctx=200 tokens = 4 s of audio. Returns AudioEncoderConfig fields: model_name (the .pt path).
    """
    from whisper.model import ModelDimensions, Whisper

    dims = ModelDimensions(
        n_mels=n_mels,
        n_audio_ctx=n_audio_ctx,
        n_audio_state=width,
        n_audio_head=2,
        n_audio_layer=layers,
        n_vocab=64,
        n_text_ctx=8,
        n_text_state=width,
        n_text_head=2,
        n_text_layer=1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Whisper(dims)
        # whisper leaves the text decoder's positional embedding uninitialized (torch.empty): draw it too,
        # so the same seed writes the same bytes (the audio encoder never reads it).
        model.decoder.positional_embedding.data.normal_(0.0, 0.02)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "eg-debug-whisper.pt")
    torch.save({"dims": asdict(dims), "model_state_dict": model.state_dict()}, path)
    return {"model_name": path}


def write_sentence_transformer(
    out_dir: str,
    seed: int = 0,
    texts: tuple[str, ...] | list[str] = DEBUG_TEXTS,
    width: int = 64,
    layers: int = 2,
) -> dict[str, str]:
    """Write a tiny sentence-transformers directory: BertModel + mean Pooling, WordPiece vocab built offline.

    The vocab holds the special tokens, every character seen in `texts` (also as "##" continuations) and
    their whole words, so any text tokenizes (unseen characters map to [UNK]). Returns TextEncoderConfig
    fields: model_name (the directory).
    """
    from eg_encoders.text import import_sentence_transformers

    sentence_transformer = import_sentence_transformers().SentenceTransformer
    try:
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # sentence-transformers 5.x keeps them in `models`
        from sentence_transformers.models import Pooling, Transformer

    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    chars = sorted({c for w in words for c in w} | set("abcdefghijklmnopqrstuvwxyz0123456789.,?!'"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *[f"##{c}" for c in chars]]
    vocab += [w for w in words if w not in set(vocab)]
    with tempfile.TemporaryDirectory() as bert_dir, quiet_progress_bars():
        _write_tiny_bert(bert_dir, vocab, seed, width, layers)
        transformer = Transformer(bert_dir, max_seq_length=64)
        model = sentence_transformer(modules=[transformer, Pooling(width, "mean")], device="cpu")
        model.save(out_dir)
    return {"model_name": out_dir}


def _write_tiny_bert(bert_dir: str, vocab: list[str], seed: int, width: int, layers: int) -> None:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab_file = os.path.join(bert_dir, "vocab.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    # transformers 5 takes the WordPiece vocabulary as `vocab` (a `vocab_file=` keyword is silently ignored
    # and leaves only the special tokens, so every word would become [UNK]).
    tokenizer = BertTokenizerFast(vocab=vocab_file, do_lower_case=True, model_max_length=64)
    if len(tokenizer) != len(vocab):
        raise RuntimeError(f"tokenizer holds {len(tokenizer)} tokens, expected {len(vocab)}")
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * width,
        max_position_embeddings=64,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bert = BertModel(config)
    bert.save_pretrained(bert_dir)
    tokenizer.save_pretrained(bert_dir)
