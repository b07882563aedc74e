"""The loader: contract batch dict, bad samples skipped and counted, determinism, exact mid-epoch resume
with 0 and 2 workers, rank/worker splitting without duplicates, text dropout."""

import numpy as np
import pytest
import torch
from eg_data import (
    AudioTransformConfig,
    DataError,
    ImageTransformConfig,
    LoaderConfig,
    ShardLoader,
    ShardWriter,
    transform_image,
)
from eg_data.order import buffer_order, plan_rng
from eg_data.transforms import decode_image

IMAGE = ImageTransformConfig(size=8, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
AUDIO = AudioTransformConfig(n_mels=80, n_samples=4000)  # 0.25 s: 25 mel frames


def make_cfg(shard_dir, **kw) -> LoaderConfig:
    kw.setdefault("batch_size", 3)
    kw.setdefault("image", IMAGE)
    return LoaderConfig(shard_dir=str(shard_dir), audio=AUDIO, shuffle_buffer=8, **kw)


def epoch_batches(loader, epoch, start_batch=0):
    loader.set_epoch(epoch, start_batch)
    return list(loader)


def keys_of(batches):
    return [k for b in batches for k in b["key"]]


def test_batch_follows_the_contract(shard_set):
    loader = ShardLoader(make_cfg(shard_set(1, 6), batch_size=6, shuffle=False, qa_pairs="first"))
    (batch,) = epoch_batches(loader, 0)
    assert batch["image"].shape == (6, 3, 8, 8) and batch["image"].dtype == torch.float32
    assert batch["audio"].shape == (6, 80, 25) and batch["audio_mask"].shape == (6, 25)
    assert batch["audio_mask"].dtype == torch.bool
    # sample i has 0.1 + 0.01 i seconds of audio: ceil(16000 * dur / 160) valid frames, capped at 25
    assert batch["audio_mask"].sum(1).tolist() == [10, 11, 12, 13, 14, 15]
    assert batch["key"] == [f"s{i:04d}" for i in range(6)]
    assert batch["text"] == [f"caption number {i}" for i in range(6)]
    assert batch["question"] == [f"q{i}a" for i in range(6)]  # qa_pairs "first"
    assert batch["answer"] == [f"a{i}a" for i in range(6)]
    assert batch["qa_index"].tolist() == [0] * 6 and batch["qa_index"].dtype == torch.long
    assert batch["label"].tolist() == list(range(6)) and batch["label"].dtype == torch.long
    for name in ("image_present", "audio_present", "text_present", "qa_present"):
        assert batch[name].dtype == torch.bool and batch[name].all()


def test_bad_samples_are_skipped_and_counted(tmp_path, make_sample, flac_bytes):
    root = tmp_path / "bad"
    with ShardWriter(root, 5) as writer:
        for i in range(5):  # shard 0: garbage image at 1, empty caption at 3
            over = {"image": b"not an image"} if i == 1 else {"text": "  "} if i == 3 else {}
            writer.write(make_sample(i, **over))
        for i in range(5, 10):  # shard 1: undecodable audio at 7
            writer.write(make_sample(i, **({"audio": b"fLaC garbage"} if i == 7 else {})))
        for i in range(10, 15):  # shard 2: cut short below
            writer.write(make_sample(i))
    tar = root / "shard-00002.tar"
    data = tar.read_bytes()
    cut = data.index(b"s0013.flac")  # the header of sample 13's first file (members sort flac first)
    tar.write_bytes(data[: cut - 100])
    loader = ShardLoader(make_cfg(root, batch_size=15, required=["image", "text", "audio"]))
    (batch,) = epoch_batches(loader, 0)
    # images land in the batch buffer in order even when bad samples wrote a slot first
    for key, image in zip(batch["key"], batch["image"]):
        want = transform_image(decode_image(make_sample(int(key[1:]))["image"]), IMAGE)
        assert torch.equal(image, want)
    good = {f"s{i:04d}" for i in (0, 2, 4, 5, 6, 8, 9, 10, 11, 12)}
    assert sorted(batch["key"]) == sorted(good)  # every good sample exactly once
    report = loader.data_report()
    counts = report["bad"]
    assert counts["image_decode"] == 1 and counts["empty_caption"] == 1 and counts["audio_decode"] == 1
    assert counts["truncated_shard"] == 2  # the tar ends after sample 12: 13 and 14 never arrive
    assert report["samples"] == 15 and sum(counts.values()) == 5
    assert report["examples"] == {
        "truncated_shard": str(tar),
        "image_decode": "s0001",
        "audio_decode": "s0007",
        "empty_caption": "s0003",
    }
    # audio not loaded and only the image required: 7 (bad audio) is good, 3 has its text absent
    loader = ShardLoader(make_cfg(root, batch_size=15, modalities=["image", "text"], required=["image"]))
    (batch,) = epoch_batches(loader, 0)
    assert "s0007" in batch["key"] and "s0003" in batch["key"]
    assert not batch["text_present"][batch["key"].index("s0003")]
    assert not batch["audio_present"].any()
    assert "audio" not in batch and "audio_mask" not in batch  # not loaded: no zero tensors built


def test_wholly_bad_batches_keep_the_batch_count(tmp_path, make_sample):
    with ShardWriter(tmp_path / "d", 9) as writer:
        for i in range(9):
            writer.write(make_sample(i, **({"image": b"junk"} if i < 3 or i >= 6 else {})))
    loader = ShardLoader(make_cfg(tmp_path / "d", shuffle=False, max_bad_fraction=1.0))
    batches = epoch_batches(loader, 0)
    assert len(batches) == len(loader) == 3
    assert batches[0]["key"] == [""] and not batches[0]["image_present"].any()  # nothing good yet
    assert batches[1]["key"] == ["s0003", "s0004", "s0005"]
    assert batches[2]["key"] == ["s0005"]  # the last good sample stands in
    report = loader.data_report()
    assert report["bad"]["image_decode"] == 6 and report["samples"] == 9  # stand-ins are not counted


def test_order_is_deterministic_per_epoch(shard_set):
    root = shard_set()
    a, b = ShardLoader(make_cfg(root)), ShardLoader(make_cfg(root))
    assert keys_of(epoch_batches(a, 0)) == keys_of(epoch_batches(b, 0))
    assert keys_of(epoch_batches(a, 0)) != keys_of(epoch_batches(a, 1))
    assert sorted(keys_of(epoch_batches(a, 0))) == sorted(keys_of(epoch_batches(a, 1)))
    assert keys_of(epoch_batches(a, 0)) != sorted(keys_of(epoch_batches(a, 0)))  # actually shuffled
    other_seed = ShardLoader(make_cfg(root, seed=1))
    assert keys_of(epoch_batches(other_seed, 0)) != keys_of(epoch_batches(a, 0))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_epoch_leaves_torchs_global_rng_untouched(shard_set, num_workers):
    """A validation pass between training steps must not shift the model's later random draws (dropout)."""
    loader = ShardLoader(make_cfg(shard_set(2, 6), num_workers=num_workers))
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    batches = epoch_batches(loader, 0)
    assert len(batches) == 4 and torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_yields_exactly_the_rest(shard_set, num_workers):
    root = shard_set(3, 12)
    cfg = make_cfg(
        root,
        num_workers=num_workers,
        text_dropout=0.3,
        image=ImageTransformConfig(size=8, augment=True, crop_scale_min=0.5),
    )
    loader = ShardLoader(cfg)
    full = epoch_batches(loader, 2)
    assert len(full) == len(loader) == 12  # 36 samples / (1 rank x max(1, workers) streams) / batch 3
    for k in (1, 5):
        rest = epoch_batches(loader, 2, start_batch=k)
        assert [b["key"] for b in rest] == [b["key"] for b in full[k:]]
        for got, want in zip(rest, full[k:]):  # same augmentation and dropout draws too
            assert torch.equal(got["image"], want["image"]) and got["text"] == want["text"]
    assert epoch_batches(loader, 2, start_batch=len(loader)) == []


def test_two_ranks_two_workers_three_shards(shard_set, make_sample):
    root = shard_set(3, 11)  # 33 samples over 2 streams (one per rank): 16 each, 1 dropped
    per_rank = []
    for rank in range(2):
        loader = ShardLoader(make_cfg(root, batch_size=2, num_workers=2), rank=rank, world_size=2)
        batches = epoch_batches(loader, 0)
        assert len(batches) == len(loader) == 8
        assert all(len(b["key"]) == 2 for b in batches)
        last = batches[-1]  # crossed the worker boundary in shared memory; same pixels as in-process
        want = transform_image(decode_image(make_sample(int(last["key"][1][1:]))["image"]), IMAGE)
        assert torch.equal(last["image"][1], want)
        per_rank.append(keys_of(batches))
    together = per_rank[0] + per_rank[1]
    assert len(together) == len(set(together)) == 32  # nobody sees a sample twice


def test_text_dropout_marks_dropped_captions(shard_set):
    loader = ShardLoader(make_cfg(shard_set(1, 40), batch_size=40, text_dropout=0.5))
    (a,) = epoch_batches(loader, 0)
    dropped = [k for k, p in zip(a["key"], a["text_present"].tolist()) if not p]
    assert 10 <= len(dropped) <= 30
    assert all(t == "" for t, p in zip(a["text"], a["text_present"].tolist()) if not p)
    assert all(t for t, p in zip(a["text"], a["text_present"].tolist()) if p)
    (again,) = epoch_batches(loader, 0)
    assert [k for k, p in zip(again["key"], again["text_present"].tolist()) if not p] == dropped
    (other,) = epoch_batches(loader, 1)
    assert sorted(k for k, p in zip(other["key"], other["text_present"].tolist()) if not p) != sorted(dropped)


def test_user_errors(shard_set):
    root = shard_set(1, 4)
    with pytest.raises(DataError, match="batch of 8"):
        ShardLoader(make_cfg(root, batch_size=8))
    with pytest.raises(DataError, match="unknown modality"):
        ShardLoader(make_cfg(root, required=["smell"]))
    with pytest.raises(DataError, match="start_batch"):
        ShardLoader(make_cfg(root, batch_size=2)).set_epoch(0, start_batch=5)


def test_buffer_order_is_a_bounded_permutation():
    out = buffer_order(1000, 50, plan_rng(0, 0))
    assert sorted(out.tolist()) == list(range(1000))
    # emitted at step t means read by then: position < t + buffer size
    assert (out < np.arange(1000) + 50).all()
    assert np.abs(out - np.arange(1000)).mean() > 5
