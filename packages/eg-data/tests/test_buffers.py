"""Reused batch buffers (`BatchPool`): a held batch is never overwritten, a dropped batch gives its buffer
back, an abandoned epoch loses no buffer, two iterations at once never share one, and spawned workers
(macOS's default) fill the same batches as forked ones."""

import gc
import subprocess
import sys

import pytest
import torch
from eg_data import ImageTransformConfig, LoaderConfig, ShardLoader

IMAGE = ImageTransformConfig(size=8, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
TENSORS = ("image", "audio", "audio_mask", "label", "image_present", "text_present")


def make_loader(root, **kw) -> ShardLoader:
    kw.setdefault("batch_size", 3)
    return ShardLoader(LoaderConfig(shard_dir=str(root), image=IMAGE, shuffle_buffer=8, **kw))


def snapshot(batch: dict) -> dict:
    return {k: v.clone() if torch.is_tensor(v) else list(v) for k, v in batch.items()}


def assert_same(a: dict, b: dict) -> None:
    assert a["key"] == b["key"]
    for name in TENSORS:
        assert torch.equal(a[name], b[name]), name


def in_pool(loader: ShardLoader, tensor: torch.Tensor) -> bool:
    ptr = tensor.data_ptr()
    return any(m.data_ptr() <= ptr < m.data_ptr() + m.numel() for row in loader._pool.memory for m in row)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_held_batches_are_never_overwritten(shard_set, num_workers):
    loader = make_loader(shard_set(3, 12), num_workers=num_workers)
    loader.set_epoch(0)
    held, copies = [], []
    for batch in loader:  # 12 batches held against 4 buffers per stream: the rest use fresh memory
        held.append(batch)
        copies.append(snapshot(batch))
    assert len(held) == 12 and sum(in_pool(loader, b["image"]) for b in held) >= 4
    for batch, copy in zip(held, copies):
        assert_same(batch, copy)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dropped_batches_give_their_buffer_back(shard_set, num_workers):
    loader = make_loader(shard_set(3, 12), num_workers=num_workers)
    loader.set_epoch(0)
    for batch in loader:
        assert in_pool(loader, batch["image"])  # never ran out: every buffer came back
        view = batch["audio"][0]
    del batch
    gc.collect()
    assert loader._pool.free.sum() == loader._pool.free.numel() - 1  # the view still holds its buffer
    del view
    assert loader._pool.free.all()


def test_an_abandoned_epoch_loses_no_buffer(shard_set):
    root = shard_set(3, 12)
    reference = make_loader(root, num_workers=2)
    reference.set_epoch(0)
    want = [snapshot(b) for b in reference]
    loader = make_loader(root, num_workers=2)
    loader.set_epoch(0)
    batches = iter(loader)
    first = next(batches)  # the workers have more batches in flight, in buffers they claimed
    del batches
    gc.collect()
    loader.set_epoch(0)
    got = []
    for batch in loader:
        assert in_pool(loader, batch["image"])  # in-flight buffers came back, only `first` is held
        got.append(snapshot(batch))
    assert len(got) == 12
    for g, w in zip([snapshot(first), *got], [want[0], *want]):
        assert_same(g, w)
    del first, batch
    gc.collect()
    assert loader._pool.free.all()


def test_two_iterations_at_once_use_separate_buffers(shard_set):
    loader = make_loader(shard_set(3, 12), num_workers=2)
    loader.set_epoch(0)
    a = iter(loader)
    first_a = next(a)  # a is suspended, its workers with batches in flight
    b = iter(loader)
    first_b = next(b)
    assert in_pool(loader, first_a["image"]) and not in_pool(loader, first_b["image"])  # b got its own pool
    for x, y in zip([first_a, *a], [first_b, *b]):
        assert_same(x, y)


SPAWN_SCRIPT = """
import sys, torch, multiprocessing
from eg_data import ImageTransformConfig, LoaderConfig, ShardLoader
if __name__ == "__main__":
    multiprocessing.set_start_method("spawn", force=True)  # macOS's default: workers unpickle the pool
    torch.set_num_threads(1)
    image = ImageTransformConfig(size=8, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    cfg = LoaderConfig(shard_dir=sys.argv[1], batch_size=3, num_workers=2, image=image, shuffle_buffer=8)
    loader = ShardLoader(cfg)
    loader.set_epoch(0)
    torch.save([{k: v.clone() if torch.is_tensor(v) else v for k, v in b.items()} for b in loader], sys.argv[2])
    report = loader.data_report()
    print(report["samples"], sum(report["bad"].values()))
"""


def test_spawned_workers_fill_the_same_batches(shard_set, tmp_path):
    root = shard_set(3, 12)
    script = tmp_path / "spawn.py"
    script.write_text(SPAWN_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(root), str(tmp_path / "b.pt")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["36", "0"]  # the report crossed the process boundary too
    spawned = torch.load(tmp_path / "b.pt", weights_only=True)
    forked = make_loader(root, num_workers=2)
    forked.set_epoch(0)
    want = [snapshot(b) for b in forked]
    assert len(spawned) == len(want) == 12
    for got, expected in zip(spawned, want):
        assert_same(got, expected)
