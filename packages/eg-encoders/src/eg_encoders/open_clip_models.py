"""open_clip models shared by the vision and text encoders: where a model's config is found, and how it is made.

Both towers of an open_clip CLIP go through the same two functions, so a model name and a pretrained tag
(e.g. ViT-B-32 / openai) name the same CLIP on both sides: `open_clip_model_config` reads the model config
(embed_dim, vision_cfg, text_cfg) from files only, without importing open_clip or loading weights (what a
config's `image_size()` and `pooled_width()` answer from), and `create_open_clip_model` checks the name and
tag (EncoderError naming the key) and builds the model on the CPU. Also the offline config-file lookup
(a local directory or the Hugging Face cache) the Hugging Face vision backend uses.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

from torch import nn

from eg_encoders.common import EncoderError


def read_json(path: str) -> dict | None:
    """A JSON file's object, or None when the file cannot be read or parsed (the build will report it)."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def cached_config_file(name: str, filename: str, cache_dir: str | None) -> str | None:
    """`filename` in the local directory `name`, or in the Hugging Face cache for hub id `name`; else None."""
    if os.path.isdir(name):
        path = os.path.join(name, filename)
        return path if os.path.isfile(path) else None
    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(name, filename, cache_dir=cache_dir)
    except ValueError:  # not a valid hub id (e.g. a directory that does not exist)
        return None
    return path if isinstance(path, str) else None


def open_clip_model_config(name: str, config_file: str, cache_dir: str | None) -> dict | None:
    """The open_clip model config (embed_dim, vision_cfg, text_cfg) that create_model would use for `name`."""
    if name.startswith("local-dir:"):
        path = os.path.join(name.removeprefix("local-dir:"), "open_clip_config.json")
    elif name.startswith("hf-hub:"):
        path = cached_config_file(name.removeprefix("hf-hub:"), "open_clip_config.json", cache_dir)
    else:
        name = name.replace("/", "-")  # as create_open_clip_model and open_clip do
        if config_file:
            if not os.path.isfile(config_file):
                raise EncoderError(f"model_config_file={config_file!r} does not exist")
            if os.path.splitext(os.path.basename(config_file))[0] == name:
                return read_json(config_file)
        if "open_clip" in sys.modules:  # its registry, with any config registered through add_model_config
            return sys.modules["open_clip"].get_model_config(name)
        # open_clip's registry is the JSON files it ships; reading one avoids importing open_clip (seconds)
        spec = importlib.util.find_spec("open_clip")
        folders = list(spec.submodule_search_locations or []) if spec else []
        path = next((os.path.join(f, "model_configs", f"{name}.json") for f in folders), "")
    config = read_json(path) if path else None
    return config.get("model_cfg", config) if config else None


def register_open_clip_config(model_config_file: str) -> None:
    """Register a JSON model config with open_clip (so its file stem is a model name); EncoderError if missing."""
    import open_clip

    if not os.path.isfile(model_config_file):
        raise EncoderError(f"model_config_file={model_config_file!r} does not exist")
    open_clip.add_model_config(model_config_file)


def create_open_clip_model(
    model_name: str, pretrained: str, model_config_file: str, cache_dir: str
) -> nn.Module:
    """open_clip.create_model on the CPU after checking the name and pretrained tag (EncoderError naming the key).

    model_name: an open_clip model name, "hf-hub:org/repo", "local-dir:/path", or the stem of
    `model_config_file`. pretrained: a tag of that model, a checkpoint file, or "" for random init.
    """
    import open_clip

    if model_config_file:
        register_open_clip_config(model_config_file)
    has_schema = model_name.startswith(("hf-hub:", "local-dir:"))
    name = model_name.replace("/", "-")
    if not has_schema and name not in open_clip.list_models():
        raise EncoderError(
            f"model_name={model_name!r} is not an open_clip model; use a name from "
            f"open_clip.list_models() (e.g. 'ViT-B-32'), 'hf-hub:org/repo', 'local-dir:/path', or set "
            f"model_config_file to a JSON model config named after its file stem"
        )
    if pretrained and not has_schema and not os.path.isfile(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise EncoderError(
                f"pretrained={pretrained!r} is neither a checkpoint file nor a tag of {name} "
                f"(tags: {tags}); use '' for random init"
            )
    return open_clip.create_model(
        model_name, pretrained=pretrained or None, cache_dir=cache_dir or None, device="cpu"
    )
