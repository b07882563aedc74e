"""The stage-1 demo's tiny backbones come from eg-encoders' writers alone: what `apps.alignment.demo_models`
writes is byte for byte what `eg_encoders.debug` writes with the same settings, written once, and rewritten
(only the part whose settings changed) when a setting changes."""

from __future__ import annotations

from pathlib import Path

from eg_encoders import debug

from apps.alignment.demo_models import DemoModelsConfig, write_text, write_vision_audio

CAPTIONS = ["a red square", "a blue circle", "a red square", "the sound of rain"]
SMALL = {
    "image_size": 16,
    "vision_width": 32,
    "vision_layers": 1,
    "audio_width": 32,
    "audio_layers": 1,
    "text_width": 32,
    "text_layers": 1,
    "n_audio_ctx": 50,
}


def files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (the manifest left out) by relative path."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "demo_models.json"
    }


def write_demo(cfg: DemoModelsConfig) -> None:
    write_vision_audio(cfg)
    write_text(cfg, CAPTIONS)


def test_the_demo_writes_what_eg_encoders_writes(tmp_path: Path) -> None:
    cfg = DemoModelsConfig(dir=str(tmp_path / "demo"), seed=3, **SMALL)
    write_demo(cfg)
    direct = tmp_path / "direct"
    debug.write_open_clip_vit(str(direct / "vision"), seed=3, image_size=16, patch_size=8, width=32, layers=1)
    debug.write_whisper(str(direct / "audio"), seed=3, n_mels=80, n_audio_ctx=50, width=32, layers=1)
    debug.write_sentence_transformer(
        str(direct / "text"), seed=3, texts=sorted(set(CAPTIONS)), width=32, layers=1
    )
    demo, want = files(tmp_path / "demo"), files(direct)
    assert sorted(demo) == sorted(want)
    assert "vision/eg-debug-vit-i16-p8-w32-l1.pt" in demo and "audio/eg-debug-whisper.pt" in demo
    assert [name for name in demo if demo[name] != want[name]] == []


def test_written_once_and_rewritten_when_a_setting_changes(tmp_path: Path) -> None:
    cfg = DemoModelsConfig(dir=str(tmp_path), seed=0, **SMALL)
    write_demo(cfg)
    first = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    before = files(tmp_path)
    write_demo(cfg)  # the same settings: nothing is written again
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == first
    write_demo(DemoModelsConfig(dir=str(tmp_path), seed=1, **SMALL))  # another seed: every part anew
    after = files(tmp_path)
    assert sorted(after) == sorted(before)
    changed = sorted(name for name in after if after[name] != before[name])
    assert "vision/eg-debug-vit-i16-p8-w32-l1.pt" in changed and "audio/eg-debug-whisper.pt" in changed
    assert any(name.startswith("text/") and name.endswith(".safetensors") for name in changed), changed
