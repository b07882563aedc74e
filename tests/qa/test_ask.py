"""load_qa and apps/ask on a tiny stage-2 checkpoint trained through the app (the `qa_checkpoint` fixture):
answers equal those the app's own evaluation wrote to eval.json, row by row and prefix by prefix; the CLI
prints them, one-shot and --interactive; bad input is one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from eg_data import read_all

from apps.alignment.embed import read_audio, read_image
from apps.qa import load_qa
from apps.qa.ask import ask_main, one_line
from apps.qa.build import qa_loader_config
from apps.qa.evaluate import qa_eval_loader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qa_helpers import REPO, app_env

ASK_SCRIPT = REPO / "apps" / "ask" / "__main__.py"
PREFIX_INPUTS = {"image+audio": ("image", "audio"), "image": ("image",), "audio": ("audio",), "blind": ()}


@pytest.fixture(scope="module")
def asked(qa_checkpoint: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The evaluation's rows, the test samples' image and audio written out as files, and the loaded model."""
    files = tmp_path_factory.mktemp("ask_inputs")
    inputs: dict[str, dict[str, Path]] = {}
    for sample in read_all(qa_checkpoint["test"]):
        key = sample["__key__"]
        inputs[key] = {}
        for ext, name in (("png", "image"), ("flac", "audio")):
            path = files / f"{key}.{ext}"
            path.write_bytes(sample[ext])  # the shard's own bytes: what the evaluation loader decoded
            inputs[key][name] = path
    report = json.loads(qa_checkpoint["eval"].read_text())
    assert len(report["rows"]) == report["num_pairs"] == 66  # every row of the split (eval.num_rows)
    return {"rows": report["rows"], "inputs": inputs, "assistant": load_qa(qa_checkpoint["checkpoint"])}


def items_of(row: dict[str, Any], inputs: dict[str, dict[str, Path]], variant: str) -> dict[str, Any]:
    return {"question": row["question"], **{m: inputs[row["key"]][m] for m in PREFIX_INPUTS[variant]}}


@pytest.mark.slow  # the session's tiny stage-1 and stage-2 runs
def test_answers_equal_the_evaluations_for_every_row_and_prefix(asked: dict) -> None:
    assistant, rows, inputs = asked["assistant"], asked["rows"], asked["inputs"]
    assert assistant.modalities == ["vision", "audio"] and assistant.inputs == ["image", "audio"]
    for variant in PREFIX_INPUTS:
        expected = [row["generated"][variant] for row in rows]
        got = assistant.answer_many([items_of(row, inputs, variant) for row in rows])
        assert got == expected, variant
    answers = {row["generated"]["image+audio"] for row in rows}
    assert len(answers) > 1, answers  # the prefix matters: not one answer for everything
    # one question at a time (batches of one) and a PIL image / 16 kHz wave give the same answers
    for row in rows[::13]:
        files = inputs[row["key"]]
        pil, wave = read_image(files["image"], "image"), read_audio(files["audio"], "audio")
        assert assistant.answer(row["question"], image=pil, audio=wave) == row["generated"]["image+audio"]
        assert assistant.answer(row["question"], audio=files["audio"]) == row["generated"]["audio"]
        assert assistant.answer(row["question"]) == row["generated"]["blind"]


@pytest.mark.slow
def test_inputs_equal_the_evaluation_loaders_tensors(asked: dict, qa_checkpoint: dict) -> None:
    """The prepared image and log-mel of a sample equal the evaluation loader's batch rows for it; audio
    longer than the encoder's context is cut as the loader cuts it, with a warning."""
    assistant = asked["assistant"]
    loader_cfg = qa_loader_config(assistant.config, assistant.aligned.towers)
    loader = qa_eval_loader(loader_cfg, str(qa_checkpoint["test"]), 4, "test")
    batch = next(iter(loader))
    for i in (0, len(batch["key"]) - 1):
        files = asked["inputs"][batch["key"][i]]
        prepared = assistant.prepare(batch["question"][i], files["image"], files["audio"])
        assert torch.equal(prepared.image, batch["image"][i])
        assert torch.equal(prepared.audio[0], batch["audio"][i])
        assert torch.equal(prepared.audio[1], batch["audio_mask"][i])
    seconds = assistant.audio_config.n_samples / 16000
    with pytest.warns(
        UserWarning, match=f"lasts {seconds + 1:.1f} s; the model hears its first {seconds:.1f} s"
    ):
        assistant.prepare("q", audio=np.full(assistant.audio_config.n_samples + 16000, 0.1, np.float32))


def run_ask(args: list[str], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ASK_SCRIPT), *args],
        input=stdin,
        check=False,
        cwd=cwd,
        env=app_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_cli_prints_the_answer_and_interactive_answers_every_line(
    asked: dict, qa_checkpoint: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rows, inputs = asked["rows"], asked["inputs"]
    checkpoint = str(qa_checkpoint["checkpoint"])
    row = rows[7]
    files = inputs[row["key"]]
    one = ["--checkpoint", checkpoint, "--image", str(files["image"]), "--audio", str(files["audio"])]
    assert ask_main([*one, row["question"]]) == 0  # in-process: the CLI's code path, without a start-up
    assert capsys.readouterr().out == one_line(row["generated"]["image+audio"]) + "\n"
    assert one_line("a\nb\u2028c\x85d é") == "a\\nb\\u2028c\\x85d é"  # one output line per answer

    # --interactive through the script: one process, one load, every line answered
    picked = rows[1::9]
    script, expected = [], []
    for i, row in enumerate(picked):  # switch inputs between questions; one refused line midway
        variant = list(PREFIX_INPUTS)[i % 4]
        files = inputs[row["key"]]
        for name in ("image", "audio"):
            script.append(f":{name} {files[name]}" if name in PREFIX_INPUTS[variant] else f":{name}")
        script.append(row["question"])
        expected.append(one_line(row["generated"][variant]))
        if i == 2:
            script += ["# a comment, then a missing file", f":image {tmp_path / 'gone.png'}", ""]
    done = run_ask(["--checkpoint", checkpoint, "--interactive"], tmp_path, "\n".join(script) + "\n")
    assert done.returncode == 2, done.stderr[-3000:]  # one line was refused; the others were answered
    assert done.stdout.splitlines() == expected and len(expected) >= 7
    assert done.stderr.strip().splitlines() == [f"error: image {str(tmp_path / 'gone.png')!r} does not exist"]


def with_config(checkpoint: Path, out: Path, change: Any) -> Path:
    """A copy of a checkpoint with its stored run config changed by `change(state)`."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    change(state)
    torch.save(state, out)
    return out


def vision_only(state: dict[str, Any]) -> None:
    """The model without its audio prefix: model.modalities [vision] and no audio projector or tower state (a valid
    stage-2 checkpoint of a vision-only model, the weights it shares with the trained one)."""
    state["run_config"]["model"]["modalities"] = ["vision"]
    state["model"] = {
        k: v for k, v in state["model"].items() if not k.startswith(("projectors.audio.", "towers.audio."))
    }


def perturb_a_tower_weight(state: dict[str, Any]) -> None:
    """Add 1e-3 to the first floating tower weight of a stage-1 checkpoint: same shapes, other weights."""
    name = next(k for k, v in state["model"].items() if k.startswith("towers.") and v.is_floating_point())
    state["model"][name] = state["model"][name] + 1e-3


@pytest.mark.slow
def test_bad_input_is_one_line_naming_it_and_exit_2(
    asked: dict, qa_space: dict, qa_checkpoint: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    checkpoint = qa_checkpoint["checkpoint"]
    files = next(iter(asked["inputs"].values()))
    gone_stage1 = str(tmp_path / "stage1_moved.pt")
    moved = with_config(
        checkpoint,
        tmp_path / "moved.pt",
        lambda s: s["run_config"]["stage1"].update(checkpoint=gone_stage1),
    )
    # Another stage-1 model of the same shapes (one tower weight changed) where the trained one was.
    other_stage1 = with_config(qa_space["checkpoint"], tmp_path / "stage1_other.pt", perturb_a_tower_weight)
    swapped = with_config(
        checkpoint,
        tmp_path / "swapped.pt",
        lambda s: s["run_config"]["stage1"].update(checkpoint=str(other_stage1)),
    )
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image")
    only_vision = with_config(checkpoint, tmp_path / "vision_only.pt", vision_only)
    cases = {
        "missing checkpoint": (
            ["--checkpoint", str(tmp_path / "none.pt")],
            [str(tmp_path / "none.pt"), "does not exist"],
        ),
        "stage-1 checkpoint": (
            ["--checkpoint", str(qa_space["checkpoint"])],
            [str(qa_space["checkpoint"]), "is a stage-1 (alignment) checkpoint", "stage-2 (QA) checkpoint"],
        ),
        "stage-1 checkpoint gone": (
            ["--checkpoint", str(moved)],
            [str(moved), repr(gone_stage1), "does not exist"],
        ),
        "another stage-1 model": (
            ["--checkpoint", str(swapped)],
            ["stage1.fingerprint=", str(other_stage1), "not the stage-1 model this config was trained on"],
        ),
        "missing image": (
            ["--checkpoint", str(checkpoint), "--image", str(tmp_path / "no.png")],
            [f"image {str(tmp_path / 'no.png')!r} does not exist"],
        ),
        "unreadable image": (
            ["--checkpoint", str(checkpoint), "--image", str(garbage)],
            [f"image {str(garbage)!r} is not a readable image"],
        ),
        "missing audio": (
            ["--checkpoint", str(checkpoint), "--audio", str(tmp_path / "no.flac")],
            [f"audio {str(tmp_path / 'no.flac')!r} does not exist"],
        ),
        "unreadable audio": (
            ["--checkpoint", str(checkpoint), "--audio", str(garbage)],
            [f"audio {str(garbage)!r} is not readable audio"],
        ),
        "audio for a model without audio": (
            [
                "--checkpoint",
                str(only_vision),
                "--image",
                str(files["image"]),
                "--audio",
                str(files["audio"]),
            ],
            [str(only_vision), "trained without audio", str(files["audio"])],
        ),
    }
    for case, (args, needles) in cases.items():
        capsys.readouterr()
        assert ask_main([*args, "which digit is this?"]) == 2, case
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert captured.out == "" and len(lines) == 1 and lines[0].startswith("error: "), (case, captured)
        assert all(n in lines[0] for n in needles), (case, lines[0])
    # the vision-only model answers with its image (the weights it kept are the trained ones)
    row = asked["rows"][0]
    assert (
        load_qa(only_vision).answer(row["question"], image=asked["inputs"][row["key"]]["image"])
        == (row["generated"]["image"])
    )
