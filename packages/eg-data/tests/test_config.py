"""Config contract: every config dataclass refuses a bad value when constructed, with one line that starts
with the key relative to that dataclass; MISSING ("???") is tolerated; `LoaderConfig.build()` makes the
loader. Optional features: a missing extra is one DataError naming it, and importing eg_data loads none
of the extras' libraries."""

import subprocess
import sys

import pytest
from eg_data import (
    AudioTransformConfig,
    DataError,
    DownloadConfig,
    ImageTransformConfig,
    LoaderConfig,
    ShardLoader,
    Speaker,
    Voice,
    build_demo_dataset,
    download_urls,
    read_url_list,
)

BAD = [
    (LoaderConfig, {"batch_size": 0}, "batch_size must be >= 1, got 0"),
    (LoaderConfig, {"num_workers": -1}, "num_workers must be >= 0, got -1"),
    (LoaderConfig, {"shuffle_buffer": 0}, "shuffle_buffer must be >= 1, got 0"),
    (LoaderConfig, {"text_dropout": 1.0}, "text_dropout must be in [0, 1), got 1.0"),
    (LoaderConfig, {"max_bad_fraction": 1.5}, "max_bad_fraction must be in [0, 1], got 1.5"),
    (LoaderConfig, {"mode": "test"}, "mode must be one of ['train', 'eval'], got 'test'"),
    (LoaderConfig, {"qa_pairs": "some"}, "qa_pairs must be one of ['sample', 'first', 'all'], got 'some'"),
    (LoaderConfig, {"shard_dir": ""}, "shard_dir is empty; name a folder of .tar shards"),
    (
        LoaderConfig,
        {"modalities": ["image", "smell"]},
        "modalities has unknown modality 'smell'; use ['image', 'audio', 'text', 'qa', 'conversation']",
    ),
    (
        LoaderConfig,
        {"modalities": ["image"], "required": ["image", "text"]},
        "required has 'text', which is not in modalities ['image']",
    ),
    (LoaderConfig, {"qa_pairs": "all"}, "qa_pairs 'all' needs mode 'eval': one row per QA pair"),
    (ImageTransformConfig, {"size": 0}, "size must be >= 1, got 0"),
    (ImageTransformConfig, {"mean": [0.5, 0.5]}, "mean must have 3 values (R, G, B), got [0.5, 0.5]"),
    (ImageTransformConfig, {"std": [0.5, 0.0, 0.5]}, "std must be > 0 per channel, got [0.5, 0.0, 0.5]"),
    (ImageTransformConfig, {"crop_scale_min": 0.0}, "crop_scale_min must be in (0, 1], got 0.0"),
    (AudioTransformConfig, {"n_mels": 64}, "n_mels must be 80 or 128 (whisper's filter banks), got 64"),
    (AudioTransformConfig, {"n_samples": 100}, "n_samples must be >= 160 (one mel frame at 16 kHz), got 100"),
    (DownloadConfig, {"num_threads": 0}, "num_threads must be >= 1, got 0"),
    (DownloadConfig, {"samples_per_shard": 0}, "samples_per_shard must be >= 1, got 0"),
    (DownloadConfig, {"timeout_s": 0.0}, "timeout_s must be > 0, got 0.0"),
    (DownloadConfig, {"retries": -1}, "retries must be >= 0, got -1"),
    (DownloadConfig, {"url_col": ""}, "url_col is empty; name the column holding the URLs"),
    (Voice, {"pitch": 120}, "pitch must be in [0, 99], got 120"),
    (Voice, {"rate": 0}, "rate must be > 0 words per minute, got 0"),
]


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"), BAD, ids=[f"{c.__name__}-{next(iter(k))}" for c, k, _ in BAD]
)
def test_bad_values_are_refused_at_construction(cls, kwargs, message):
    with pytest.raises(DataError) as info:
        cls(**kwargs)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_defaults_are_valid_and_missing_values_are_tolerated():
    for cls in (LoaderConfig, ImageTransformConfig, AudioTransformConfig, DownloadConfig, Voice):
        cls()
    LoaderConfig(batch_size="???", mode="???", modalities="???", required="???", max_bad_fraction="???")
    ImageTransformConfig(size="???", mean="???", std=[0.5, "???", 0.5])
    AudioTransformConfig(n_mels="???", n_samples="???")
    DownloadConfig(num_threads="???", timeout_s="???")


def test_nested_configs_are_checked_under_their_key(shard_set):
    cfg = LoaderConfig(shard_dir=str(shard_set(1, 4)), batch_size=2)
    cfg.image.size = 0  # changed after construction: the loader checks again, naming the nested key
    with pytest.raises(DataError, match=r"^image\.size must be >= 1, got 0$"):
        ShardLoader(cfg)
    with pytest.raises(DataError, match=r"^image\.size must be >= 1, got 0$"):
        cfg.validate()


def test_build_makes_the_loader(shard_set):
    cfg = LoaderConfig(shard_dir=str(shard_set(1, 4)), batch_size=2, image=ImageTransformConfig(size=8))
    loader = cfg.build()
    assert isinstance(loader, ShardLoader) and loader.cfg is cfg and len(loader) == 2
    other = cfg.build(rank=1, world_size=2)
    assert len(other) == 1 and other.dataset.rank == 1


def _block(monkeypatch, *modules):
    """Make `import m` fail as if the package were not installed."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_a_missing_demo_extra_is_one_line_naming_it(monkeypatch, tmp_path):
    _block(monkeypatch, "sklearn", "sklearn.datasets", "sklearn.model_selection")
    with pytest.raises(
        DataError, match=r"needs sklearn, which is not installed; pip install 'eg-data\[demo\]'$"
    ):
        build_demo_dataset(tmp_path / "demo")
    _block(monkeypatch, "espeakng_loader")
    from eg_data import speech

    monkeypatch.setattr(speech, "_ENGINE", None)  # a Speaker made earlier in this process loaded the library
    with pytest.raises(
        DataError, match=r"^Speaker .*needs espeakng_loader, .*pip install 'eg-data\[demo\]'$"
    ):
        Speaker()


def test_a_missing_download_extra_is_one_line_naming_it(monkeypatch, tmp_path):
    listing = tmp_path / "list.jsonl"
    listing.write_text('{"image_url": "http://127.0.0.1:9/x.png", "caption": "c"}\n')
    _block(monkeypatch, "httpx")
    with pytest.raises(DataError, match=r"^download_urls needs httpx, .*pip install 'eg-data\[download\]'$"):
        download_urls(listing, tmp_path / "out")
    (tmp_path / "list.parquet").write_bytes(b"PAR1")
    _block(monkeypatch, "pyarrow", "pyarrow.parquet")
    with pytest.raises(DataError, match=r"parquet url list needs pyarrow, .*'eg-data\[download\]'$"):
        read_url_list(tmp_path / "list.parquet", DownloadConfig())


def test_importing_eg_data_loads_no_optional_library():
    code = (
        "import sys, eg_data\n"
        "print([m for m in ('sklearn', 'espeakng_loader', 'httpx', 'pyarrow', 'whisper') if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"  # whisper too: imported on the first audio sample
