"""The core install (torch only) builds, trains and reloads TRM and the tiny baseline without importing the
Qwen libraries; the Qwen decoder without its extra fails in one line naming the extra."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap

import eg_decoders
import pytest
from eg_decoders import DecoderError, QwenDecoderConfig

EXTRA = r"pip install 'eg-decoders\[qwen\]'$"

SCRIPT = textwrap.dedent(
    """
    import json, sys, tempfile
    import torch
    from eg_decoders import TinyDecoderConfig, TRMConfig, load_decoder
    small = dict(hidden_size=32, num_layers=1, num_heads=2, max_seq_len=64, prefix_dim=8)
    decoders = [TRMConfig(n_latent_steps=1, n_cycles=1, num_supervision_steps=1, **small).build(),
                TinyDecoderConfig(**small).build()]
    rows = []
    for decoder in decoders:
        batch = decoder.encode_qa(["q?"], ["a"])
        decoder(torch.randn(1, 2, 8), **batch).loss.backward()
        path = tempfile.mkdtemp()
        decoder.save(path)
        rows.append(type(load_decoder(path)).__name__)
    heavy = [m for m in ("transformers", "peft", "bitsandbytes", "accelerate") if m in sys.modules]
    print("RESULT " + json.dumps({"loaded": rows, "heavy": heavy}))
    """
)


def test_small_decoders_import_no_qwen_library():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], check=False, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    assert result == {"loaded": ["TRMDecoder", "TinyDecoder"], "heavy": []}


@pytest.mark.parametrize(
    ("absent", "quantization"),
    [
        (["transformers", "peft"], "none"),
        (["peft"], "none"),
        (["bitsandbytes"], "4bit"),
        (["bitsandbytes", "accelerate"], "8bit"),
    ],
)
def test_qwen_build_without_the_extra_is_one_line_naming_it(monkeypatch, absent, quantization):
    for module in absent:
        monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails as if not installed
    # named: the simulated ones, and any other the Qwen path needs that is really not installed (core-only)
    needed = ["transformers", "peft"] + (["bitsandbytes", "accelerate"] if quantization != "none" else [])
    named = ", ".join(m for m in needed if m in absent or importlib.util.find_spec(m) is None)
    config = QwenDecoderConfig(model_name="/nonexistent/model", quantization=quantization)
    with pytest.raises(DecoderError, match=rf"^type 'qwen' needs {named} \(not installed\): {EXTRA}") as err:
        config.build()
    assert "\n" not in str(err.value)


def test_unquantized_qwen_does_not_ask_for_bitsandbytes(monkeypatch):
    """bitsandbytes and accelerate serve only 8/4-bit loading; without them the build goes on to the model."""
    pytest.importorskip("transformers", reason="needs the extra: pip install 'eg-decoders[qwen]'")
    pytest.importorskip("peft", reason="needs the extra: pip install 'eg-decoders[qwen]'")
    for module in ("bitsandbytes", "accelerate"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(DecoderError, match="^model_name '/nonexistent/model' could not be loaded"):
        QwenDecoderConfig(model_name="/nonexistent/model").build()


def test_qwen_decoder_class_without_the_extra_names_it(monkeypatch):
    monkeypatch.delitem(sys.modules, "eg_decoders.qwen", raising=False)
    monkeypatch.setitem(sys.modules, "peft", None)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(
        ImportError, match=rf"^QwenDecoder needs transformers, peft \(not installed\): {EXTRA}"
    ):
        eg_decoders.QwenDecoder  # noqa: B018
