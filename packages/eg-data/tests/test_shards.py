"""Shard writing, the per-shard count index, and the round trip of every field."""

import json
import tarfile

import pytest
from eg_data import DataError, ShardWriter, load_index, read_all
from eg_data.shards import _tarfile_samples, iter_raw_samples


def test_round_trip_and_index(tmp_path, make_sample):
    samples = [make_sample(i) for i in range(5)]
    with ShardWriter(tmp_path / "d", max_samples_per_shard=2) as writer:
        for s in samples:
            writer.write(s)
    index = json.loads((tmp_path / "d" / "shards.json").read_text())
    assert [e["num_samples"] for e in index["shards"]] == [2, 2, 1]
    assert index["num_samples"] == 5
    got = read_all(tmp_path / "d")
    assert [g["__key__"] for g in got] == [s["key"] for s in samples]
    for g, s in zip(got, samples):
        assert g["png"] == s["image"]
        assert g["flac"] == s["audio"]
        assert g["txt"].decode() == s["text"]
        assert json.loads(g["json"]) == s["json"]


def test_index_rebuilt_by_scanning_and_from_img2dataset_stats(tmp_path, make_sample):
    with ShardWriter(tmp_path, max_samples_per_shard=3) as writer:
        for i in range(7):
            writer.write(make_sample(i))
    (tmp_path / "shards.json").unlink()
    assert [s.num_samples for s in load_index(tmp_path)] == [3, 3, 1]
    assert (tmp_path / "shards.json").exists()
    (tmp_path / "shards.json").unlink()
    (tmp_path / "shard-00000_stats.json").write_text(json.dumps({"successes": 2}))
    assert load_index(tmp_path)[0].num_samples == 2  # img2dataset's count wins over a scan


def test_shards_are_img2dataset_layout(tmp_path, make_sample):
    with ShardWriter(tmp_path, 10) as writer:
        writer.write(make_sample(0))
    with tarfile.open(tmp_path / "shard-00000.tar") as tar:
        assert sorted(tar.getnames()) == ["s0000.flac", "s0000.json", "s0000.png", "s0000.txt"]


def test_missing_dir_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_index(tmp_path / "nope")
    with pytest.raises(DataError, match="no .tar shards"):
        load_index(tmp_path)


def _read(path, **kw):
    errors = []
    return [(o, s) for o, s in iter_raw_samples(str(path), errors.append, **kw)], errors


def _write(root, samples):
    with ShardWriter(root, len(samples)) as writer:
        for s in samples:
            writer.write(s)
    return root / "shard-00000.tar"


def test_fast_reader_matches_webdataset(tmp_path, make_sample):
    tar = _write(tmp_path, [make_sample(i) for i in range(6)])
    wanted = {1, 2, 5}.__contains__
    fast, errors = _read(tar, wanted=wanted, suffixes={"png", "json"})
    general = list(_tarfile_samples(str(tar), errors.append, wanted, {"png", "json"}))
    assert not errors and fast == general
    assert [o for o, _ in fast] == [1, 2, 5]
    assert sorted(fast[0][1]) == ["__key__", "__url__", "json", "png"]  # flac and txt never read


def test_pax_and_long_names_fall_back_to_tarfile_mid_shard(tmp_path, make_sample):
    keys = ["s0", "s1", "x" * 150, "s3", "k\u00e9y"]  # a 150-char key needs a pax header, so does "é"
    samples = [make_sample(i, key=k) for i, k in enumerate(keys)]
    got, errors = _read(_write(tmp_path, samples))
    assert not errors
    assert [o for o, _ in got] == [0, 1, 2, 3, 4]
    assert [s["__key__"] for _, s in got] == keys
    assert [s["png"] for _, s in got] == [s["image"] for s in samples]


def test_truncated_and_corrupt_tars_keep_what_arrived_whole(tmp_path, make_sample):
    tar = _write(tmp_path, [make_sample(i) for i in range(4)])
    data = tar.read_bytes()
    tar.write_bytes(data[: data.index(b"s0002.png") + 512 + 100])  # inside s0002.png's data
    got, errors = _read(tar)
    assert [o for o, _ in got] == [0, 1, 2] and len(errors) == 1
    assert sorted(got[2][1]) == ["__key__", "__url__", "flac", "json"]  # the cut png is not kept
    assert got[1][1]["png"] == make_sample(1)["image"]
    garbage = data[: data.index(b"s0002.flac")] + b"\x07" * 2048 + data[data.index(b"s0003.flac") :]
    tar.write_bytes(garbage)
    got, errors = _read(tar)
    assert [s["__key__"] for _, s in got] == ["s0000", "s0001"] and len(errors) == 1
