"""Bad samples reported: a train data object with `data_report()` gets `data/samples` and
`data/bad/<reason>` columns (summed over ranks, cumulative within the epoch, header known before the
first row) in metrics.csv and tensorboard, and one summary line per epoch when any sample was bad."""

from __future__ import annotations

import eg_train
import pytest
from eg_train.metrics import FIXED_COLUMNS


def _expected(toy, data, epoch: int, batches: int) -> dict:
    """The report after `batches` batches of `epoch`, counted by hand from the indices."""
    bad = dict.fromkeys(toy.ReportingToyData.REASONS, 0)
    examples: dict[str, str] = {}
    for b in range(batches):
        for i in data.batch_indices(epoch, b).tolist():
            if (reason := toy.ReportingToyData.reason(i)) is not None:
                bad[reason] += 1
                examples.setdefault(reason, f"s{i}")
    return {"samples": batches * data.batch_size, "bad": bad, "examples": examples}


def test_counts_columns_tensorboard_and_one_summary_per_epoch(toy, tmp_path, capsys):
    data = toy.ReportingToyData()
    cfg = toy.make_config(tmp_path, max_steps=0, epochs=2, log_every=3, tensorboard=True)
    eg_train.Trainer(toy.ToyModel(), cfg, data).fit()

    lines = (tmp_path / "outputs/metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    data_columns = [
        "data/samples",
        "data/bad/corrupt_image",
        "data/bad/empty_caption",
        "data/bad/truncated_tar",
    ]
    # declared up front (right after the fixed columns), then the loss parts as they appear
    assert header == [*FIXED_COLUMNS, *data_columns, "index_mean", "index_sq_mean", "l1", "mse"]
    rows = toy.read_rows(tmp_path / "outputs/metrics.csv")
    assert [r["step"] for r in rows] == ["3", "6", "9", "12", "15", "16"]
    for row in rows:
        step, epoch = int(row["step"]), int(row["epoch"])
        want = _expected(toy, data, epoch, step - 8 * epoch)  # 8 batches per epoch
        assert int(row["data/samples"]) == want["samples"], step
        for reason, n in want["bad"].items():
            assert int(row[f"data/bad/{reason}"]) == n, (step, reason)

    out = [x for x in capsys.readouterr().out.splitlines() if "data: skipped" in x]
    wanted = []
    for epoch in (0, 1):
        want = _expected(toy, data, epoch, 8)
        parts = "; ".join(
            f"{r} {n}, e.g. {want['examples'][r]!r}"
            for r, n in sorted(want["bad"].items(), key=lambda kv: (-kv[1], kv[0]))
            if n
        )
        total = sum(want["bad"].values())
        wanted.append(f"eg-train: data: skipped {total} of 64 samples in epoch {epoch} ({parts})")
    assert out == wanted
    assert "corrupt_image" in wanted[0] and "truncated_tar" in wanted[0]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "outputs/tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("data/bad/corrupt_image")]
    assert logged == [(int(r["step"]), float(r["data/bad/corrupt_image"])) for r in rows]


def test_a_run_ending_mid_epoch_says_so_and_a_clean_epoch_prints_nothing(toy, tmp_path, capsys):
    data = toy.ReportingToyData()
    eg_train.Trainer(toy.ToyModel(), toy.make_config(tmp_path, max_steps=11), data).fit()
    out = [x for x in capsys.readouterr().out.splitlines() if "data: skipped" in x]
    assert len(out) == 2 and "in epoch 0 (" in out[0] and "of 24 samples in epoch 1 so far (" in out[1]

    class CleanData(toy.ToyData):
        def data_report(self):
            return {"samples": 8, "bad": {"corrupt_image": 0}, "examples": {}}

    eg_train.Trainer(toy.ToyModel(), toy.make_config(tmp_path / "clean", max_steps=8), CleanData()).fit()
    assert "data: skipped" not in capsys.readouterr().out
    rows = toy.read_rows(tmp_path / "clean/outputs/metrics.csv")
    assert {r["data/bad/corrupt_image"] for r in rows} == {"0"}  # zeros are written, never left empty


def test_a_data_error_from_the_loader_propagates(toy, tmp_path):
    class DataError(ValueError):
        pass

    class MostlyBadData(toy.ReportingToyData):
        def data_report(self):
            if self.num_samples >= 24:
                raise DataError("data.train: 20 of 24 samples bad (max_bad_fraction 0.5)")
            return super().data_report()

    with pytest.raises(DataError, match="max_bad_fraction"):
        eg_train.Trainer(toy.ToyModel(), toy.make_config(tmp_path, max_steps=8), MostlyBadData()).fit()


def test_a_malformed_report_is_one_line(toy, tmp_path):
    class Odd(toy.ToyData):
        def data_report(self):
            return {"bad": 3}

    with pytest.raises(eg_train.TrainError, match="data_report\\(\\) returned dict") as info:
        eg_train.Trainer(toy.ToyModel(), toy.make_config(tmp_path), Odd())
    assert "\n" not in str(info.value)


def test_data_that_restores_its_report_gets_the_base_and_it_is_not_added_twice(toy, tmp_path, capsys):
    class RestoringData(toy.ReportingToyData):
        """Continues its counts from restore_data_report(report), as eg-data's loaders do."""

        def __init__(self) -> None:
            super().__init__()
            self.restored: list[tuple[int, int, dict]] = []

        def restore_data_report(self, report: dict) -> None:
            self.restored.append((self.epoch, self.start_batch, report))
            self.num_samples = report["samples"]
            self.bad, self.examples = dict(report["bad"]), dict(report["examples"])

    def fit(out, data, crash_at_call: int = 0) -> None:
        eg_train.seed_everything(0)
        model = toy.ToyModel()
        if crash_at_call:
            inner = model.forward

            def crashing(batch: dict) -> dict:
                if model.training and model.calls + 1 == crash_at_call:
                    raise RuntimeError("injected crash")
                return inner(batch)

            model.forward = crashing
        eg_train.Trainer(model, toy.make_config(out, max_steps=12, save_every=3), data).fit()

    fit(tmp_path / "ref", RestoringData())
    ref_out = [x for x in capsys.readouterr().out.splitlines() if "data: skipped" in x]
    with pytest.raises(RuntimeError, match="injected crash"):
        fit(tmp_path / "run", RestoringData(), crash_at_call=11)  # in step 11; the checkpoint is step 9's
    capsys.readouterr()
    data = RestoringData()
    fit(tmp_path / "run", data)
    run_out = [x for x in capsys.readouterr().out.splitlines() if "data: skipped" in x]

    # step 9 is batch 1 of epoch 1 (8 batches per epoch): its counts go to the data after set_epoch(1, 1)
    assert data.restored == [(1, 1, _expected(toy, data, 1, 1))]
    assert data.data_report() == _expected(toy, data, 1, 4)  # the data counted on from the base: step 12
    rows_ref = toy.read_rows(tmp_path / "ref/outputs/metrics.csv")
    rows_run = toy.read_rows(tmp_path / "run/outputs/metrics.csv")
    assert [r["step"] for r in rows_run] == [str(s) for s in range(1, 13)]
    columns = ["loss", "data/samples", *(f"data/bad/{r}" for r in toy.ReportingToyData.REASONS)]
    for ra, rb in zip(rows_ref, rows_run):
        assert {c: ra[c] for c in columns} == {c: rb[c] for c in columns}, ra["step"]
    assert int(rows_run[-1]["data/samples"]) == 32  # not 40: the base is not added on top of the data's
    assert run_out[-1] == ref_out[-1] and "of 32 samples in epoch 1 so far" in run_out[-1]
    saved = [
        eg_train.load_checkpoint(tmp_path / d / "checkpoints/checkpoint_latest.pt")["ranks"][0]["data_report"]
        for d in ("ref", "run")
    ]
    assert saved[0] == saved[1] == _expected(toy, data, 1, 4)
