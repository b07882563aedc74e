"""A config's backbones made buildable offline and without weights, through the packages' own loaders.

A plan must build the real architecture of every tower and decoder without downloading or reading
weights. Each backbone kind gets there by a path its own library already supports:
- open_clip: `pretrained: ""` (random init from open_clip's bundled model config, or `model_config_file`);
- Whisper: `model_name: ""` with `dims` (eg-encoders' random-init encoder), from the published dims
  (architectures.WHISPER_DIMS) or the `dims` stored in a local .pt checkpoint (memory-mapped, not read);
- sentence-transformers and Hugging Face causal LMs: a local model folder holding the published
  config.json (architectures.HUB_MODELS), a tokenizer written offline (WordPiece or byte-level BPE with a
  chat template, as eg-decoders' debug Qwen has) and an empty `model.safetensors`, so transformers
  initializes every weight itself. Under FakeTensorMode that initialization allocates nothing. A local
  folder the config names is copied without its weight files.

`offline_alignment_config` and `offline_qa_config` return a copy of a config rewritten this way, and the
note lines that say what was substituted (printed with the plan).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from eg_encoders import WhisperEncoderDims

from apps.common.config import ConfigError
from apps.planning.architectures import HUB_MODELS, WHISPER_DIMS, WHISPER_SOURCE, HubModel

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
TOKENIZER_TEXTS = ["a photo of a dog", "what is in the image?", "user assistant system", "the sound of rain"]


def _empty_weights(folder: Path) -> None:
    from safetensors.torch import save_file

    save_file({}, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _wordpiece_tokenizer(folder: Path, config: dict[str, Any], max_length: int) -> None:
    """A WordPiece tokenizer of the model's vocabulary size with its special tokens at the config's ids."""
    from transformers import BertTokenizerFast

    mpnet = config["model_type"] == "mpnet"
    specials = ["<s>", "<pad>", "</s>", "<unk>"] if mpnet else ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted(
        {w for t in TOKENIZER_TEXTS for w in t.replace("?", " ?").split()}
        | set("abcdefghijklmnopqrstuvwxyz?")
    )
    vocab = specials + words
    vocab += [f"[unused{i}]" for i in range(config["vocab_size"] - len(vocab) - (1 if mpnet else 0))]
    if mpnet:
        vocab.append("<mask>")
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    names = (
        {
            "cls_token": "<s>",
            "sep_token": "</s>",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
            "mask_token": "<mask>",
        }
        if mpnet
        else {}
    )
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"), model_max_length=max_length, **names)
    tokenizer.save_pretrained(str(folder))


def _bpe_tokenizer(folder: Path) -> None:
    """A byte-level BPE with Qwen's special tokens and a ChatML chat template (eg-decoders' debug Qwen's)."""
    from eg_decoders.debug import CHAT_TEMPLATE, CHAT_WORDS, SPECIAL_TOKENS
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(TOKENIZER_TEXTS + CHAT_WORDS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE
    )
    tokenizer.save_pretrained(str(folder))


def write_hub_model(name: str, model: HubModel, folder: Path) -> Path:
    """The folder of `name` (published config, offline tokenizer, no weights) that its loader reads as a hub copy."""
    from transformers import AutoConfig

    folder.mkdir(parents=True, exist_ok=True)
    values = {k: v for k, v in model.config.items() if k != "model_type"}
    AutoConfig.for_model(model.config["model_type"], **values).save_pretrained(str(folder))
    _empty_weights(folder)
    if model.kind == "causal_lm":
        _bpe_tokenizer(folder)
        return folder
    _wordpiece_tokenizer(folder, model.config, model.max_seq_length)
    base = "sentence_transformers.base.modules"
    modules = [{"idx": 0, "name": "0", "path": "", "type": f"{base}.transformer.Transformer"}]
    width = model.config["hidden_size"]
    for index, module in enumerate(model.modules, start=1):
        kind, _, mode = module.partition(":")
        path = f"{index}_{kind}"
        module_type = (
            "sentence_transformers.sentence_transformer.modules.pooling.Pooling"
            if kind == "Pooling"
            else f"{base}.normalize.Normalize"
        )
        modules.append({"idx": index, "name": str(index), "path": path, "type": module_type})
        (folder / path).mkdir(exist_ok=True)
        if kind == "Pooling":
            pooling = {"embedding_dimension": width, "pooling_mode": mode, "include_prompt": True}
            (folder / path / "config.json").write_text(json.dumps(pooling))
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": model.max_seq_length, "do_lower_case": False})
    )
    return folder


def copy_without_weights(source: Path, folder: Path) -> Path:
    """A copy of the local model folder `source` with its weight files replaced by an empty one."""
    shutil.copytree(source, folder, ignore=lambda _, names: [n for n in names if n.endswith(WEIGHT_SUFFIXES)])
    _empty_weights(folder)
    for sub in folder.rglob("*"):  # sentence-transformers keeps modules in subfolders (2_Dense, ...)
        if sub.is_dir() and any(
            f.endswith(WEIGHT_SUFFIXES) for f in map(str, (source / sub.relative_to(folder)).iterdir())
        ):
            _empty_weights(sub)
    return folder


def offline_model_folder(name: str, key: str, work_dir: Path, notes: list[str]) -> str:
    """A weightless local folder for the hub id or local folder `name` (config key `key`)."""
    target = work_dir / name.replace("/", "--")
    if target.exists():
        return str(target)
    if Path(name).is_dir():
        copy_without_weights(Path(name), target)
        notes.append(f"{key}: the architecture of {name} (its config.json), weights not read")
        return str(target)
    if name not in HUB_MODELS:
        known = ", ".join(sorted(HUB_MODELS))
        raise ConfigError(
            f"{key}={name!r}: its architecture is not known offline; known hub models: {known} "
            "(or point it at a local model folder)"
        )
    write_hub_model(name, HUB_MODELS[name], target)
    notes.append(f"{key}: {name} from its published config ({HUB_MODELS[name].source})")
    return str(target)


def whisper_dims(name: str, key: str, notes: list[str]) -> WhisperEncoderDims:
    """The encoder dims of a Whisper name (published) or of a local .pt checkpoint's stored `dims`."""
    if name in WHISPER_DIMS:
        mels, ctx, state, heads, layers = WHISPER_DIMS[name]
        notes.append(f"{key}: Whisper {name} encoder from its published dims ({WHISPER_SOURCE})")
    elif Path(name).is_file():
        stored = torch.load(name, map_location="cpu", mmap=True, weights_only=True)["dims"]
        mels, ctx, state = stored["n_mels"], stored["n_audio_ctx"], stored["n_audio_state"]
        heads, layers = stored["n_audio_head"], stored["n_audio_layer"]
        notes.append(f"{key}: the encoder dims stored in {name}, weights not read")
    else:
        raise ConfigError(f"{key}={name!r}: not a Whisper name {sorted(WHISPER_DIMS)} nor a local .pt file")
    return WhisperEncoderDims(
        n_mels=mels, n_audio_ctx=ctx, n_audio_state=state, n_audio_head=heads, n_audio_layer=layers
    )


def offline_encoder(modality: str, encoder: Any, work_dir: Path, notes: list[str]) -> Any:
    """The encoder config of `modality` rewritten to build its architecture without weights or downloads."""
    key = f"model.{modality}.encoder"
    if getattr(encoder, "backend", "") == "open_clip":
        if encoder.pretrained:
            notes.append(
                f"{key}: open_clip {encoder.model_name} built from its model config, pretrained not loaded"
            )
        return dataclasses.replace(encoder, pretrained="")
    if modality == "audio":
        if encoder.dims is not None:
            return encoder
        dims = whisper_dims(encoder.model_name, f"{key}.model_name", notes)
        return dataclasses.replace(encoder, model_name="", dims=dims)
    if modality == "vision":  # backend hf: a CLIPVisionModel folder
        return dataclasses.replace(
            encoder, model_name=offline_model_folder(encoder.model_name, f"{key}.model_name", work_dir, notes)
        )
    return dataclasses.replace(
        encoder, model_name=offline_model_folder(encoder.model_name, f"{key}.model_name", work_dir, notes)
    )


def offline_alignment_config(cfg: Any, work_dir: Path, notes: list[str]) -> Any:
    """A copy of the stage-1 config whose towers build offline, weightless (see the module docstring)."""
    model = cfg.model
    towers = {}
    for name in ("vision", "audio", "text"):
        tower = getattr(model, name)
        if tower is not None:
            towers[name] = dataclasses.replace(
                tower, encoder=offline_encoder(name, tower.encoder, work_dir, notes)
            )
    return dataclasses.replace(cfg, model=dataclasses.replace(model, **towers), demo_models=None)


def offline_qa_config(cfg: Any, work_dir: Path, notes: list[str]) -> Any:
    """A copy of the stage-2 config whose decoder builds offline, weightless; 8/4-bit is left to the caller."""
    choice = cfg.model.decoder
    if choice.type != "qwen":
        return cfg
    qwen = choice.qwen
    folder = offline_model_folder(qwen.model_name, "model.decoder.qwen.model_name", work_dir, notes)
    decoder = dataclasses.replace(
        choice, qwen=dataclasses.replace(qwen, model_name=folder, quantization="none")
    )
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, decoder=decoder), demo_qwen=None)
