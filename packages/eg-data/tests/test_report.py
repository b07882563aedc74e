"""The bad-sample report: every fault counted under its reason with an example, counts that reach the
main process from the workers and cover exactly the batches delivered, and the `max_bad_fraction` stop."""

import re

import pytest
from eg_data import (
    BAD_REASONS,
    DataError,
    ImageTransformConfig,
    LoaderConfig,
    ShardLoader,
    ShardWriter,
    merge_data_reports,
)

IMAGE = ImageTransformConfig(size=8, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])


def make_cfg(root, **kw) -> LoaderConfig:
    kw.setdefault("shuffle", False)
    return LoaderConfig(shard_dir=str(root), image=IMAGE, shuffle_buffer=8, **kw)


def run(loader, epoch=0, start_batch=0):
    loader.set_epoch(epoch, start_batch)
    return list(loader)


TURNS = [{"from": "human", "value": "which digit?"}, {"from": "gpt", "value": "seven"}]


@pytest.fixture
def faulty(tmp_path, make_sample):
    """19 samples with LLaVA turns in shards of 5, 5, 5, 4; 16 bad: one per sample fault, the third shard
    zero bytes, the last one cut inside sample 18."""
    root = tmp_path / "faulty"
    bad = {
        1: {"image": b"garbage bytes"},
        2: {"audio": b"fLaC not really"},
        3: {"text": "   "},
        5: {"image": None},
        6: {"audio": None},
        7: {"text": None},
        8: {"json": {"label": 8}},  # no QA pair
        16: {"json": {"label": 6, "qa": [{"question": "q", "answer": "a"}]}},  # no turns
        17: {"json": {"label": 7, "qa": [{"question": "q", "answer": "a"}], "conversations": TURNS[:1] * 2}},
    }
    with ShardWriter(root, 5) as writer:
        for i in range(19):
            sample = make_sample(i, **bad.get(i, {}))
            if i not in bad:
                sample["json"] = {**sample["json"], "conversations": TURNS}
            writer.write(sample)
    first = root / "shard-00000.tar"
    first.write_bytes(first.read_bytes().replace(b'"label": 4, ', b'"label": 4; ', 1))  # not JSON
    (root / "shard-00002.tar").write_bytes(b"")  # zero bytes: samples 10-14 never arrive
    last = root / "shard-00003.tar"
    data = last.read_bytes()
    last.write_bytes(data[: data.index(b"s0018.flac") + 512 + 100])  # cut inside sample 18's first file
    return root


EXPECTED_BAD = {
    "unreadable_shard": 5,
    "truncated_shard": 1,
    "json_decode": 1,
    "image_decode": 1,
    "audio_decode": 1,
    "empty_caption": 1,
    "missing_image": 1,
    "missing_audio": 1,
    "missing_text": 1,
    "missing_qa": 1,
    "missing_conversation": 1,
    "bad_conversation": 1,
}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_reason_is_counted_with_an_example(faulty, num_workers):
    cfg = make_cfg(
        faulty,
        mode="eval",
        batch_size=2,
        num_workers=num_workers,
        modalities=["image", "audio", "text", "qa", "conversation"],
        required=["image", "audio", "text", "qa", "conversation"],
        max_bad_fraction=1.0,
    )
    loader = ShardLoader(cfg)
    batches = run(loader)
    assert sorted(k for b in batches for k in b["key"]) == ["s0000", "s0009", "s0015"]
    chat = {
        "messages": [{"role": "user", "content": "which digit?"}, {"role": "assistant", "content": "seven"}]
    }
    assert [c for b in batches for c in b["conversation"]] == [{**chat, "media_turn": 0}] * 3
    report = loader.data_report()
    assert set(report["bad"]) == set(BAD_REASONS) == set(EXPECTED_BAD)  # zeros included
    assert report == {
        "samples": 19,
        "bad": EXPECTED_BAD,
        "examples": {
            "unreadable_shard": str(faulty / "shard-00002.tar"),
            "truncated_shard": str(faulty / "shard-00003.tar"),
            "json_decode": "s0004",
            "image_decode": "s0001",
            "audio_decode": "s0002",
            "empty_caption": "s0003",
            "missing_image": "s0005",
            "missing_audio": "s0006",
            "missing_text": "s0007",
            "missing_qa": "s0008",
            "missing_conversation": "s0016",
            "bad_conversation": "s0017",
        },
    }


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_report_covers_exactly_the_delivered_batches(tmp_path, make_sample, num_workers):
    with ShardWriter(tmp_path / "d", 12) as writer:
        for i in range(36):
            writer.write(make_sample(i, audio=None, **({"image": b"junk"} if i % 7 == 3 else {})))
    loader = ShardLoader(
        make_cfg(tmp_path / "d", batch_size=3, num_workers=num_workers, modalities=["image", "text"])
    )
    loader.set_epoch(0)
    assert loader.data_report() == {"samples": 0, "bad": dict.fromkeys(BAD_REASONS, 0), "examples": {}}
    skipped = 0
    for n, batch in enumerate(loader, start=1):  # the workers read ahead; the report does not
        skipped += 3 - len(batch["key"])
        report = loader.data_report()
        assert report["samples"] == 3 * n and report["bad"]["image_decode"] == skipped
    assert skipped == 5 and report["examples"] == {"image_decode": "s0003"}
    run(loader, start_batch=8)  # a resumed epoch: the report starts at the resume point
    assert loader.data_report()["samples"] == 12 and loader.data_report()["bad"]["image_decode"] == 2


def _mostly_bad(root, make_sample, count, bad_every=(0, 1, 2)):
    with ShardWriter(root, 64) as writer:
        for i in range(count):
            over = {"image": b"junk"} if i % 5 in bad_every else {}
            writer.write(make_sample(i, audio=None, **over))
    return root


@pytest.mark.parametrize("num_workers", [0, 2])
def test_max_bad_fraction_stops_a_mostly_bad_epoch(tmp_path, make_sample, num_workers):
    root = _mostly_bad(tmp_path / "d", make_sample, 200)  # 60% garbage images
    cfg = make_cfg(root, batch_size=10, num_workers=num_workers, modalities=["image", "text"])
    loader = ShardLoader(cfg)
    loader.set_epoch(0)
    got = []
    with pytest.raises(DataError) as info:
        for batch in loader:
            got.append(batch)  # noqa: PERF402 (the loop stops by raising: keep what arrived)
    assert len(got) == 9  # judged once 100 samples were read: before the 10th batch is handed over
    assert str(info.value) == (
        f"{root}: 60 of the 100 samples read this epoch are bad (60% > max_bad_fraction 0.5): image_decode 60 (e.g. s0000)"
    )
    relaxed = ShardLoader(make_cfg(root, batch_size=10, modalities=["image", "text"], max_bad_fraction=0.6))
    assert len(run(relaxed)) == 20 and relaxed.data_report()["bad"]["image_decode"] == 120  # 60% is not > 0.6


def test_a_small_epoch_is_judged_once_read_whole(tmp_path, make_sample):
    root = _mostly_bad(tmp_path / "d", make_sample, 10)  # 6 of 10 bad: judged after all 10, not 100
    loader = ShardLoader(make_cfg(root, batch_size=5, modalities=["image", "text"]))
    loader.set_epoch(0)
    batches = iter(loader)
    assert len(next(batches)["key"]) == 2
    with pytest.raises(DataError, match=re.escape("6 of the 10 samples read this epoch are bad (60% >")):
        next(batches)
    ok = _mostly_bad(tmp_path / "ok", make_sample, 10, bad_every=(0, 1))  # 40%
    assert len(run(ShardLoader(make_cfg(ok, batch_size=5, modalities=["image", "text"])))) == 2


def _stop_run(loader, epoch=0, start_batch=0, restore=None):
    """(data_report() after each batch delivered, the DataError message or None) of one epoch."""
    loader.set_epoch(epoch, start_batch)
    if restore is not None:
        loader.restore_data_report(restore)
    reports = []
    try:
        for _ in loader:
            reports.append(loader.data_report())
    except DataError as error:
        return reports, str(error)
    return reports, None


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_resumed_epoch_stops_where_the_uninterrupted_one_does(tmp_path, make_sample, num_workers):
    # 300 samples: 1 in 5 bad up to 150, then all bad; in order, the epoch's fraction passes 0.5 at 250.
    with ShardWriter(tmp_path / "d", 50) as writer:
        for i in range(300):
            junk = i % 5 == 0 or i >= 150
            writer.write(make_sample(i, audio=None, **({"image": b"junk"} if junk else {})))
    cfg = make_cfg(tmp_path / "d", batch_size=10, num_workers=num_workers, modalities=["image", "text"])
    full, stop = _stop_run(ShardLoader(cfg))
    if num_workers == 0:  # with workers the two streams alternate: the late bad half is met earlier
        assert len(full) == 24 and stop == (
            f"{tmp_path / 'd'}: 130 of the 250 samples read this epoch are bad (52% > max_bad_fraction 0.5): "
            "image_decode 130 (e.g. s0000)"
        )
    assert stop is not None and len(full) >= 9
    for k in (len(full) // 3, len(full) // 2, len(full) - 1):  # resumed after k batches, with their counts
        reports, resumed_stop = _stop_run(ShardLoader(cfg), start_batch=k, restore=full[k - 1])
        assert reports == full[k:] and resumed_stop == stop, k
    # without the restored counts the epoch is judged from the resume point: it stops elsewhere
    k = len(full) // 2
    assert _stop_run(ShardLoader(cfg), start_batch=k) != (full[k:], stop)
    # a restore lasts until the next set_epoch; a report of the wrong shape is one line
    loader = ShardLoader(cfg)
    loader.set_epoch(0, 9)
    loader.restore_data_report(full[8])
    assert loader.data_report() == full[8]
    loader.set_epoch(0, 9)
    assert loader.data_report()["samples"] == 0
    with pytest.raises(DataError, match="unknown bad reason\\(s\\) \\['bogus'\\]"):
        loader.restore_data_report({"samples": 3, "bad": {"bogus": 1}, "examples": {}})
    with pytest.raises(DataError, match="a restored data report must be"):
        loader.restore_data_report({"bad": {}})


def test_merge_data_reports_sums_ranks():
    a = {
        "samples": 10,
        "bad": dict.fromkeys(BAD_REASONS, 0) | {"image_decode": 2},
        "examples": {"image_decode": "k1"},
    }
    b = {
        "samples": 7,
        "bad": dict.fromkeys(BAD_REASONS, 0) | {"image_decode": 1, "missing_qa": 3},
        "examples": {},
    }
    b["examples"] = {"image_decode": "k9", "missing_qa": "k4"}
    total = merge_data_reports([a, b])
    assert total["samples"] == 17 and total["bad"]["image_decode"] == 3 and total["bad"]["missing_qa"] == 3
    assert total["examples"] == {"image_decode": "k1", "missing_qa": "k4"}
    assert sum(total["bad"].values()) == 6 and set(total["bad"]) == set(BAD_REASONS)
