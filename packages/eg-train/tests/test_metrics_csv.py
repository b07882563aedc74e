"""metrics.csv across resume: stable columns, no duplicate steps, empty (never 0.0) absent values."""

from __future__ import annotations

from eg_train.metrics import FIXED_COLUMNS, MetricsCSV


def test_resume_drops_later_and_partial_rows_and_keeps_columns(tmp_path):
    path = tmp_path / "metrics.csv"
    log = MetricsCSV(path, resume_step=None)
    for step in range(1, 6):
        log.append({"step": step, "loss": 1.0 / step, "mse": 0.5 / step})
    log.append({"step": 6, "loss": 0.1, "val/loss": None, "val/recall": 0.75})  # new columns: rewrite
    with open(path, "a") as f:
        f.write("7,0,5")  # a line cut short by a kill
    header = path.read_text().splitlines()[0].split(",")
    assert header[: len(FIXED_COLUMNS)] == FIXED_COLUMNS and header[-3:] == ["mse", "val/loss", "val/recall"]

    resumed = MetricsCSV(path, resume_step=4)
    assert resumed.columns == header
    resumed.append({"step": 5, "loss": 0.3})
    lines = path.read_text().splitlines()
    assert lines[0].split(",") == header
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3", "4", "5"]
    row5 = dict(zip(header, lines[-1].split(",")))
    assert row5["loss"] == "0.3" and row5["mse"] == "" and row5["val/loss"] == ""
