"""`apps/export` of a stage-2 (QA) checkpoint: the stage-1 export folder (towers, resampler, backbones, model
card; `eg_encoders.AlignedEncoders.from_pretrained(DIR)` loads it) plus what stage 2 trained:

- `projector.safetensors`: the per-modality PrefixProjectors (keys `<modality>.<parameter>`);
- a LoRA'd Qwen: `adapter/` written by peft's own `save_pretrained` (adapter_config.json +
  adapter_model.safetensors), so `PeftModel.from_pretrained(base, DIR/adapter)` loads it; the base LM is
  copied to `base/` when it is a local folder (a hub id is named, not copied);
- a TRM or tiny decoder: `decoder.safetensors` (its whole state dict);
- `qa_config.json`: the stage-2 run config (stage1.checkpoint = the folder itself, the base LM inside it),
  the decoder kind, the source checkpoint's step and sha256.

`load_exported_qa(DIR)` rebuilds the QA model from the folder alone: towers through `load_aligned(DIR)`
(eg-encoders' loader), the decoder built from the stored config with the adapter loaded by
`PeftModel.from_pretrained`, every tensor loaded strictly (a mismatch is one line naming file and key).
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from eg_train import load_checkpoint

from apps.common.config import ConfigError, build_config
from apps.qa.config import QAConfig

CONFIG_NAME = "qa_config.json"
PROJECTOR_NAME = "projector.safetensors"
DECODER_NAME = "decoder.safetensors"
ADAPTER_DIR = "adapter"
BASE_DIR = "base"


class QAExportError(ConfigError):
    """A stage-2 checkpoint or export folder that cannot be used (one line naming the file or key, exit 2)."""


def is_stage2(checkpoint: str | Path) -> bool:
    """Whether `checkpoint` (a file) stores a `stage: qa` run config with a decoder (anything else is left to
    the stage-1 export, which names the checkpoint that is of neither kind)."""
    raw = load_checkpoint(checkpoint).get("run_config") or {}
    return raw.get("stage") == "qa" and "decoder" in (raw.get("model") or {})


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write tensors with the safetensors library, sorted by key, contiguous CPU copies (same bytes always)."""
    from safetensors.torch import save_file

    save_file({k: tensors[k].detach().cpu().contiguous().clone() for k in sorted(tensors)}, str(path))


def _load_strict(module: torch.nn.Module, path: Path) -> None:
    """Load `path` into `module` strictly; QAExportError naming the file and the first bad key."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise QAExportError(f"{path}: missing (apps/export writes it for this decoder)")
    state = load_file(str(path))
    own = module.state_dict()
    for key in sorted(set(own) | set(state)):
        if key not in state:
            raise QAExportError(f"{path}: {key} is missing (the stored config builds it)")
        if key not in own:
            raise QAExportError(f"{path}: {key} is not in the model the stored config builds")
        if tuple(state[key].shape) != tuple(own[key].shape):
            raise QAExportError(
                f"{path}: {key} has shape {tuple(state[key].shape)}, the config builds {tuple(own[key].shape)}"
            )
    module.load_state_dict(state, strict=True)


def save_stage2_weights(model: Any, out: Path) -> list[str]:
    """Write what stage 2 trained (projectors; the peft adapter or the decoder's state) into `out`; returns
    the files written, relative to `out`."""
    _save(model.projectors.state_dict(), out / PROJECTOR_NAME)
    written = [PROJECTOR_NAME]
    decoder = model.decoder
    if decoder.config.type == "qwen":
        from peft import PeftModel

        if isinstance(decoder.model, PeftModel):
            decoder.model.save_pretrained(str(out / ADAPTER_DIR))  # peft's own format
            written.append(f"{ADAPTER_DIR}/adapter_model.safetensors")
        others = {n: t for n, t in decoder.trainable_state_dict().items() if not n.startswith("model.")}
        if others:  # e.g. the decoder's own projector: not part of the adapter
            _save(others, out / DECODER_NAME)
            written.append(DECODER_NAME)
    else:
        _save(decoder.state_dict(), out / DECODER_NAME)
        written.append(DECODER_NAME)
    return written


def export_stage2(checkpoint: str | Path, out: str | Path) -> dict[str, Any]:
    """Write the export folder of a stage-2 checkpoint (the stage-1 folder plus the stage-2 files); returns
    qa_config.json's dict."""
    from apps.alignment.export import export_stage1
    from apps.qa.build import load_trained

    path, out = Path(checkpoint), Path(out)
    raw = copy.deepcopy(load_checkpoint(path).get("run_config") or {})
    cfg = build_config(QAConfig, raw, f"{path} (stored config)")
    if cfg.model.train_resampler:
        raise QAExportError(
            f"{path}: model.train_resampler is true; exporting a resampler trained in stage 2 is not supported"
        )
    stage1 = Path(cfg.stage1.checkpoint)
    if not stage1.is_file():
        raise QAExportError(
            f"{path}: stage1.checkpoint {str(stage1)!r} (its stored config) is not a checkpoint file here"
        )
    model, _, meta = load_trained(cfg, path)
    model.eval()
    export_stage1(stage1, out)  # the frozen towers, exactly as stage 1 exports them
    files = save_stage2_weights(model, out)
    raw["stage1"] = {**raw["stage1"], "checkpoint": "."}
    decoder = raw["model"]["decoder"]
    if cfg.model.decoder.type == "qwen":
        base = cfg.model.decoder.qwen.model_name
        if Path(base).is_dir():
            shutil.copytree(base, out / BASE_DIR)
            decoder["qwen"] = {**decoder["qwen"], "model_name": BASE_DIR}
    raw.pop("demo_qwen", None)  # nothing to write when loading
    config = {
        "format": "eg-qa",
        "run_config": raw,
        "decoder": cfg.model.decoder.type,
        "files": files,
        "source": {
            "checkpoint": str(path),
            "step": int(meta.get("step") or 0),
            "checkpoint_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        },
    }
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    with (out / "README.md").open("a") as card:
        card.write(model_card_section(cfg, model, config, out))
    return config


def model_card_section(cfg: QAConfig, model: Any, config: dict[str, Any], out: Path) -> str:
    """The model card's stage-2 part: decoder, parameters, steps, the held-out QA scores, loading."""
    choice = cfg.model.decoder
    variant = choice.variant()
    total = sum(p.numel() for p in model.projectors.parameters())
    total += sum(p.numel() for p in model.decoder.parameters())
    lines = [
        "",
        "## Stage 2: question answering",
        "",
        f"- decoder: {choice.type}, prefix modalities {', '.join(model.modalities)}, projector {variant.projector}",
    ]
    if choice.type == "qwen":
        lines.append(
            f"- base LM `{variant.model_name}` ({variant.quantization}), LoRA r={variant.lora_r} "
            f"alpha={variant.lora_alpha} on {variant.lora_target_modules} (`{ADAPTER_DIR}/`, peft format)"
        )
    lines += [
        f"- parameters: {total:,} in the projectors and decoder, {model.num_trainable():,} trained",
        f"- steps: {config['source']['step']} (checkpoint `{config['source']['checkpoint']}`)",
        "",
    ]
    report = Path(cfg.train.output_dir) / "eval.json"
    if report.is_file():
        scores = json.loads(report.read_text()).get("variants") or {}
        if scores:
            lines += ["| prefix | exact match |", "|---|---|"]
            lines += [
                f"| {name} | {v['exact_match']:.3f} |"
                for name, v in scores.items()
                if isinstance(v, dict) and "exact_match" in v
            ]
            lines.append("")
    lines += [
        "```python",
        "from apps.qa.export import load_exported_qa",
        f'model, aligned, cfg = load_exported_qa("{out}")',
        "```",
        "",
    ]
    if choice.type == "qwen":
        lines += [
            "The adapter alone, with peft:",
            "",
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM",
            f'base = AutoModelForCausalLM.from_pretrained("{out}/{BASE_DIR}")',
            f'model = PeftModel.from_pretrained(base, "{out}/{ADAPTER_DIR}")',
            "```",
            "",
        ]
    return "\n".join(lines)


def load_exported_qa(folder: str | Path, device: str | torch.device = "cpu") -> tuple[Any, Any, QAConfig]:
    """(the QA model, its stage-1 `Aligned`, its QAConfig) rebuilt from a stage-2 export folder alone."""
    from apps.qa.model import QAModel

    folder = Path(folder)
    file = folder / CONFIG_NAME
    if not file.is_file():
        raise QAExportError(f"{file}: missing (not a stage-2 export folder; apps/export writes it)")
    stored = json.loads(file.read_text())
    raw = copy.deepcopy(stored["run_config"])
    raw["stage1"] = {**raw["stage1"], "checkpoint": str(folder)}
    decoder_raw = raw["model"]["decoder"]
    qwen = decoder_raw.get("type") == "qwen"
    if qwen:
        name = decoder_raw["qwen"]["model_name"]
        if name == BASE_DIR:
            decoder_raw["qwen"]["model_name"] = str(folder / BASE_DIR)
        # the base alone; the trained adapter is loaded below by peft's PeftModel.from_pretrained
        lora = decoder_raw["qwen"].get("use_lora", True)
        decoder_raw["qwen"]["use_lora"] = False
    cfg = build_config(QAConfig, raw, f"{file} (run_config)")
    from apps.alignment import load_aligned
    from apps.alignment.embed import weights_fingerprint

    aligned = load_aligned(folder, device)  # the towers through eg-encoders' AlignedEncoders
    expected = cfg.stage1.fingerprint
    if expected and weights_fingerprint(aligned.towers) != expected:
        raise QAExportError(f"{folder / 'model.safetensors'}: other tower weights than stage1.fingerprint")
    from apps.qa.build import make_decoder

    torch.manual_seed(cfg.seed)
    decoder = make_decoder(cfg.model.decoder)
    if qwen and lora:
        from peft import PeftModel

        adapter = folder / ADAPTER_DIR
        if not (adapter / "adapter_config.json").is_file():
            raise QAExportError(f"{adapter / 'adapter_config.json'}: missing (the config has use_lora)")
        decoder.model = PeftModel.from_pretrained(decoder.model, str(adapter))
        decoder.config.use_lora = True
        decoder_raw["qwen"]["use_lora"] = True
    model = QAModel(cfg.model, aligned.towers, decoder)
    _load_strict(model.projectors, folder / PROJECTOR_NAME)
    if not qwen:
        _load_strict(model.decoder, folder / DECODER_NAME)
    elif (folder / DECODER_NAME).is_file():
        from safetensors.torch import load_file

        params = dict(model.decoder.named_parameters())
        for key, tensor in load_file(str(folder / DECODER_NAME)).items():
            if key not in params:
                raise QAExportError(f"{folder / DECODER_NAME}: {key} is not in the decoder the config builds")
            params[key].data.copy_(tensor)
    model.to(device).eval()
    cfg = build_config(QAConfig, raw, f"{file} (run_config)")
    return model, aligned, cfg
