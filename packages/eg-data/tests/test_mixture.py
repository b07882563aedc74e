"""Mixtures of sources (`LoaderConfig.sources`, `MixtureLoader`): the config contract, the sampling ratio
against the weights, presence masks per source, every source read as a continuous stream (each sample
once per pass), exact resume (tensors compared with the uninterrupted run's), equal batches and the same
source draw on every rank, and the bad-sample report per source."""

import re

import numpy as np
import pytest
import torch
from eg_data import (
    AudioTransformConfig,
    DataError,
    ImageTransformConfig,
    LoaderConfig,
    MixtureLoader,
    ShardWriter,
    SourceConfig,
)

IMAGE = ImageTransformConfig(size=8)
AUDIO = AudioTransformConfig(n_samples=1600)


def write_source(root, make_sample, prefix: str, num: int, keep: tuple[str, ...], per_shard: int = 4):
    """`num` samples keyed `{prefix}{i}` holding only the members of `keep` (image, audio, text)."""
    with ShardWriter(root, per_shard) as writer:
        for i in range(num):
            sample = make_sample(i, key=f"{prefix}{i:03d}")
            for name in ("image", "audio", "text"):
                if name not in keep:
                    sample.pop(name)
            writer.write(sample)
    return str(root)


@pytest.fixture
def two_sources(tmp_path, make_sample):
    """An image-text source (12 samples) and an audio-text source (8 samples)."""
    return (
        write_source(tmp_path / "it", make_sample, "it", 12, ("image", "text")),
        write_source(tmp_path / "at", make_sample, "at", 8, ("audio", "text")),
    )


def mixture(paths, weights=(0.5, 0.5), **kw) -> LoaderConfig:
    sources = [
        SourceConfig(shard_dir=paths[0], modalities=["image", "text"], weight=weights[0], name="image_text"),
        SourceConfig(shard_dir=paths[1], modalities=["audio", "text"], weight=weights[1], name="audio_text"),
    ]
    settings = {
        "batch_size": 2,
        "modalities": ["image", "audio", "text"],
        "required": ["text"],
        "shuffle_buffer": 4,
        "image": IMAGE,
        "audio": AUDIO,
        "sources": sources,
    }
    settings.update(kw)
    return LoaderConfig(**settings)


def source_of(batch) -> str:
    """Which source a batch came from, read from its presence masks (and checked against its keys)."""
    image, audio = bool(batch["image_present"].any()), bool(batch["audio_present"].any())
    assert image != audio and batch["text_present"].all()
    name = "image_text" if image else "audio_text"
    assert all(key.startswith(name[0] + name[6]) for key in batch["key"])  # "it..." / "at..."
    return name


def epoch_batches(loader, epoch: int, start: int = 0) -> list[dict]:
    loader.set_epoch(epoch, start)
    return [{k: v.clone() if torch.is_tensor(v) else list(v) for k, v in b.items()} for b in loader]


def test_config_contract(two_sources):
    cfg = mixture(two_sources)
    assert cfg.shard_dir == ""  # the default folder is not read by a mixture
    assert isinstance(cfg.build(), MixtureLoader)
    assert cfg.sources_with("image", "text") == ["image_text"]
    assert cfg.sources_with("audio", "text") == ["audio_text"]
    assert cfg.sources_with("image", "audio") == []
    per_source = cfg.source_configs()
    assert per_source["audio_text"].required == ["audio", "text"] and not per_source["audio_text"].sources
    assert LoaderConfig(shard_dir="x", modalities=["image", "text"]).sources_with("image", "text") == ["x"]
    source = {"shard_dir": two_sources[0], "modalities": ["image", "text"]}
    for change, message in (
        ({"shard_dir": "elsewhere"}, "shard_dir ('elsewhere') and sources are both set"),
        ({"mode": "eval"}, "mode 'eval' with sources: a mixture is for training"),
        ({"required": ["image", "text"]}, "required has 'image', which source 'audio_text' (sources[1])"),
        ({"modalities": ["qa"], "required": []}, "sources[0].modalities ['image', 'text'] has none of"),
        (
            {"sources": [SourceConfig(**source, name="a"), SourceConfig(**source, name="a")]},
            "sources[1].name 'a' is also sources[0]'s",
        ),
    ):
        with pytest.raises(DataError, match=f"^{re.escape(message)}"):
            mixture(two_sources, **change)
    for kwargs, message in (
        ({"weight": 0}, "weight must be > 0, got 0"),
        ({"modalities": ["smell"]}, "modalities must list what the source's samples have"),
        ({"shard_dir": ""}, "shard_dir is empty"),
    ):
        with pytest.raises(DataError, match=f"^{re.escape(message)}"):
            SourceConfig(**{**source, **kwargs})
    assert SourceConfig().shard_dir == "???"  # required: omegaconf reports it unset, construction allows it
    with pytest.raises(DataError, match="MixtureLoader"):
        from eg_data import ShardLoader

        ShardLoader(cfg)


def test_sampling_ratio_follows_the_weights(two_sources):
    cfg = mixture(two_sources, weights=(3.0, 1.0))
    loader = cfg.build()
    assert len(loader) == 6 + 4  # an epoch: as many batches as the sources hold together
    counts = {"image_text": 0, "audio_text": 0}
    for epoch in range(40):
        loader.set_epoch(epoch)
        for batch in loader:
            counts[source_of(batch)] += 1
    total = sum(counts.values())
    assert total == 400
    # 400 draws with p = 0.75: standard deviation 0.022, so 3 sigma is 0.065
    assert abs(counts["image_text"] / total - 0.75) < 0.065, counts
    draws = np.concatenate([loader.draws(epoch) for epoch in range(2000)])  # 20,000 draws
    assert abs((draws == 0).mean() - 0.75) < 0.01


def test_each_source_is_one_stream_of_its_own_epochs(two_sources):
    """Every sample of a source is read once before any is read again, across mixture epochs."""
    loader = mixture(two_sources, weights=(1.0, 4.0)).build()
    seen = {"image_text": [], "audio_text": []}
    for epoch in range(4):
        loader.set_epoch(epoch)
        for batch in loader:
            seen[source_of(batch)] += batch["key"]
    for name, size in (("image_text", 12), ("audio_text", 8)):
        keys = seen[name]
        for start in range(0, len(keys) - size + 1, size):
            assert len(set(keys[start : start + size])) == size, (name, keys)  # each pass: all, once
    assert len(seen["audio_text"]) > 8 * 2  # the heavy small source was cycled several times


def test_presence_masks_mark_what_each_source_has(two_sources):
    loader = mixture(two_sources).build()
    for batch in epoch_batches(loader, 0):
        if source_of(batch) == "image_text":
            assert batch["image"].abs().sum() > 0 and not batch["audio_present"].any()
            assert batch["audio"].abs().sum() == 0 and not batch["audio_mask"].any()
        else:
            assert batch["audio"].abs().sum() > 0 and batch["audio_mask"].any()
            assert not batch["image_present"].any() and batch["image"].abs().sum() == 0


@pytest.mark.parametrize("num_workers", [0, 1])
def test_exact_resume_mid_epoch(two_sources, num_workers):
    """Batches after set_epoch(e, j) on a fresh loader equal the uninterrupted run's, tensors and keys,
    in the middle of an epoch and at the start of a later one (positions carried across epochs)."""
    cfg = mixture(two_sources, weights=(1.0, 2.0), num_workers=num_workers)
    uninterrupted = cfg.build()
    reference = [epoch_batches(uninterrupted, epoch) for epoch in range(3)]
    for epoch, start in ((0, 3), (1, 5), (2, 0), (2, 7)):
        resumed = epoch_batches(cfg.build(), epoch, start)
        expected = reference[epoch][start:]
        assert len(resumed) == len(expected) > 0
        for got, want in zip(resumed, expected):
            assert got["key"] == want["key"]
            for name in ("image", "audio", "audio_mask", "image_present", "audio_present", "text_present"):
                assert torch.equal(got[name], want[name]), (epoch, start, name)


def test_equal_batches_and_the_same_draws_on_every_rank(two_sources):
    cfg = mixture(two_sources, batch_size=1)
    ranks = [cfg.build(rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 6 + 4
    batches = [epoch_batches(loader, 1) for loader in ranks]
    assert [source_of(b) for b in batches[0]] == [source_of(b) for b in batches[1]]
    keys = [{k for b in rank for k in b["key"]} for rank in batches]
    assert not keys[0] & keys[1]  # the ranks read disjoint samples


def test_bad_samples_are_reported_per_source(tmp_path, make_sample):
    good = write_source(tmp_path / "it", make_sample, "it", 8, ("image", "text"))
    with ShardWriter(tmp_path / "at", 4) as writer:
        for i in range(8):
            sample = make_sample(i, key=f"at{i:03d}")
            sample.pop("image")
            if i == 5:
                sample["audio"] = b"not audio"
            writer.write(sample)
    cfg = mixture((good, str(tmp_path / "at")), weights=(1.0, 3.0), batch_size=2)
    loader = cfg.build()
    full = epoch_batches(loader, 0)
    # at005 is left out of its batch: the audio batches one row short are the reads of it
    passes = sum(len(b["key"]) == 1 for b in full if source_of(b) == "audio_text")
    assert passes >= 1 and all(len(b["key"]) == 2 for b in full if source_of(b) == "image_text")
    report = loader.data_report()
    assert report["bad"]["audio_decode"] == passes and report["examples"]["audio_decode"] == "at005"
    assert report["samples"] == 2 * len(full)
    per_source = loader.source_reports()
    assert per_source["audio_text"]["bad"]["audio_decode"] == passes
    assert per_source["image_text"]["bad"]["audio_decode"] == 0
    # after a resume the report covers the batches delivered since (eg-train adds the saved part back)
    resumed = cfg.build()
    rest = epoch_batches(resumed, 0, 4)
    assert resumed.data_report()["samples"] == 2 * len(rest)


def _reports_until_stop(loader, epoch: int, start: int, restore=None, epochs: int = 3):
    """From (epoch, start) to the DataError or the end of `epochs`: [(epoch, batch index, data_report(),
    source_reports()) after each batch], and the error message or None."""
    got = []
    for e in range(epoch, epochs):
        loader.set_epoch(e, start if e == epoch else 0)
        if restore is not None and e == epoch:
            loader.restore_data_report(restore)
        try:
            for j, _ in enumerate(loader, start=start if e == epoch else 0):
                got.append((e, j + 1, loader.data_report(), loader.source_reports()))
        except DataError as error:
            return got, str(error)
    return got, None


@pytest.mark.parametrize(
    ("num_bad", "weights"),
    [
        (7, (2.0, 1.0)),  # 7 of 8 audio samples bad: the source's pass stops the run in epoch 1
        (4, (1.0, 3.0)),  # 4 of 8 (not > 0.5): no stop; passes end and begin inside the epochs
    ],
)
def test_a_resumed_mixture_reports_and_stops_like_the_uninterrupted_one(
    tmp_path, make_sample, num_bad, weights
):
    good = write_source(tmp_path / "it", make_sample, "it", 12, ("image", "text"))
    with ShardWriter(tmp_path / "at", 4) as writer:
        for i in range(8):
            sample = make_sample(i, key=f"at{i:03d}")
            sample.pop("image")
            if i < num_bad:
                sample["audio"] = b"not audio"
            writer.write(sample)
    cfg = mixture((good, str(tmp_path / "at")), weights=weights, batch_size=2)
    full, stop = _reports_until_stop(cfg.build(), 0, 0)
    assert (stop is not None) == (num_bad == 7) and any(r["bad"]["audio_decode"] for _, _, r, _ in full)
    if stop:
        assert "max_bad_fraction" in stop and [pos[:2] for pos in full][-2:] == [(1, 1), (1, 2)]
    # resumed after every batch delivered (not at an epoch's end: the next epoch starts with nothing)
    differs = 0
    for n, (epoch, start, report, _) in enumerate(full[:-1]):
        if start == len(cfg.build()):
            continue
        resumed = cfg.build()
        assert _reports_until_stop(resumed, epoch, start, restore=report) == (full[n + 1 :], stop), (
            epoch,
            start,
        )
        differs += _reports_until_stop(cfg.build(), epoch, start) != (full[n + 1 :], stop)
    assert differs > 0  # without restore_data_report the reports (and the stop) change
    resumed = cfg.build()
    resumed.set_epoch(0, 3)
    with pytest.raises(DataError, match="a restored mixture data report needs 'source_passes'"):
        resumed.restore_data_report({"samples": 6, "bad": {}, "examples": {}})
