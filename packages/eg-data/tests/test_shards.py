"""Shard writing, the per-shard count index, and the round trip of every field."""

import json
import tarfile

import pytest
from eg_data import DataError, ShardWriter, load_index, read_all


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
