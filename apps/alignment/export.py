"""`apps/export`: a stage-1 checkpoint -> a self-contained folder that eg-encoders loads alone
(`eg_encoders.AlignedEncoders.from_pretrained(DIR)`): config.json, model.safetensors, the backbone files
the towers are built from under backbones/<modality>/, and a README.md model card written from the run.

Backbones are rebuilt random-init where the encoder config allows it (open_clip: `pretrained: ""` with the
model config file copied; Whisper: its `dims` read from the built encoder), so their pretrained weights are
not copied twice; a sentence-transformers or HF folder is copied whole (its tokenizer lives there). Every
weight the export embeds with comes from model.safetensors, written by the safetensors library from the
towers' state dict in sorted key order, so the same checkpoint always gives the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from eg_encoders.pretrained import preprocess_entry, save_pretrained, tower_state_dict
from eg_train import load_checkpoint, load_model_weights

from apps.alignment.build import Aligned, build_model, config_of_checkpoint
from apps.common.config import ConfigError
from apps.common.loaders import train_folders

PACKAGES = ("eg-encoders", "eg-resampler", "eg-losses", "eg-data", "eg-train", "eg-decoders")


class ExportError(ConfigError):
    """A checkpoint or output folder the export cannot use (a user error: one line, exit 2)."""


def load_for_export(checkpoint: str | Path) -> tuple[Aligned, int]:
    """The trained model of `checkpoint` (eval mode) and its count of trainable parameters as configured."""
    path = Path(checkpoint)
    if not path.is_file():
        raise ExportError(f"{path}: no such checkpoint file")
    cfg = config_of_checkpoint(path)
    model = build_model(cfg)
    trainable = sum(p.numel() for p in model.towers.parameters() if p.requires_grad)
    meta = load_model_weights(model, path)
    model.eval().requires_grad_(False)
    aligned = Aligned(config=cfg, model=model, checkpoint=str(path), step=int(meta.get("step") or 0))
    return aligned, trainable


def weights_digest(path: Path) -> str:
    """sha256 of a file's bytes (hex)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _copy(src: str, out: Path, rel: str) -> str:
    """Copy the file or folder `src` to `out / rel`; returns `rel` (the path config.json records)."""
    target = out / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    if Path(src).is_dir():
        shutil.copytree(src, target, dirs_exist_ok=True)
    elif Path(src).is_file():
        shutil.copy2(src, target)
    else:
        raise ExportError(f"{src}: the backbone file the stored config names does not exist")
    return rel


def tower_entry(name: str, tower_cfg: Any, tower: torch.nn.Module, out: Path) -> dict[str, Any]:
    """One tower's config.json entry; copies the files its encoder is built from into out/backbones/<name>."""
    enc = dataclasses.replace(tower_cfg.encoder)
    folder_paths: list[str] = []
    base = f"backbones/{name}"
    if name in ("vision", "text") and getattr(enc, "backend", "") == "open_clip":
        enc.pretrained = ""  # the trained weights come from model.safetensors
        if enc.model_config_file:
            enc.model_config_file = _copy(
                enc.model_config_file, out, f"{base}/{Path(enc.model_config_file).name}"
            )
            folder_paths.append("model_config_file")
    elif name == "vision":  # hf: a local CLIPVisionModel folder (config + weights)
        if Path(enc.model_name).is_dir():
            enc.model_name = _copy(enc.model_name, out, base)
            folder_paths.append("model_name")
    elif name == "audio":
        from eg_encoders import WhisperEncoderDims

        backbone = tower.encoder.backbone
        n_ctx, width = backbone.positional_embedding.shape
        enc.dims = WhisperEncoderDims(
            n_mels=backbone.conv1.in_channels,
            n_audio_ctx=int(n_ctx),
            n_audio_state=int(width),
            n_audio_head=int(backbone.blocks[0].attn.n_head),
            n_audio_layer=len(backbone.blocks),
        )
        enc.model_name = ""
        enc.download_root = ""
    else:  # sentence-transformers: the folder has the tokenizer; a hub name is saved by the library
        if Path(enc.model_name).is_dir():
            enc.model_name = _copy(enc.model_name, out, base)
        else:
            tower.encoder.model.save(str(out / base))
            enc.model_name = base
        folder_paths.append("model_name")
    if hasattr(enc, "cache_dir"):
        enc.cache_dir = ""
    entry: dict[str, Any] = {"encoder": dataclasses.asdict(enc), "folder_paths": folder_paths}
    if hasattr(tower_cfg, "resampler"):
        entry["resampler"] = None if tower_cfg.resampler is None else dataclasses.asdict(tower_cfg.resampler)
    preprocess = preprocess_entry(tower)
    if preprocess is not None:
        entry["preprocess"] = preprocess
    return entry


def package_versions() -> dict[str, str]:
    """The installed eg-* versions."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def export_stage1(checkpoint: str | Path, out: str | Path) -> dict[str, Any]:
    """Write the export folder of a stage-1 checkpoint; returns its config.json dict."""
    from apps.alignment.embed import weights_fingerprint
    from apps.alignment.evaluate import eval_dims

    aligned, trainable = load_for_export(checkpoint)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out}: the output folder exists and is not empty; name a new folder")
    out.mkdir(parents=True, exist_ok=True)
    cfg, model = aligned.config, aligned.model
    towers = {
        name: tower_entry(name, getattr(cfg.model, name), tower, out) for name, tower in model.towers.items()
    }
    dims = sorted(set(model.mrl_dims) | set(eval_dims(cfg, model.mrl_dims)))
    # the run's config for the apps (Embedder, search, stage 2): no demo assets to write, each tower's
    # encoder as exported (build.load_exported resolves its paths inside the folder)
    stored = load_checkpoint(checkpoint)
    run_config = dict(stored["run_config"], demo_models=None)
    run_config["model"] = {
        **run_config["model"],
        **{name: {**run_config["model"][name], "encoder": towers[name]["encoder"]} for name in towers},
    }
    config = {
        "towers": towers,
        "projection": dataclasses.asdict(cfg.model.projection),
        "dims": dims,
        "pairs": list(cfg.model.pairs),
        "batch_size": int(cfg.eval.batch_size),
        "run_config": run_config,
        "versions": package_versions(),
        "source": {
            "checkpoint": str(checkpoint),
            "step": aligned.step,
            "samples_seen": int(stored.get("samples_seen") or 0),
            "experiment_name": cfg.experiment_name,
            "weights_fingerprint": weights_fingerprint(model),
            "checkpoint_sha256": weights_digest(Path(checkpoint)),
        },
    }
    from apps.alignment.export_open_clip import export_open_clip, open_clip_reason

    if open_clip_reason(aligned) is None:  # both towers are one open_clip CLIP: also its own checkpoint
        files = export_open_clip(aligned, out)
        config["open_clip"] = {k: str(Path(v).relative_to(out)) if v.startswith(str(out)) else v
                               for k, v in files.items()}  # fmt: skip
    config = save_pretrained(out, model.towers, config)
    total = sum(t.numel() for t in tower_state_dict(model.towers).values())
    (out / "README.md").write_text(model_card(aligned, config, total, trainable, out))
    return config


def data_lines(train: Any, samples_seen: int | None, key: str = "data.train") -> list[str]:
    """Model-card lines of the training data: each shard folder with its sample and shard counts (its
    shards.json index, read without writing), and the samples the run drew in training."""
    from eg_data import DataError, load_index

    lines = []
    for name, folder in train_folders(train, key):
        try:
            shards = load_index(folder, build_if_missing=False, save=False)
            counts = f"{sum(s.num_samples for s in shards):,} samples in {len(shards)} shards"
        except DataError:  # the folder moved or has no index: said, not guessed
            counts = "sample count unknown (the folder or its shards.json is not readable here)"
        lines.append(f"- data: `{folder}` ({name}): {counts}")
    if samples_seen:
        lines.append(f"- samples drawn in training: {samples_seen:,}")
    return lines


def _eval_report(aligned: Aligned) -> dict[str, Any] | None:
    """The run's eval.json when it scored this checkpoint (same file or same step), else None."""
    path = Path(aligned.config.train.output_dir) / "eval.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    steps = (report.get("train") or {}).get("steps")
    same = Path(str(report.get("checkpoint", ""))).resolve() == Path(aligned.checkpoint).resolve()
    return report if same or steps == aligned.step else None


def model_card(aligned: Aligned, config: dict[str, Any], total: int, trainable: int, out: Path) -> str:
    """README.md: architecture, parameters, data, steps, the held-out retrieval table, use, loading."""
    cfg = aligned.config
    lines = [
        f"# {cfg.experiment_name}: Edge Glass aligned encoders",
        "",
        (
            f"Towers for {', '.join(config['towers'])} mapped into one shared embedding space (Matryoshka "
            f"dims {config['dims']}), trained contrastively on the pairs {', '.join(config['pairs'])}."
        ),
        "",
        "## Architecture",
        "",
    ]
    for name, entry in config["towers"].items():
        enc = entry["encoder"]
        backbone = enc.get("model_name") or "random-init Whisper encoder"
        pooling = (enc.get("pooling") or {}).get("type", "the model's own")
        extra = f", resampler {entry['resampler']['num_latents']} latents" if entry.get("resampler") else ""
        lines.append(f"- {name}: {enc.get('backend', 'whisper')} `{backbone}`, pooling {pooling}{extra}")
    proj = config["projection"]
    lines += [
        f"- projection: max_dim {proj['max_dim']}, hidden_dim {proj['hidden_dim']}",
        "",
        f"Parameters: {total:,} total, {trainable:,} trainable during training.",
        "",
        "## Training",
        "",
    ]
    lines += data_lines(cfg.data.train, config["source"]["samples_seen"])
    lines += [f"- steps: {aligned.step} (checkpoint `{aligned.checkpoint}`)", ""]
    lines += _retrieval_table(_eval_report(aligned))
    lines += [
        "## Intended use",
        "",
        (
            "Cross-modal retrieval and embedding (image, audio and text search) at the dims above; a "
            "research model trained on the data listed, not evaluated beyond the table here."
        ),
        "",
        "## Load",
        "",
        "```python",
        "from eg_encoders import AlignedEncoders",
        f'model = AlignedEncoders.from_pretrained("{out}")',
        f'z = model.embed_texts(["a photo"], dim={config["dims"][0]})',
        "```",
        "",
    ]
    if "open_clip" in config:
        oc = config["open_clip"]
        register = (
            f'open_clip.add_model_config("{out}/{oc["model_config_file"]}")\n'
            if oc["model_config_file"]
            else ""
        )
        lines += [
            "The same model in open_clip (the fine-tuned CLIP as it is):",
            "",
            "```python",
            f"import open_clip\n{register}model, _, preprocess = open_clip.create_model_and_transforms("
            + f'"{oc["model_name"]}", pretrained="{out}/{oc["pretrained"]}")',
            "```",
            "",
        ]
    return "\n".join(lines)


def _retrieval_table(report: dict[str, Any] | None) -> list[str]:
    """Markdown lines: R@1 / R@5 per pair direction and dim of the held-out split."""
    lines = ["## Held-out retrieval", ""]
    if report is None:
        return [*lines, "No eval.json of this checkpoint was found (run apps/evaluate).", ""]
    lines += [
        f"Split `{report.get('split_dir')}`, {report.get('num_samples')} samples.",
        "",
        "| pair | direction | dim | R@1 | R@5 |",
        "|---|---|---|---|---|",
    ]
    for pair, by_dim in report.get("retrieval", {}).items():
        for dim, directions in by_dim.items():
            for direction, metrics in directions.items():
                lines.append(
                    f"| {pair} | {direction} | {dim} | {metrics['recall@1']:.3f} | {metrics['recall@5']:.3f} |"
                )
    return [*lines, ""]
