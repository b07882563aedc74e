"""wandb, the optional extra `eg-train[wandb]`: the real library in offline mode (a local run folder, no
network) receives the config, every metrics row and the plots; a resumed run continues the same wandb run
(its id is stored in the checkpoint). Enabled without the library: one line naming the extra."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import eg_train
import pytest


def test_enabled_without_the_extra_fails_at_start_naming_it(toy, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    cfg = toy.make_config(tmp_path, wandb=eg_train.WandbConfig(enabled=True))
    with pytest.raises(eg_train.TrainError) as info:
        eg_train.Trainer(toy.ToyModel(), cfg, toy.ToyData())
    assert str(info.value) == (
        "wandb.enabled is true but wandb is not installed; pip install 'eg-train[wandb]'"
    )
    assert not (tmp_path / "outputs").exists()  # refused before anything was written


def _records(path: Path) -> list:
    """The protobuf records of an offline run file (LevelDB log framing: 32 KiB blocks, 7-byte headers)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, block, records, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left  # a block's tail too short for a header is padding
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _finished_records(path: Path, timeout_s: float = 60.0) -> list:
    """The run file's records once its `exit` record is there: wandb's service process writes the file
    asynchronously, and `finish()` may return before it is complete."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = _records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def _run_contents(run_dir: Path, run_id: str) -> tuple[dict, dict[int, dict]]:
    """(config, {step: {key: value}}) logged in one offline run folder."""
    config: dict = {}
    history: dict[int, dict] = {}
    for r in _finished_records(run_dir / f"run-{run_id}.wandb"):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            assert r.run.run_id == run_id
            config.update({u.key: json.loads(u.value_json) for u in r.run.config.update})
        elif kind == "config":  # config updates may also come as records of their own
            config.update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "history":
            row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
            history.setdefault(int(row["_step"]), {}).update(row)
    return config, history


def test_offline_run_logs_config_metrics_and_plots_and_resume_continues_it(toy, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the eg-train[wandb] extra is not installed")
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path / "wandb_dir"),
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
    }.items():
        monkeypatch.setenv(key, value)
    wandb_cfg = eg_train.WandbConfig(enabled=True, project="eg-train-test", run_name="toy")

    def fit(max_steps: int) -> None:
        cfg = toy.make_config(tmp_path, max_steps=max_steps, val_every=4, plots=True, wandb=wandb_cfg)
        run_config = {"model": {"hidden": 16}, "train": {"max_steps": max_steps}}
        eg_train.Trainer(
            toy.ToyModel(), cfg, toy.ToyData(), val_data=toy.ToyData(), run_config=run_config
        ).fit()

    fit(4)
    latest = tmp_path / "checkpoints/checkpoint_latest.pt"
    run_id = eg_train.load_checkpoint(latest)["wandb_run_id"]
    assert run_id
    (first,) = (tmp_path / "outputs/wandb").glob(f"offline-run-*-{run_id}")
    config, history = _run_contents(first, run_id)
    assert config["model"] == {"hidden": 16} and config["train"] == {"max_steps": 4}
    rows = toy.read_rows(tmp_path / "outputs/metrics.csv")
    assert sorted(history) == [1, 2, 3, 4]
    for row in rows:
        logged = history[int(row["step"])]
        for key in ("loss", "mse", "lr", "grad_norm"):
            assert logged[key] == pytest.approx(float(row[key]), rel=1e-12), (row["step"], key)
    assert history[4]["val/loss"] == pytest.approx(float(rows[3]["val/loss"]), rel=1e-12)
    assert history[4]["training_curves/_type"] == "image-file"  # nested keys, joined by "/" here
    assert (first / "files" / history[4]["training_curves/path"]).stat().st_size > 10_000
    assert (first / "files" / history[4]["loss_components/path"]).is_file()

    fit(6)  # a restart: resumes from step 4 and continues the same wandb run
    assert eg_train.load_checkpoint(latest)["wandb_run_id"] == run_id
    steps: dict[int, dict] = {}
    # wandb names a resumed run's folder like the first; started within the same second it appends "-1"
    for run_dir in (tmp_path / "outputs/wandb").glob(f"offline-run-*-{run_id}*"):
        steps.update(_run_contents(run_dir, run_id)[1])
    files = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "outputs/wandb").rglob("*"))
    assert sorted(steps) == [1, 2, 3, 4, 5, 6], files
    assert steps[6]["loss"] == pytest.approx(
        float(toy.read_rows(tmp_path / "outputs/metrics.csv")[5]["loss"])
    )
