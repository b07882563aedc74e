"""Shared fixtures: tiny random-init backbones written once per session in their real on-disk formats."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from eg_encoders import debug


@pytest.fixture(scope="session")
def open_clip_files(tmp_path_factory) -> dict[str, str]:
    return debug.write_open_clip_vit(str(tmp_path_factory.mktemp("open_clip")), seed=0)


@pytest.fixture(scope="session")
def open_clip_clip_files(tmp_path_factory) -> dict[str, str]:
    """A tiny open_clip CLIP whose text tower reads open_clip's own tokenizer (both towers usable)."""
    return debug.write_open_clip_clip(str(tmp_path_factory.mktemp("open_clip_clip")), seed=0)


@pytest.fixture(scope="session")
def hf_clip_files(tmp_path_factory) -> dict[str, str]:
    return debug.write_hf_clip_vision(str(tmp_path_factory.mktemp("hf_clip")), seed=0)


@pytest.fixture(scope="session")
def whisper_files(tmp_path_factory) -> dict[str, str]:
    return debug.write_whisper(str(tmp_path_factory.mktemp("whisper")), seed=0)


@pytest.fixture(scope="session")
def sbert_files(tmp_path_factory) -> dict[str, str]:
    return debug.write_sentence_transformer(str(tmp_path_factory.mktemp("sbert")), seed=0)
