"""Shared fixtures for eg-data tests: tiny synthetic samples and shard sets written to tmp dirs."""

import io

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

# The test machine is shared: one intra-op thread keeps STFTs from thrashing (workers use one too).
torch.set_num_threads(1)


def png_bytes(seed: int, size: int = 16) -> bytes:
    """A random RGB PNG."""
    arr = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def flac_bytes(seconds: float, rate: int = 8000, freq: float = 440.0) -> bytes:
    """A sine tone as FLAC at `rate` (not 16 kHz, so the reader must resample)."""
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    soundfile.write(buf, 0.5 * np.sin(2 * np.pi * freq * t), rate, format="FLAC")
    return buf.getvalue()


def make_sample(i: int, **overrides) -> dict:
    """Sample `i` in ShardWriter's format: image, caption, audio and json (label, two QA pairs)."""
    sample = {
        "key": f"s{i:04d}",
        "image": png_bytes(i),
        "image_ext": "png",
        "text": f"caption number {i}",
        "audio": flac_bytes(0.1 + 0.01 * (i % 10)),
        "audio_ext": "flac",
        "json": {
            "label": i % 10,
            "qa": [{"question": f"q{i}a", "answer": f"a{i}a"}, {"question": f"q{i}b", "answer": f"a{i}b"}],
        },
    }
    sample.update(overrides)
    return sample


@pytest.fixture(name="make_sample", scope="session")
def make_sample_fixture():
    """The `make_sample` factory (test modules cannot import conftest under importlib mode)."""
    return make_sample


@pytest.fixture(name="flac_bytes")
def flac_bytes_fixture():
    """The `flac_bytes` factory."""
    return flac_bytes


@pytest.fixture
def shard_set(tmp_path):
    """Factory: write `num_shards` x `per_shard` good samples; returns the directory."""

    def build(num_shards: int = 3, per_shard: int = 12, name: str = "shards"):
        from eg_data import ShardWriter

        out = tmp_path / name
        with ShardWriter(out, per_shard) as writer:
            for i in range(num_shards * per_shard):
                writer.write(make_sample(i))
        return out

    return build
