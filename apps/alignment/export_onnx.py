"""`apps/export --onnx [--dim D]`: the towers of an export folder as ONNX graphs (fp32 and int8 dynamic
quantization, eg_encoders.onnx_export) under DIR/onnx/, with their agreement measured on the held-out split:
R@1 of every pair direction at that dim with PyTorch, onnxruntime fp32 and onnxruntime int8, the largest
fp32 - PyTorch difference and the file sizes, written to DIR/onnx/report.json and printed.

The split's samples are preprocessed once by eg-encoders (`preprocess`: the export's own path), then fed
to all three; a sample lacking one of the model's modalities is left out and counted.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from eg_encoders import AlignedEncoders
from eg_encoders.onnx_export import export_onnx, quantize_int8, run_onnx, text_features
from eg_encoders.preprocess import as_wave, audio_log_mel, image_pixels
from PIL import Image

from apps.common.config import ConfigError
from apps.common.retrieval import evaluate_retrieval

BATCH = 64


def split_inputs(model: AlignedEncoders, split_dir: str) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """Graph inputs of every sample of `split_dir` that has all the model's modalities, in batches of
    BATCH: {modality: [feed dict]}, and the number of samples left out."""
    from eg_data import read_all
    from eg_data.transforms import decode_audio

    if not Path(split_dir).is_dir():
        raise ConfigError(f"--split-dir {split_dir!r} does not exist")
    need = {"vision": "png", "audio": "flac", "text": "txt"}
    samples = [s for s in read_all(split_dir) if all(need[m] in s for m in model.modalities)]
    skipped = len(read_all(split_dir)) - len(samples)
    feeds: dict[str, list[dict[str, Any]]] = {m: [] for m in model.modalities}
    for start in range(0, len(samples), BATCH):
        chunk = samples[start : start + BATCH]
        if "vision" in feeds:
            spec = model.image_preprocess
            pixels = torch.empty(len(chunk), 3, spec.size, spec.size)  # (B, 3, S, S)
            for i, s in enumerate(chunk):
                image_pixels(Image.open(io.BytesIO(s["png"])).convert("RGB"), spec, out=pixels[i])
            feeds["vision"].append({"pixels": pixels})
        if "audio" in feeds:
            mels, masks = zip(
                *(audio_log_mel(as_wave(decode_audio(s["flac"])), model.audio_preprocess) for s in chunk)
            )
            feeds["audio"].append({"mel": torch.stack(mels), "mask": torch.stack(masks)})  # (B, M, F), (B, F)
        if "text" in feeds:
            texts = [s["txt"].decode() if isinstance(s["txt"], bytes) else str(s["txt"]) for s in chunk]
            feeds["text"].append(text_features(model, texts))
    return feeds, skipped


def _torch_embed(model: AlignedEncoders, modality: str, feed: dict[str, Any], dim: int) -> torch.Tensor:
    from eg_encoders.onnx_export import _Embedding

    with torch.no_grad():
        return _Embedding(model.towers[modality], dim).eval()(*feed.values())


def onnx_report(folder: str | Path, split_dir: str, dim: int | None) -> dict[str, Any]:
    """Write DIR/onnx/<modality>_<dim>{,.int8}.onnx and report.json; returns the report."""
    model = AlignedEncoders.from_pretrained(folder)
    dim = model.check_dim(dim if dim is not None else model.dims[0])
    out = Path(folder) / "onnx"
    fp32 = export_onnx(model, out, dim)
    int8 = {name: quantize_int8(path) for name, path in fp32.items()}
    feeds, skipped = split_inputs(model, split_dir)
    variants = {"torch": {}, "onnx_fp32": {}, "onnx_int8": {}}
    for name in model.modalities:
        variants["torch"][name] = torch.cat([_torch_embed(model, name, f, dim) for f in feeds[name]])
        variants["onnx_fp32"][name] = torch.from_numpy(
            np.concatenate([run_onnx(fp32[name], f) for f in feeds[name]])
        )
        variants["onnx_int8"][name] = torch.from_numpy(
            np.concatenate([run_onnx(int8[name], f) for f in feeds[name]])
        )
    count = len(next(iter(variants["torch"].values())))
    present = {m: torch.ones(count, dtype=torch.bool) for m in model.modalities}
    pairs = model.config.get("pairs", [])
    recall = {}
    for variant, embeddings in variants.items():
        result = evaluate_retrieval(embeddings, present, pairs, [dim])
        recall[variant] = {
            f"{pair}/{direction}": metrics["recall@1"]
            for pair, by_dim in result.items()
            for direction, metrics in by_dim[str(dim)].items()
        }
    report = {
        "dim": dim,
        "split_dir": str(split_dir),
        "samples": count,
        "skipped_samples": skipped,
        "files": {name: _sizes(fp32[name], int8[name]) for name in fp32},
        "max_abs_diff_fp32_vs_torch": {
            name: float((variants["onnx_fp32"][name] - variants["torch"][name]).abs().max()) for name in fp32
        },
        "max_abs_diff_int8_vs_torch": {
            name: float((variants["onnx_int8"][name] - variants["torch"][name]).abs().max()) for name in fp32
        },
        "recall@1": recall,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _sizes(fp32: Path, int8: Path) -> dict[str, Any]:
    return {
        "fp32": str(fp32),
        "fp32_bytes": fp32.stat().st_size,
        "int8": str(int8),
        "int8_bytes": int8.stat().st_size,
    }


def format_report(report: dict[str, Any]) -> str:
    """The printed table: sizes, largest differences and R@1 per direction for torch / fp32 / int8."""
    head = f"ONNX at dim {report['dim']} on {report['split_dir']} ({report['samples']} samples, "
    lines = [head + f"{report['skipped_samples']} without every modality left out)"]
    for name, files in report["files"].items():
        lines.append(
            f"  {name}: fp32 {files['fp32_bytes'] / 1e6:.2f} MB, int8 {files['int8_bytes'] / 1e6:.2f} MB "
            f"({files['int8_bytes'] / files['fp32_bytes']:.2f}x); max |fp32 - torch| "
            f"{report['max_abs_diff_fp32_vs_torch'][name]:.1e}, max |int8 - torch| "
            f"{report['max_abs_diff_int8_vs_torch'][name]:.1e}"
        )
    lines.append(f"  {'R@1':<28} {'torch':>7} {'fp32':>7} {'int8':>7}")
    for key in report["recall@1"]["torch"]:
        row = [report["recall@1"][v][key] for v in ("torch", "onnx_fp32", "onnx_int8")]
        lines.append(f"  {key:<28} {row[0]:>7.3f} {row[1]:>7.3f} {row[2]:>7.3f}")
    return "\n".join(lines)
