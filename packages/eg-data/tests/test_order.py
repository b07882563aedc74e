"""The training order (order.py): a fresh run's order is the per-rank stream order (checked against the
plan by hand), it does not depend on the loader workers, and with the run's virtual streams and global
batch kept (`set_order`) every optimizer step holds the same samples in the same order on any world
size, batch size and accumulation, also resumed mid-epoch and for mixtures; layouts that cannot keep the
order are refused in one line."""

from itertools import chain

import pytest
from eg_data import DataError, LoaderConfig, ShardLoader, ShardWriter, SourceConfig
from eg_data.order import StepLayout, layout_problem, plan_stream


def text_cfg(root, **kw) -> LoaderConfig:
    kw.setdefault("batch_size", 4)
    return LoaderConfig(shard_dir=str(root), modalities=["text"], required=["text"], shuffle_buffer=6, **kw)


def write_text_source(root, prefix: str, num: int, per_shard: int = 5) -> str:
    with ShardWriter(root, per_shard) as writer:
        for i in range(num):
            writer.write({"key": f"{prefix}{i:03d}", "text": f"caption {prefix} {i}"})
    return str(root)


def batches_of(loader, epoch: int, start: int = 0) -> list[list[str]]:
    loader.set_epoch(epoch, start)
    return [list(b["key"]) for b in loader]


def steps(
    cfg: LoaderConfig, world: int, order: tuple[int, int] | None, batch: int | None = None, epoch=0, start=0
):
    """The key sequence of every optimizer step (ranks in order, their micro-batches in order) of one
    epoch from step `start` on, with `order` = (num_streams, step_samples) set, or a fresh run's."""
    per_rank = []
    for rank in range(world):
        loader = cfg.build(rank, world)
        if order is not None:
            loader.set_order(*order, batch_size=batch)
        state = loader.order_state()
        accumulation = state["step_samples"] // (world * state["batch_size"])
        got = batches_of(loader, epoch, start * accumulation)
        per_rank.append([list(chain(*got[i : i + accumulation])) for i in range(0, len(got), accumulation)])
    assert len({len(r) for r in per_rank}) == 1  # every rank makes the same number of steps
    return [list(chain(*(r[s] for r in per_rank))) for s in range(len(per_rank[0]))]


@pytest.fixture
def keyed(tmp_path):
    """53 text samples in shards of 5 (keys k000..k052)."""
    return write_text_source(tmp_path / "k", "k", 53)


def test_a_fresh_run_reads_one_stream_per_rank_as_planned(keyed):
    """Rank r's batches are stream r's emission order cut into batches: a hand lookup in the plan."""
    cfg = text_cfg(keyed, batch_size=4)
    counts = [s.num_samples for s in ShardLoader(cfg).dataset.shards]
    firsts = [0]
    for n in counts[:-1]:
        firsts.append(firsts[-1] + n)
    for world in (1, 2, 3):
        for rank in range(world):
            plan = plan_stream(counts, cfg.seed, 1, rank, world, True, cfg.shuffle_buffer)
            # the index is in shard-file order and keys run 000.. through the files
            keys = [f"k{firsts[s] + o:03d}" for s, o in zip(plan.shard_ids, plan.ordinals)]
            emitted = [keys[p] for p in plan.emit_order]
            got = batches_of(cfg.build(rank, world), 1)
            assert got == [emitted[i : i + 4] for i in range(0, len(emitted) // 4 * 4, 4)]


@pytest.mark.parametrize("num_workers", [1, 2])
def test_loader_workers_do_not_change_the_order(keyed, num_workers):
    for world in (1, 2):
        assert steps(text_cfg(keyed, num_workers=num_workers), world, None) == steps(
            text_cfg(keyed), world, None
        )


def test_every_split_of_the_global_batch_reads_the_same_steps(keyed):
    """A run of 2 ranks x 4 (2 streams, 8 per step) resumed as 1 x 8, 4 x 2, 1 x 4 x 2 micro-batches,
    2 x 2 x 2: the same samples in the same order at every step, from a mid-epoch step too."""
    cfg = text_cfg(keyed, batch_size=4)
    reference = steps(cfg, 2, None, epoch=3)
    assert reference == steps(cfg, 2, (2, 8), epoch=3)  # set_order of the run's own layout changes nothing
    assert len(reference) == (53 // 2) // 4 == 6
    assert all(len(step) == 8 for step in reference)
    for world, batch in ((1, 8), (4, 2), (1, 4), (2, 2), (8, 1)):
        assert steps(cfg, world, (2, 8), batch, epoch=3) == reference, (world, batch)
        assert steps(cfg, world, (2, 8), batch, epoch=3, start=4) == reference[4:], (world, batch)
    with_workers = text_cfg(keyed, batch_size=4, num_workers=2)
    assert steps(with_workers, 4, (2, 8), 1, epoch=3, start=1) == reference[1:]


def test_a_one_rank_run_resumed_on_two(keyed):
    cfg = text_cfg(keyed, batch_size=6)
    reference = steps(cfg, 1, None, epoch=2)
    assert steps(cfg, 2, (1, 6), 3, epoch=2) == reference
    assert steps(cfg, 3, (1, 6), 2, epoch=2, start=3) == reference[3:]


def test_a_mixture_keeps_its_draws_and_its_steps(tmp_path):
    sources = [
        SourceConfig(
            shard_dir=write_text_source(tmp_path / "a", "a", 31), modalities=["text"], weight=2, name="a"
        ),
        SourceConfig(shard_dir=write_text_source(tmp_path / "b", "b", 23), modalities=["text"], name="b"),
    ]
    cfg = LoaderConfig(
        modalities=["text"], required=["text"], shuffle_buffer=6, batch_size=2, sources=sources
    )
    reference = steps(cfg, 2, None, epoch=1)
    assert {step[0][0] for step in reference} == {"a", "b"} and all(
        len({k[0] for k in s}) == 1 for s in reference
    )
    for world, batch in ((1, 4), (4, 1), (1, 2), (2, 1)):
        assert steps(cfg, world, (2, 4), batch, epoch=1) == reference, (world, batch)
        assert steps(cfg, world, (2, 4), batch, epoch=1, start=3) == reference[3:], (world, batch)
    later = steps(cfg, 2, None, epoch=4)  # the sources' own epochs continue alike
    assert steps(cfg, 1, (2, 4), 2, epoch=4) == later
    mixture = cfg.build(0, 3)  # 4 samples a step do not split over 3 ranks: refused, nothing changed
    before = mixture.order_state()
    for call in (mixture.check_order, mixture.set_order):
        with pytest.raises(
            DataError, match="global batch of 4 is no whole number of batches of 1 on each of 3"
        ):
            call(2, 4, 1)
    assert mixture.order_state() == before and all(s.order_state() == before for s in mixture.loaders)


def test_layouts_that_cannot_keep_the_order_are_refused(keyed):
    assert layout_problem(2, 8, 4, 2) == ""
    assert "does not split over the run's 3 sample streams" in layout_problem(3, 8, 1, 8)
    assert "no whole number of batches of 3 on each of 2 rank(s)" in layout_problem(2, 8, 2, 3)
    with pytest.raises(DataError, match="global batch of 6 is no whole number of batches of 2 on each of 4"):
        StepLayout(2, 6, 4, 2)
    loader = text_cfg(keyed).build(0, 4)
    before = loader.order_state()
    with pytest.raises(DataError, match="no whole number of batches of 4 on each of 4"):
        loader.set_order(2, 8)
    with pytest.raises(DataError, match="cannot fill one step of 400"):
        loader.set_order(2, 400, 100)
    assert loader.order_state() == before == {"num_streams": 4, "step_samples": 16, "batch_size": 4}
    with pytest.raises(DataError, match="mode 'eval' has no training order"):
        text_cfg(keyed, mode="eval").build(0, 1).set_order(1, 4)
