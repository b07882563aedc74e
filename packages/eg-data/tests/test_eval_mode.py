"""Evaluation mode and QA pair choice: every sample of a split exactly once across ranks and workers
whatever the batch size (prime-sized splits over several shards), short last batches and no stand-ins;
`qa_pairs` first / sample / all, with one row per pair (exact row counts, pixels intact across batch
boundaries)."""

import json

import pytest
import torch
from eg_data import DataError, ImageTransformConfig, LoaderConfig, ShardLoader, ShardWriter, transform_image
from eg_data.transforms import decode_image

IMAGE = ImageTransformConfig(size=8, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
FAST = ["image", "text", "qa"]  # audio is not needed here; not reading it keeps the tests quick


def make_cfg(root, **kw) -> LoaderConfig:
    kw.setdefault("modalities", FAST)
    return LoaderConfig(shard_dir=str(root), image=IMAGE, shuffle_buffer=8, **kw)


def run(loader, epoch=0, start_batch=0):
    loader.set_epoch(epoch, start_batch)
    return list(loader)


@pytest.fixture(scope="module")
def prime_splits(tmp_path_factory, make_sample):
    """13 samples over shards of 5, 5, 3 and 199 over 64, 64, 64, 7."""
    out = {}
    for count, per_shard in ((13, 5), (199, 64)):
        root = tmp_path_factory.mktemp(f"split{count}")
        with ShardWriter(root, per_shard) as writer:
            for i in range(count):
                writer.write(make_sample(i, audio=None))
        out[count] = root
    return out


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize(("count", "batch_size"), [(13, 4), (199, 16)])
def test_every_sample_exactly_once(prime_splits, count, batch_size, world_size, num_workers):
    keys = []
    for rank in range(world_size):
        cfg = make_cfg(prime_splits[count], mode="eval", batch_size=batch_size, num_workers=num_workers)
        loader = ShardLoader(cfg, rank=rank, world_size=world_size)
        batches = run(loader)
        assert len(batches) == len(loader)
        sizes = [len(b["key"]) for b in batches]
        assert all(1 <= n <= batch_size for n in sizes)
        assert sum(n < batch_size for n in sizes) <= max(1, num_workers)  # one short batch per stream
        rank_keys = [k for b in batches for k in b["key"]]
        report = loader.data_report()
        assert report["samples"] == len(rank_keys) and not any(report["bad"].values())
        keys += rank_keys
    assert sorted(keys) == [f"s{i:04d}" for i in range(count)]  # the union is the split, no repeats


def test_training_mode_still_gives_equal_batch_counts(prime_splits):
    lengths = [
        len(ShardLoader(make_cfg(prime_splits[199], batch_size=16), rank=r, world_size=2)) for r in (0, 1)
    ]
    assert lengths == [6, 6]  # 99 samples per rank: 6 full batches, the rest dropped
    evaluation = [
        len(ShardLoader(make_cfg(prime_splits[199], batch_size=16, mode="eval"), rank=r, world_size=2))
        for r in (0, 1)
    ]
    assert evaluation == [7, 7]  # 100 and 99 samples


def test_eval_resume_with_uneven_workers(prime_splits):
    loader = ShardLoader(make_cfg(prime_splits[13], mode="eval", batch_size=2, num_workers=2))
    full = run(loader)
    assert len(full) == len(loader) == 7  # streams of 7 and 6 samples: 4 + 3 batches, the 4th of 7 short
    assert sorted(k for b in full for k in b["key"]) == [f"s{i:04d}" for i in range(13)]
    for k in (3, 6):
        assert [b["key"] for b in run(loader, start_batch=k)] == [b["key"] for b in full[k:]]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_eval_mode_skips_bad_samples_without_stand_ins(tmp_path, make_sample, num_workers):
    with ShardWriter(tmp_path / "d", 7) as writer:
        for i in range(7):
            writer.write(make_sample(i, **({"image": b"junk"} if i in (2, 3) else {})))
    cfg = make_cfg(tmp_path / "d", mode="eval", batch_size=2, shuffle=False, num_workers=num_workers)
    loader = ShardLoader(cfg)
    batches = run(loader)
    assert len(loader) == 4 and len(batches) == 3  # the batch of samples 2 and 3 is not sent at all
    assert sorted(k for b in batches for k in b["key"]) == ["s0000", "s0001", "s0004", "s0005", "s0006"]
    report = loader.data_report()
    assert (
        report["samples"] == 7
        and report["bad"]["image_decode"] == 2
        and report["examples"]["image_decode"] == "s0002"
    )


def test_qa_pairs_first_and_sample(shard_set):
    root = shard_set(1, 40)
    first = run(ShardLoader(make_cfg(root, batch_size=40, shuffle=False, qa_pairs="first")))[0]
    assert first["question"] == [f"q{i}a" for i in range(40)] and first["qa_index"].tolist() == [0] * 40
    loader = ShardLoader(make_cfg(root, batch_size=40, shuffle=False))  # qa_pairs "sample", the default
    a, again, other = run(loader, 0)[0], run(loader, 0)[0], run(loader, 1)[0]
    picks = a["qa_index"].tolist()
    assert 10 <= sum(picks) <= 30  # both pairs drawn, also without shuffling
    assert a["question"] == [f"q{i}{'ab'[p]}" for i, p in zip(range(40), picks)]
    assert a["answer"] == [f"a{i}{'ab'[p]}" for i, p in zip(range(40), picks)]
    assert again["qa_index"].tolist() == picks and other["qa_index"].tolist() != picks  # fixed per epoch


@pytest.fixture
def varied_qa(tmp_path, make_sample):
    """13 samples over shards of 4, 4, 4, 1; sample i has i % 4 QA pairs (0 to 3)."""
    root = tmp_path / "qa"
    expected = []
    with ShardWriter(root, 4) as writer:
        for i in range(13):
            pairs = [{"question": f"q{i}.{j}", "answer": f"a{i}.{j}"} for j in range(i % 4)]
            writer.write(make_sample(i, audio=None, json={"label": i % 10, "qa": pairs}))
            key = f"s{i:04d}"
            expected += [(key, j, f"q{i}.{j}", f"a{i}.{j}") for j in range(i % 4)] or [(key, -1, "", "")]
    return root, sorted(expected)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("world_size", [1, 2])
def test_qa_pairs_all_gives_one_row_per_pair(varied_qa, make_sample, world_size, num_workers):
    root, expected = varied_qa
    assert len(expected) == 22  # 1+1+2+3 per four samples, three times, plus sample 12's single row
    rows = []
    for rank in range(world_size):
        cfg = make_cfg(root, mode="eval", qa_pairs="all", batch_size=3, num_workers=num_workers)
        loader = ShardLoader(cfg, rank=rank, world_size=world_size)
        batches = run(loader)
        assert all(1 <= len(b["key"]) <= 3 for b in batches)
        assert sum(len(b["key"]) < 3 for b in batches) <= max(1, num_workers)  # cut at 3 rows, not samples
        rank_rows = []
        for b in batches:
            for r, key in enumerate(b["key"]):
                rank_rows.append((key, int(b["qa_index"][r]), b["question"][r], b["answer"][r]))
                assert bool(b["qa_present"][r]) == (b["qa_index"][r] >= 0)
                assert int(b["label"][r]) == int(key[1:]) % 10
                # every row of a sample holds its pixels, also rows copied across a batch boundary
                want = transform_image(decode_image(make_sample(int(key[1:]))["image"]), IMAGE)
                assert torch.equal(b["image"][r], want)
        assert loader.data_report()["samples"] == len({key for key, *_ in rank_rows})  # samples, not rows
        rows += rank_rows
    assert sorted(rows) == expected


def test_qa_pairs_all_rules(varied_qa):
    root, _ = varied_qa
    with pytest.raises(DataError, match="qa_pairs 'all' needs mode 'eval'"):
        make_cfg(root, qa_pairs="all")
    cfg = make_cfg(root, mode="eval", qa_pairs="all", batch_size=3, shuffle=False, required=["image", "qa"])
    loader = ShardLoader(cfg)
    with pytest.raises(TypeError, match="known only once"):
        len(loader)
    with pytest.raises(DataError, match="start_batch must be 0"):
        loader.set_epoch(0, start_batch=1)
    rows = [json.dumps([k, q]) for b in run(loader) for k, q in zip(b["key"], b["question"])]
    assert len(rows) == 18  # 22 rows less the four samples without QA, now bad
    report = loader.data_report()
    assert (
        report["samples"] == 13
        and report["bad"]["missing_qa"] == 4
        and report["examples"]["missing_qa"] == "s0000"
    )
