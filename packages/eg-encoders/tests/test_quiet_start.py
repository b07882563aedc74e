"""A stage-1 process (encoders, and the losses and resampler where installed) imports no bitsandbytes and
prints nothing at all while it writes and builds the debug encoders (no third-party warning about weights
it does load, no transformers progress bar); a later `import bitsandbytes` still works, and the progress
bars are on again after the loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys, tempfile
    import eg_encoders
    from eg_encoders import AudioEncoderConfig, TextEncoderConfig, VisionEncoderConfig, debug
    optional = [m for m in ("eg_losses", "eg_resampler") if importlib.util.find_spec(m)]
    for name in optional:
        __import__(name)
    from transformers.utils import logging as hf_logging
    bars_before = hf_logging.is_progress_bar_enabled()
    root = tempfile.mkdtemp()
    encoders = [
        VisionEncoderConfig(**debug.write_open_clip_vit(root + "/vision")).build(),
        VisionEncoderConfig(**debug.write_hf_clip_vision(root + "/hf_vision")).build(),
        AudioEncoderConfig(**debug.write_whisper(root + "/audio")).build(),
        TextEncoderConfig(**debug.write_sentence_transformer(root + "/text")).build(),
    ]
    encoders[3](["a photo"])
    result = {
        "bitsandbytes_imported": "bitsandbytes" in sys.modules,
        "peft_imported": "peft" in sys.modules,
        "bitsandbytes_installed": importlib.util.find_spec("bitsandbytes") is not None,
        "optional": optional,
        "progress_bars": [bars_before, hf_logging.is_progress_bar_enabled()],
    }
    print("STAGE1-DONE", file=sys.stderr, flush=True)
    print("STAGE1-DONE", flush=True)
    if result["bitsandbytes_installed"]:
        import bitsandbytes  # unmarked again after sentence-transformers loaded
        result["bitsandbytes_later"] = "bitsandbytes" in sys.modules
    if result["peft_imported"]:
        import peft.import_utils
        result["peft_sees_bitsandbytes"] = peft.import_utils.is_bnb_available()
    print("RESULT " + json.dumps(result))
    """
)


def test_stage1_imports_and_debug_encoders_leave_bitsandbytes_out(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    stage1_log = done.stderr.split("STAGE1-DONE")[0]
    assert result["bitsandbytes_imported"] is False, result
    # nothing at all: no open_clip "No pretrained weights loaded" for a file it does load, no bitsandbytes
    # `kernels` warning, no "Loading weights" / "Writing model shards" bars of transformers
    assert stage1_log == "", stage1_log[-2000:]
    assert done.stdout.split("STAGE1-DONE")[0] == "", done.stdout[-2000:]
    assert result["progress_bars"] == [True, True]  # silenced for our loads only, then restored
    if result["bitsandbytes_installed"]:
        assert result["bitsandbytes_later"] is True
    if result["peft_imported"]:  # the workspace: peft came in through transformers, bitsandbytes did not
        assert result["peft_sees_bitsandbytes"] is result["bitsandbytes_installed"]


def test_quiet_progress_bars_restores_the_previous_state_even_on_error():
    from eg_encoders.common import quiet_progress_bars
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    try:
        hf_logging.enable_progress_bar()
        with pytest.raises(RuntimeError), quiet_progress_bars():
            assert hf_logging.is_progress_bar_enabled() is False
            raise RuntimeError("a failed load")
        assert hf_logging.is_progress_bar_enabled() is True
        hf_logging.disable_progress_bar()  # the user turned them off: they stay off
        with quiet_progress_bars():
            assert hf_logging.is_progress_bar_enabled() is False
        assert hf_logging.is_progress_bar_enabled() is False
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()
