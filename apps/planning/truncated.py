"""Real-width, depth-truncated variants of the real configs, written to disk in the real formats, and one
real training step of them on the CPU: what the plan's fake step is checked against.

A variant keeps every width, head count, vocabulary, image size, mel-bin count and Matryoshka dim of the
real config and cuts each backbone to `layers` blocks (ViT-L/14-336 at 336 px with 2 blocks, Whisper
large-v3's 1280-wide, 128-mel encoder with 2 layers, Qwen2.5-7B's width, heads and 152,064-token vocabulary
with 2 layers). The models are written where the apps' loaders read them, random-init, offline:
- open_clip: a model-config JSON (open_clip's own config of the model, `layers` changed) and a full CLIP
  state dict (`pretrained` is that file), as eg_encoders.debug.write_open_clip_vit writes;
- Whisper: a `{"dims", "model_state_dict"}` checkpoint, as released (and as eg_encoders.debug writes);
- sentence-transformers: the model folder of offline.write_hub_model (published config, `layers` changed),
  its weights left for transformers to initialize;
- Qwen2: the same folder with random bf16 weights for every decoder layer (so bitsandbytes quantizes them
  at load, as it does the real checkpoint); embeddings and head are left for transformers to initialize
  (1.1 B parameters that writing would only copy).
`build_real` builds a variant through the apps' own builders (apps.alignment.build, apps.qa.build, 8-bit
through bitsandbytes itself), `real_step` measures training steps of it with the plan's measure_steps.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from apps.planning import measure
from apps.planning import model as planned_model
from apps.planning.architectures import HUB_MODELS, WHISPER_DIMS
from apps.planning.offline import write_hub_model

REPO = Path(__file__).resolve().parents[2]
SEED = 0


@dataclass
class Variant:
    """A written variant: its YAML, the stage-1 YAML its towers come from (stage 2), and what was cut."""

    name: str
    config: str
    stage1_config: str | None
    description: str


def _open_clip(model_name: str, folder: Path, layers: int) -> dict[str, str]:
    """open_clip `model_name` with `layers` vision blocks (text tower 1 layer: unused by the vision tower)."""
    import open_clip

    cfg = copy.deepcopy(open_clip.get_model_config(model_name))
    cfg["vision_cfg"]["layers"] = layers
    cfg["text_cfg"]["layers"] = 1
    name = f"{model_name}-l{layers}"
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / f"{name}.json"
    config_file.write_text(json.dumps(cfg, indent=2))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        clip = open_clip.CLIP(**cfg)
    checkpoint = folder / f"{name}.pt"
    torch.save(clip.state_dict(), checkpoint)
    return {"model_name": name, "pretrained": str(checkpoint), "model_config_file": str(config_file)}


def _whisper(model_name: str, folder: Path, layers: int) -> str:
    """A Whisper checkpoint with `model_name`'s published encoder dims and `layers` encoder layers."""
    from whisper.model import ModelDimensions, Whisper

    mels, ctx, state, heads, _ = WHISPER_DIMS[model_name]
    dims = ModelDimensions(
        n_mels=mels,
        n_audio_ctx=ctx,
        n_audio_state=state,
        n_audio_head=heads,
        n_audio_layer=layers,
        n_vocab=64,  # the text decoder is never read by the audio tower: kept tiny
        n_text_ctx=8,
        n_text_state=64,
        n_text_head=2,
        n_text_layer=1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        whisper = Whisper(dims)
        whisper.decoder.positional_embedding.data.normal_(0.0, 0.02)  # whisper leaves it torch.empty
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"whisper-{model_name}-l{layers}.pt"
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": whisper.state_dict()}, path)
    return str(path)


def _hub_model(name: str, folder: Path, layers: int) -> str:
    """The hub model `name` with `layers` layers; a causal LM gets random bf16 decoder-layer weights."""
    hub = HUB_MODELS[name]
    cut = dataclasses.replace(hub, config={**hub.config, "num_hidden_layers": layers})
    target = folder / f"{name.replace('/', '--')}-l{layers}"
    write_hub_model(name, cut, target)
    if hub.kind == "causal_lm":
        from safetensors.torch import save_file
        from transformers import AutoConfig, AutoModelForCausalLM

        with torch.device("meta"):
            shapes = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(target))).state_dict()
        generator = torch.Generator().manual_seed(SEED)
        state = {}
        for key, tensor in shapes.items():
            if not key.startswith("model.layers."):
                continue
            if tensor.dim() == 2:  # (out, in) linear weights: Qwen2's initializer_range
                state[key] = (torch.randn(tensor.shape, generator=generator) * 0.02).to(torch.bfloat16)
            else:  # RMSNorm weights 1, biases 0 (what transformers' init sets)
                fill = 1.0 if key.endswith("layernorm.weight") else 0.0
                state[key] = torch.full(tensor.shape, fill, dtype=torch.bfloat16)
        save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    return str(target)


def _cut_towers(raw: dict[str, Any], folder: Path, layers: int, whisper: str | None) -> list[str]:
    said = []
    model = raw["model"]
    for name in ("vision", "audio", "text"):
        tower = model.get(name)
        if not tower:
            continue
        encoder = tower["encoder"]
        if name == "vision":
            encoder.update(_open_clip(encoder["model_name"], folder / "vision", layers))
            said.append(f"{encoder['model_name']}")
        elif name == "audio":
            source = whisper or encoder["model_name"]
            encoder["model_name"] = _whisper(source, folder / "audio", layers)
            said.append(f"Whisper {source} encoder x{layers}")
        else:
            said.append(f"{encoder['model_name']} x{layers}")
            encoder["model_name"] = _hub_model(encoder["model_name"], folder / "text", layers)
    return said


def write_variant(
    name: str,
    folder: Path,
    layers: int = 2,
    batch_size: int = 2,
    whisper: str | None = None,
    max_length: int | None = None,
    precision: str | None = None,
) -> Variant:
    """configs/<name>.yaml cut to `layers` blocks per backbone at batch `batch_size`, written under `folder`.

    `whisper` swaps the audio tower's Whisper size (e.g. large-v3 for its 128 mel bins); `max_length`
    caps a Qwen decoder's question + answer tokens; `precision` replaces train.precision (fp32: CPU autocast
    to bf16 spends most of a real step in aten::copy_). A stage-2 config gets its stage-1 config (the one its
    checkpoint path names) cut the same way, and a checkpoint path that does not exist.
    """
    raw = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    raw["experiment_name"] = f"{name}_l{layers}"
    raw["data"]["train"]["batch_size"] = batch_size
    if precision:
        raw["train"]["precision"] = precision
    stage1 = None
    if raw.get("stage", "alignment") == "qa":
        stage1_name = Path(raw["stage1"]["checkpoint"]).parent.name
        stage1 = write_variant(
            stage1_name, folder / "stage1", layers, batch_size, whisper, precision=precision
        )
        raw["stage1"]["checkpoint"] = str(folder / "stage1" / "not_trained.pt")
        decoder = raw["model"]["decoder"]
        said = [f"towers of {stage1.description.split('; batch')[0]}"]
        if decoder["type"] == "qwen":
            qwen = decoder["qwen"]
            said.append(f"{qwen['model_name']} x{layers}, {qwen.get('quantization', 'none')}, LoRA")
            qwen["model_name"] = _hub_model(qwen["model_name"], folder / "decoder", layers)
            qwen["device"] = "cpu"
            if max_length:
                qwen["max_length"] = max_length
                said.append(f"max_length {max_length}")
    else:
        said = _cut_towers(raw, folder, layers, whisper)
    path = folder / f"{name}_l{layers}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    description = f"{name}: " + ", ".join(said) + f"; batch {batch_size}, {raw['train']['precision']}"
    return Variant(name, str(path), stage1.config if stage1 else None, description)


def build_real(variant: Variant, notes: list[str] | None = None) -> planned_model.PlannedModel:
    """The variant's model with real weights, through the apps' builders (8-bit through bitsandbytes)."""
    from apps.common.cli import stage_of

    notes = [] if notes is None else notes
    _, cfg = stage_of(variant.config, [])
    with tempfile.TemporaryDirectory(prefix="eg-truncated-") as work:
        if getattr(cfg, "stage", "alignment") == "qa":
            stage1 = planned_model.stage1_config_of(cfg, variant.stage1_config, notes)
            return planned_model.build_qa(cfg, stage1, Path(work), notes, real=True)
        return planned_model.build_alignment(cfg, Path(work), notes, real=True)


def real_step(
    planned: planned_model.PlannedModel, batch_size: int, num_steps: int = 2, count_flops: bool = True
) -> measure.StepMeasure:
    """`num_steps` real training steps on the CPU at `batch_size`, measured as the plan measures its fake one."""
    return measure.measure_steps(
        planned.model,
        planned.train,
        planned.param_groups,
        planned.components,
        lambda size, step: planned_model.make_batch(planned, size, step),
        batch_size,
        torch.device("cpu"),
        num_steps=num_steps,
        count_flops=count_flops,
    )
