"""ONNX for the edge: each tower of an `AlignedEncoders` up to its L2-normalized embedding at one Matryoshka
dim, written with `torch.onnx.export` (dynamic batch), plus an int8 dynamically quantized copy
(`onnxruntime.quantization.quantize_dynamic`). Needs this package's `onnx` extra.

Inputs of the graphs (what a caller feeds onnxruntime, no torch needed):
- vision_<dim>.onnx: `pixels` float32 (B, 3, S, S), preprocessed as config.json's towers.vision.preprocess.
- audio_<dim>.onnx: `mel` float32 (B, n_mels, n_frames) whisper log-mels of the padded clip and `mask`
  bool (B, n_frames); the graph runs on all n_frames (no trimming of common padding: attention is masked,
  so this changes the result only by rounding).
- text_<dim>.onnx: `input_ids`, `attention_mask` int64 (B, L) from backbones/text/tokenizer.json (the
  `tokenizers` library), sentence-transformers backends only.
Each graph returns `embedding` float32 (B, dim), unit norm.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eg_encoders.common import EncoderError

ONNX_INSTALL = "pip install 'eg-encoders[onnx]'"
OPSET = 17


class _Embedding(nn.Module):
    """A tower's tensors -> (B, dim) normalized embedding, with tensor-only inputs for tracing."""

    def __init__(self, tower: nn.Module, dim: int) -> None:
        super().__init__()
        self.tower, self.dim = tower, dim

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        name = self.tower.name
        if name == "vision":
            z = self.tower({"image": inputs[0]})
        elif name == "audio":
            z = self.tower({"audio": inputs[0], "audio_mask": inputs[1]})
        else:
            ids, mask = inputs
            features = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
            pooled = self.tower.encoder.model(features)["sentence_embedding"]  # (B, D)
            z = self.tower.projection(pooled.float())
        return F.normalize(z[:, : self.dim], dim=-1)  # (B, dim)


def example_inputs(model: Any, modality: str, batch: int = 2) -> dict[str, torch.Tensor]:
    """Inputs of the right shapes and types for `modality` (tracing and tests)."""
    if modality == "vision":
        size = model.image_preprocess.size
        return {"pixels": torch.randn(batch, 3, size, size)}
    if modality == "audio":
        spec = model.audio_preprocess
        mask = torch.ones(batch, spec.n_frames, dtype=torch.bool)
        mask[1:, spec.n_frames // 2 :] = False
        return {"mel": torch.randn(batch, spec.n_mels, spec.n_frames) * 0.5, "mask": mask}
    return text_features(model, (["a small seven", "two"] * batch)[:batch])


def text_features(model: Any, texts: list[str]) -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask` (B, L) int64 of the text tower's own tokenizer (padded to the longest)."""
    features = model.towers["text"].encoder.tokenize(list(texts))
    return {"input_ids": features["input_ids"], "attention_mask": features["attention_mask"]}


def export_onnx(model: Any, out_dir: str | os.PathLike, dim: int) -> dict[str, Path]:
    """Write `<modality>_<dim>.onnx` for every tower of `model` (an AlignedEncoders) into `out_dir`."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise EncoderError(f"ONNX export needs the onnx extra: {ONNX_INSTALL}") from None
    dim = model.check_dim(dim)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, tower in model.towers.items():
        if name == "text" and getattr(tower.encoder.config, "backend", "") != "sentence_transformers":
            raise EncoderError("ONNX export of an open_clip text tower is not supported yet")
        inputs = example_inputs(model, name)
        path = out / f"{name}_{dim}.onnx"
        audio_cfg = getattr(tower.encoder.config, "trim_padding", None)
        fastpath = torch.backends.mha.get_fastpath_enabled()
        if name == "audio":
            tower.encoder.config.trim_padding = False  # data-dependent slicing: not a fixed graph
        try:
            dynamic = {k: {0: "batch"} for k in inputs} | {"embedding": {0: "batch"}}
            if name == "text":
                dynamic |= {k: {0: "batch", 1: "length"} for k in inputs}
            # nn.MultiheadAttention's inference fast path is one fused op ONNX has no symbol for
            torch.backends.mha.set_fastpath_enabled(False)
            # the TorchScript exporter warns about every traced shape and indexing op: none applies here
            # (inputs are non-negative indices, batch and length are the dynamic axes), so keep it quiet
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    _Embedding(tower, dim).eval(),
                    tuple(inputs.values()),
                    str(path),
                    input_names=list(inputs),
                    output_names=["embedding"],
                    dynamic_axes=dynamic,
                    opset_version=OPSET,
                    dynamo=False,
                )
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
            if name == "audio":
                tower.encoder.config.trim_padding = audio_cfg
        written[name] = path
    return written


def quantize_int8(path: str | os.PathLike) -> Path:
    """`<name>.onnx` -> `<name>.int8.onnx`: weights int8, activations quantized dynamically (onnxruntime)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = Path(path)
    target = path.with_suffix(".int8.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" notice concerns static quantization only
    try:
        quantize_dynamic(str(path), str(target), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return target


def run_onnx(path: str | os.PathLike, inputs: dict[str, Any]) -> Any:
    """The (B, dim) numpy embeddings of one graph under onnxruntime's CPU provider."""
    import numpy as np
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # errors only: keep onnxruntime's notices out of the terminal
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {k: (v.numpy() if torch.is_tensor(v) else np.asarray(v)) for k, v in inputs.items()}
    return session.run(["embedding"], feed)[0]
