"""One raw sample -> decoded and transformed modalities (or the reason it is bad), and the rows of the
batch dict it becomes: the per-sample tensor layout of a batch, flags, labels and strings."""

from __future__ import annotations

import json
from typing import Any

import torch

from eg_data.conversations import decode_conversation
from eg_data.settings import LoaderSettings
from eg_data.shards import AUDIO_EXTS, IMAGE_EXTS
from eg_data.transforms import (
    decode_audio,
    decode_image,
    drop_text,
    sample_rng,
    transform_audio,
    transform_image,
)

MODALITY_TENSORS = ("image", "audio", "audio_mask")  # (B, ...) each, zeros where a sample has none
PRESENCE = ("image_present", "audio_present", "text_present", "qa_present", "conversation_present")  # (B,)

QAPair = tuple[int, str, str]  # (index among the sample's QA pairs, question, answer)
Row = tuple[dict[str, Any], QAPair | None]  # one batch row: a decoded sample and its QA pair


def _first_ext(raw: dict[str, Any], exts: tuple[str, ...]) -> str | None:
    return next((ext for ext in exts if ext in raw), None)


def _qa_pairs(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """The sample's non-empty QA pairs: json `qa` entries, then a top-level question/answer; ValueError
    when `qa` is not a list of objects."""
    pairs = meta.get("qa", [])
    if not isinstance(pairs, list) or not all(isinstance(p, dict) for p in pairs):
        raise ValueError("qa is not a list of objects")
    pairs = list(pairs)
    if "question" in meta and "answer" in meta:
        pairs.append({"question": meta["question"], "answer": meta["answer"]})
    out = []
    for pair in pairs:
        question, answer = str(pair.get("question", "")).strip(), str(pair.get("answer", "")).strip()
        if question and answer:
            out.append((question, answer))
    return out


def decode_sample(
    raw: dict[str, Any], cfg: LoaderSettings, epoch: int, image_out: torch.Tensor | None = None
) -> tuple[dict[str, Any] | None, str]:
    """Decode and transform one raw sample; returns (sample, "") or (None, bad reason).

    The sample holds `key`, `label` and what it has of `image` (3, H, W), `audio` (n_mels, n_frames) with
    `audio_mask` (n_frames,), `text`, and `qa`: the QA pairs chosen by `cfg.qa_pairs` as
    (index, question, answer) tuples (none, one, or all of them). `image_out` (3, size, size), when
    given, receives the image (a row of the batch buffer).
    """
    key = str(raw["__key__"])
    meta: dict[str, Any] = {}
    label = -1
    if "json" in raw:
        try:
            meta = json.loads(raw["json"])
            if not isinstance(meta, dict):
                return None, "json_decode"
            if "label" in meta:
                label = int(meta["label"])
        except (ValueError, TypeError):  # not JSON, or a label that is not an integer
            return None, "json_decode"
    out: dict[str, Any] = {"key": key, "label": label}
    mods = cfg.modalities
    if "image" in mods:
        ext = _first_ext(raw, IMAGE_EXTS)
        if ext is None:
            if "image" in cfg.required:
                return None, "missing_image"
        else:
            try:
                img = decode_image(raw[ext])
            except Exception:  # noqa: BLE001 (PIL raises many types on garbage bytes)
                return None, "image_decode"
            rng = sample_rng(cfg.seed, epoch, key, "image") if cfg.image.augment else None
            out["image"] = transform_image(img, cfg.image, rng, out=image_out)  # (3, H, W)
    if "audio" in mods:
        ext = _first_ext(raw, AUDIO_EXTS)
        if ext is None:
            if "audio" in cfg.required:
                return None, "missing_audio"
        else:
            try:
                wave = decode_audio(raw[ext])
            except Exception:  # noqa: BLE001 (soundfile/soxr raise several types on corrupt audio)
                return None, "audio_decode"
            out["audio"], out["audio_mask"] = transform_audio(wave, cfg.audio)  # (M, F), (F,)
    if "text" in mods:
        text = raw["txt"].decode("utf-8", errors="replace").strip() if "txt" in raw else None
        if not text:
            if "text" in cfg.required:
                return None, "missing_text" if text is None else "empty_caption"
        elif not drop_text(cfg.seed, epoch, key, cfg.text_dropout):
            out["text"] = text
    out["qa"] = []
    if "qa" in mods:
        try:
            pairs = _qa_pairs(meta)
        except ValueError:
            return None, "json_decode"
        if not pairs:
            if "qa" in cfg.required:
                return None, "missing_qa"
        elif cfg.qa_pairs == "all":
            out["qa"] = [(i, q, a) for i, (q, a) in enumerate(pairs)]
        else:
            pick = (
                0
                if cfg.qa_pairs == "first"
                else int(sample_rng(cfg.seed, epoch, key, "qa").integers(len(pairs)))
            )
            out["qa"] = [(pick, *pairs[pick])]
    out["conversation"] = None
    if "conversation" in mods:  # LLaVA-format turns (conversations.py)
        has = [m for m in ("image", "audio") if m in out]
        out["conversation"], reason = decode_conversation(meta, has, mods, cfg.required)
        if reason:
            return None, reason
    return out, ""


def tensor_fields(cfg: LoaderSettings) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Per-row shape and dtype of each batch tensor (those of the configured modalities, the presence
    masks, the label and the QA pair index)."""
    fields: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    if "image" in cfg.modalities:
        fields["image"] = ((3, cfg.image.size, cfg.image.size), torch.float32)
    if "audio" in cfg.modalities:
        fields["audio"] = ((cfg.audio.n_mels, cfg.audio.n_frames), torch.float32)
        fields["audio_mask"] = ((cfg.audio.n_frames,), torch.bool)
    fields.update({name: ((), torch.bool) for name in PRESENCE})
    fields["label"] = ((), torch.long)
    fields["qa_index"] = ((), torch.long)
    return fields


def row_values(rows: list[Row]) -> dict[str, list[Any]]:
    """Presence flags, labels and QA pair indices of the rows."""
    return {
        "image_present": ["image" in s for s, _ in rows],
        "audio_present": ["audio" in s for s, _ in rows],
        "text_present": ["text" in s for s, _ in rows],  # False also for captions removed by dropout
        "qa_present": [pair is not None for _, pair in rows],
        "conversation_present": [s.get("conversation") is not None for s, _ in rows],
        "label": [s["label"] for s, _ in rows],  # -1 where the data has none
        "qa_index": [-1 if pair is None else pair[0] for _, pair in rows],
    }


def row_strings(rows: list[Row]) -> dict[str, list[Any]]:
    """The string fields of the rows (`""` where absent), and each row's conversation (None where absent)."""
    return {
        "conversation": [s.get("conversation") for s, _ in rows],
        "text": [s.get("text", "") for s, _ in rows],
        "question": ["" if pair is None else pair[1] for _, pair in rows],
        "answer": ["" if pair is None else pair[2] for _, pair in rows],
        "key": [s["key"] for s, _ in rows],
    }


def place(sample: dict[str, Any], buffers: dict[str, torch.Tensor], index: int) -> None:
    """Put a sample's tensors into row `index` of the batch buffers (zeros where it has none); the image
    usually is there already (decoded in place)."""
    for name in MODALITY_TENSORS:  # flags and labels are written per batch
        if name not in buffers:
            continue
        value, row = sample.get(name), buffers[name][index]
        if value is None:
            row.zero_()
        elif value.data_ptr() != row.data_ptr():
            row.copy_(value)
