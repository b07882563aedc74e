"""apps/export of stage-2 checkpoints (tiny TRM from the `qa_checkpoint` fixture, a tiny 8-bit LoRA'd Qwen
trained 2 steps here): the folder rebuilds the QA model alone and answers every held-out QA pair with every
prefix as the checkpoint does; the Qwen adapter is peft's own format (PeftModel.from_pretrained loads it);
export -> reload -> re-save gives the same safetensors bytes; bad input is one line, exit 2."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from eg_data import read_all
from eg_train import load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qa_helpers import REPO, TRAIN_SCRIPT, qa_config, run_app, write_config

pytestmark = pytest.mark.slow
EXPORT_SCRIPT = REPO / "apps" / "export" / "__main__.py"
VARIANTS = {"image+audio": ("image", "audio"), "image": ("image",), "audio": ("audio",), "blind": ()}


def export(checkpoint: Path, out: Path, cwd: Path) -> None:
    done = run_app(EXPORT_SCRIPT, ["--checkpoint", str(checkpoint), "--out", str(out)], cwd)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def qwen_checkpoint(tmp_path_factory: pytest.TempPathFactory, qa_space: dict) -> Path:
    """configs/demo_qa_qwen.yaml at tiny size (8-bit base, LoRA on all linear layers) trained 2 steps."""
    root = tmp_path_factory.mktemp("qa_qwen_export")
    cfg = qa_config(qa_space, "qwen", root, **{"train.max_steps": 2, "train.val_every": 2})
    done = run_app(TRAIN_SCRIPT, ["--config", str(write_config(root, cfg, "qa_qwen.yaml"))], root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "checkpoints" / cfg["experiment_name"] / "checkpoint_latest.pt"


def items(test_dir: Path, files: Path) -> list[tuple[dict[str, Any], str]]:
    """(item without media, key) of every QA pair of the split, the sample's image and audio as files."""
    out = []
    for sample in read_all(test_dir):
        key = sample["__key__"]
        for ext in ("png", "flac"):
            (files / f"{key}.{ext}").write_bytes(sample[ext])
        turns = json.loads(sample["json"])["conversations"]
        for human, _ in zip(turns[::2], turns[1::2]):
            question = human["value"].replace("<image>", "").replace("<audio>", "").strip()
            out.append(({"question": question}, key))
    return out


def answers(assistant: Any, pairs: list, files: Path) -> dict[str, list[str]]:
    """Every variant's answers to every pair."""
    media = {"image": "png", "audio": "flac"}
    return {
        variant: assistant.answer_many(
            [{**item, **{m: files / f"{key}.{media[m]}" for m in names}} for item, key in pairs]
        )
        for variant, names in VARIANTS.items()
    }


def check_same_answers(checkpoint: Path, out: Path, test_dir: Path, tmp: Path) -> dict[str, list[str]]:
    from apps.qa.export import load_exported_qa
    from apps.qa.load import QAAssistant, load_qa

    files = tmp / "inputs"
    files.mkdir()
    pairs = items(test_dir, files)
    assert len(pairs) >= 11
    expected = answers(load_qa(checkpoint), pairs, files)
    model, aligned, cfg = load_exported_qa(out)
    got = answers(QAAssistant(cfg, model, aligned, str(out), 0), pairs, files)
    assert got == expected
    assert len({a for v in expected.values() for a in v}) > 1  # not one answer for everything
    return got


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.safetensors"))
        if p.relative_to(folder).parts[0] not in ("base", "backbones")  # copied files, not written
    }


def test_trm_export_answers_as_the_checkpoint_and_resaves_the_same_bytes(
    qa_checkpoint: dict, tmp_path: Path
) -> None:
    from apps.qa.export import load_exported_qa, save_stage2_weights

    out = tmp_path / "trm"
    export(qa_checkpoint["checkpoint"], out, qa_checkpoint["root"])
    assert {"model.safetensors", "projector.safetensors", "decoder.safetensors", "qa_config.json"} <= {
        p.name for p in out.iterdir()
    }
    assert "## Stage 2: question answering" in (out / "README.md").read_text()
    check_same_answers(qa_checkpoint["checkpoint"], out, qa_checkpoint["test"], tmp_path)
    model, _, _ = load_exported_qa(out)
    again = tmp_path / "again"
    again.mkdir()
    save_stage2_weights(model, again)
    first = digests(out)
    assert {k: v for k, v in first.items() if k != "model.safetensors"} == digests(again) != {}
    twice = tmp_path / "twice"
    export(qa_checkpoint["checkpoint"], twice, qa_checkpoint["root"])
    assert digests(twice) == first


def test_qwen_adapter_loads_with_peft_and_answers_as_the_checkpoint(
    qwen_checkpoint: Path, qa_space: dict, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from apps.qa.export import load_exported_qa, save_stage2_weights

    out = tmp_path / "qwen"
    export(qwen_checkpoint, out, qwen_checkpoint.parents[2])
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    # peft alone loads the adapter onto the base (no project code): the LoRA weights are the checkpoint's
    base = AutoModelForCausalLM.from_pretrained(str(out / "base"))
    peft_model = PeftModel.from_pretrained(base, str(out / "adapter"))
    state = load_checkpoint(qwen_checkpoint)["model"]
    lora = {k: v for k, v in state.items() if "lora_" in k}
    assert lora
    loaded = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(lora)
    for key, value in lora.items():
        name = key.removeprefix("decoder.model.").replace(".default", "")
        match = [v for k, v in loaded.items() if k.replace(".default", "") == name]
        assert len(match) == 1, key
        torch.testing.assert_close(match[0], value, atol=0, rtol=0)
    check_same_answers(qwen_checkpoint, out, qa_space["test"], tmp_path)
    model, _, _ = load_exported_qa(out)
    again = tmp_path / "again"
    again.mkdir()
    save_stage2_weights(model, again)
    assert {k: v for k, v in digests(out).items() if k != "model.safetensors"} == digests(again) != {}


def test_bad_input_is_one_line_exit_2(qa_checkpoint: dict, tmp_path: Path) -> None:
    out = tmp_path / "trm"
    export(qa_checkpoint["checkpoint"], out, qa_checkpoint["root"])
    from apps.qa.export import QAExportError, load_exported_qa

    (out / "decoder.safetensors").unlink()
    with pytest.raises(QAExportError, match="decoder.safetensors: missing"):
        load_exported_qa(out)
    from safetensors.torch import load_file, save_file

    proj = load_file(str(out / "projector.safetensors"))
    key = min(proj)
    proj[key] = torch.zeros(3, 3)
    save_file(proj, str(out / "projector.safetensors"))
    with pytest.raises(QAExportError, match=f"projector.safetensors: {key} has shape"):
        load_exported_qa(out)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    done = run_app(EXPORT_SCRIPT, ["--checkpoint", str(garbage), "--out", str(tmp_path / "x")], tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "garbage.pt" in done.stderr
