"""Stage 1 on a mixture of sources (data.train.sources): each pair's loss uses only the samples that have
both sides (against a hand-written InfoNCE), a batch of a single-pair source trains nothing else, the
config refuses pairs that no source can feed, the app's loader on a mixture resumes exactly, and each
source's own val/test splits are evaluated on their own (equal to evaluating the folder alone)."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from eg_data import MixtureLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: conftest's helpers
from apps.alignment.build import build_model, prepare_assets
from apps.alignment.config import AlignmentConfig
from apps.alignment.evaluate import encoders_of, evaluate_checkpoint
from apps.common.cli import train_main
from apps.common.config import ConfigError, build_config
from apps.common.loaders import loader_for_encoders
from apps.common.retrieval import flatten_metrics
from conftest import TRAIN_SCRIPT, run_app, tiny_config, write_config

PAIRS = ("vision_text", "audio_text", "vision_audio")


def mixture_overrides(data: Path, **weights: float) -> dict:
    sources = [
        {
            "name": "image_text",
            "shard_dir": str(data / "image_text" / "train"),
            "modalities": ["image", "text"],
        },
        {
            "name": "audio_text",
            "shard_dir": str(data / "audio_text" / "train"),
            "modalities": ["audio", "text"],
        },
    ]
    return {
        "data.train.shard_dir": "",
        "data.train.sources": sources,
        "data.train.required": ["text"],
        "losses.pair_weights": {"vision_audio": 0.0, **weights},
    }


def per_source_overrides(data: Path) -> dict:
    """mixture_overrides with each source's own halves of the demo's val/test splits."""
    overrides = mixture_overrides(data)
    for source in overrides["data.train.sources"]:
        source["val_dir"] = str(data / source["name"] / "val")
        source["test_dir"] = str(data / source["name"] / "test")
    return overrides


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, demo_data: Path):
    folder = tmp_path_factory.mktemp("mixture")
    # the tiny backbones, written from the single-folder config (prepare_assets reads the demo text model's
    # vocabulary from data.train.shard_dir, which a mixture leaves unset)
    prepare_assets(build_config(AlignmentConfig, tiny_config(folder, demo_data), "test"), is_main=True)
    raw = tiny_config(folder, demo_data, **mixture_overrides(demo_data))
    cfg = build_config(AlignmentConfig, raw, "test")
    model = build_model(cfg)
    model.eval()  # every MRL dim, no draws: deterministic parts
    loader_cfg = loader_for_encoders(cfg.data.train, encoders_of(model), "data.train")
    return cfg, model, loader_cfg


def infonce_by_hand(
    a: torch.Tensor, b: torch.Tensor, keep: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE over the kept rows only, written out: mean cross-entropy of each direction."""
    a, b = F.normalize(a[keep], dim=-1), F.normalize(b[keep], dim=-1)  # (K, D)
    logits = scale * a @ b.T  # (K, K)
    labels = torch.arange(len(a))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def first_batch_of(loader, source: str) -> dict:
    loader.set_epoch(0)
    for batch in loader:
        has = "image_text" if batch["image_present"].any() else "audio_text"
        if has == source:
            return batch
    raise AssertionError(f"no {source} batch in epoch 0")


def test_pair_losses_ignore_samples_missing_a_side(built, demo_data) -> None:
    """A tri-modal batch with some sides marked absent: each pair's contrastive loss equals InfoNCE over
    the rows that have both sides, and differs from InfoNCE over all rows (so ignoring the masks fails)."""
    _, model, loader_cfg = built
    full = dataclasses.replace(loader_cfg, sources=[], shard_dir=str(demo_data / "train"), required=["text"])
    loader = full.build()
    loader.set_epoch(0)
    batch = next(iter(loader))
    size = len(batch["key"])
    batch["image_present"][:4] = False  # samples without an image (their pixels stay: must be ignored)
    batch["audio_present"][3:7] = False
    batch["text_present"][10] = False
    with torch.no_grad():
        out = model(batch)
        z = model.embed(batch)
    sides = {"vision": "image_present", "audio": "audio_present", "text": "text_present"}
    for pair in PAIRS:
        first, second = pair.split("_")
        keep = batch[sides[first]] & batch[sides[second]]
        assert 0 < int(keep.sum()) < size
        scale = model.contrastive[pair].logit_scale
        expected = infonce_by_hand(z[first], z[second], keep, scale)
        assert torch.allclose(out[f"{pair}/contrastive"], expected, atol=1e-5), pair
        every_row = infonce_by_hand(z[first], z[second], torch.ones(size, dtype=torch.bool), scale)
        assert not torch.allclose(every_row, expected, atol=1e-3)
        dims = model.mrl_dims  # eval: the MRL term is every dim's InfoNCE on the same rows
        mrl = sum(infonce_by_hand(z[first][:, :d], z[second][:, :d], keep, scale) for d in dims)
        assert torch.allclose(out[f"{pair}/mrl"], mrl * model.mrl_dims_per_step / len(dims), atol=1e-5)


def test_a_source_batch_trains_only_the_pairs_it_has(built) -> None:
    """An audio-text batch of the mixture: audio_text is InfoNCE over all its rows, vision_text and
    vision_audio add nothing and report no part (so their logged curves average only the steps that
    trained them), and the vision projection gets no gradient from it."""
    _, model, loader_cfg = built
    loader = loader_cfg.build()
    assert isinstance(loader, MixtureLoader)
    batch = first_batch_of(loader, "audio_text")
    assert batch["audio_present"].all() and not batch["image_present"].any()
    model.zero_grad()
    out = model(batch)
    z = model.embed(batch)
    everyone = batch["text_present"].clone()  # all rows, but those whose caption text dropout removed
    scale = model.contrastive["audio_text"].logit_scale
    expected = infonce_by_hand(z["audio"], z["text"], everyone, scale)
    assert torch.allclose(out["audio_text/contrastive"], expected, atol=1e-5)
    assert not {"vision_text/contrastive", "vision_text/mrl", "vision_audio/contrastive"} & set(out)
    expected_total = model.pair_weights["audio_text"] * (
        model.cfg.losses.contrastive * out["audio_text/contrastive"]
        + model.cfg.losses.mrl * out["audio_text/mrl"]
    )
    assert torch.allclose(out["loss"], expected_total, atol=1e-5)
    out["loss"].backward()
    vision_grads = [p.grad for p in model.towers["vision"].projection.parameters()]
    assert all(g is None or not g.any() for g in vision_grads)
    audio_grads = [p.grad for p in model.towers["audio"].projection.parameters()]
    assert any(g is not None and g.any() for g in audio_grads)
    model.zero_grad()


def test_config_refuses_pairs_no_source_can_feed(tmp_path, demo_data) -> None:
    raw = tiny_config(tmp_path, demo_data, **mixture_overrides(demo_data, vision_audio=1.0))
    with pytest.raises(
        ConfigError, match=r"model\.pairs: 'vision_audio' needs samples with both image and audio"
    ):
        build_config(AlignmentConfig, raw, "test")
    raw = tiny_config(tmp_path, demo_data, **mixture_overrides(demo_data))
    raw["data"]["train"]["required"] = ["image", "text"]
    with pytest.raises(
        ConfigError, match=r"^test: data\.train\.required has 'image', which source 'audio_text'"
    ):
        build_config(AlignmentConfig, raw, "test")
    build_config(AlignmentConfig, tiny_config(tmp_path, demo_data, **mixture_overrides(demo_data)), "test")


def test_the_apps_mixture_loader_resumes_exactly(built) -> None:
    """Batches 5.. of epoch 1 after set_epoch(1, 5) on a fresh loader equal the uninterrupted run's."""
    _, _, loader_cfg = built
    uninterrupted = loader_cfg.build()
    reference = []
    for epoch in (0, 1):
        uninterrupted.set_epoch(epoch)
        reference = [{k: v.clone() if torch.is_tensor(v) else v for k, v in b.items()} for b in uninterrupted]
    resumed = loader_cfg.build()
    resumed.set_epoch(1, 5)
    got = list(resumed)
    assert len(got) == len(reference) - 5 > 0
    for mine, theirs in zip(got, reference[5:]):
        assert mine["key"] == theirs["key"]
        for name in ("image", "audio", "audio_mask", "image_present", "audio_present", "text_present"):
            assert torch.equal(mine[name], theirs[name]), name


OWN_PAIR = {"image_text": "vision_text", "audio_text": "audio_text"}


def with_undecodable_audio(src: Path, dst: Path, index: int) -> Path:
    """The shard folder `src` rewritten into `dst` (one shard) with sample `index`'s audio garbage."""
    import webdataset as wds
    from eg_data import ShardInfo, read_all
    from eg_data.shards import write_index

    samples = read_all(src)
    dst.mkdir(parents=True)
    with wds.TarWriter(str(dst / "shard-00000.tar"), encoder=False, mtime=0) as writer:
        for i, sample in enumerate(samples):
            sample = {k: v for k, v in sample.items() if k != "__url__"}
            if i == index:
                sample["flac"] = b"\x00not a sound\xff" * 8
            writer.write(sample)
    write_index(dst, [ShardInfo(path="shard-00000.tar", num_samples=len(samples))])
    return dst


@pytest.mark.slow
def test_per_source_val_and_test_equal_each_folder_evaluated_alone(tmp_path, demo_data) -> None:
    """A tiny two-source mixture trained through the app (data.val_dir and each source's val_dir; test
    only per source, audio_text's with one undecodable clip). Each source's test section of eval.json, and
    its validation columns of metrics.csv (sources/<name>/...), equal evaluating that source's folder alone
    (apps/evaluate --split-dir) with the checkpoint of the same step; a pair the source lacks appears in
    neither; the tables name the source; the bad clip is reported for its source."""
    raw = tiny_config(tmp_path, demo_data, **per_source_overrides(demo_data))
    raw["data"]["test_dir"] = ""
    audio_test = with_undecodable_audio(demo_data / "audio_text" / "test", tmp_path / "audio_test", 7)
    raw["data"]["train"]["sources"][1]["test_dir"] = str(audio_test)
    test_dirs = {"image_text": demo_data / "image_text" / "test", "audio_text": audio_test}
    raw["train"].update(max_steps=2, val_every=2, save_every=2)
    done = run_app(TRAIN_SCRIPT, ["--config", str(write_config(tmp_path, raw))], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"held-out retrieval, source audio_text (test: {audio_test}, 89 samples" in done.stdout
    assert (
        "skipped 1 unreadable samples of the test split of source audio_text: audio_decode 1" in done.stdout
    )
    out = tmp_path / "outputs" / "tiny"
    report = json.loads((out / "eval.json").read_text())
    assert "retrieval" not in report and set(report["sources"]) == set(OWN_PAIR)  # no data.test_dir
    with open(out / "metrics.csv", newline="") as f:
        (val,) = [row for row in csv.DictReader(f) if row["val/loss"]]  # step 2: the checkpoint's weights
    assert float(val["val/vision_audio/32/vision_to_audio/recall@1"]) >= 0  # data.val_dir too: every pair
    checkpoint = str(tmp_path / "checkpoints" / "tiny" / "checkpoint_latest.pt")
    raw["train"]["output_dir"], raw["num_threads"] = str(tmp_path / "alone"), 0
    cfg = build_config(AlignmentConfig, raw, "test")
    bad = report["sources"]["audio_text"]["data"]["bad"]
    assert {k: v for k, v in bad.items() if v} == {"audio_decode": 1}
    for name, pair in OWN_PAIR.items():
        section = report["sources"][name]
        size = 89 if name == "audio_text" else 90
        assert section["pair_samples"] == {pair: size} and section["data"]["samples"] == 90
        alone = evaluate_checkpoint(cfg, checkpoint, str(test_dirs[name]))
        assert alone["pair_samples"] == {**dict.fromkeys(PAIRS, 0), pair: size}  # the others: no rows
        assert alone["data"] == section["data"]
        assert list(alone["retrieval"]) == list(section["retrieval"]) == [pair]
        assert section["retrieval"] == alone["retrieval"]  # every dim, direction and metric, exactly
        alone_val = flatten_metrics(
            evaluate_checkpoint(cfg, checkpoint, str(demo_data / name / "val"))["retrieval"]
        )
        prefix = f"val/sources/{name}/"
        columns = {k.removeprefix(prefix): v for k, v in val.items() if k.startswith(prefix) and v != ""}
        assert {k: float(columns[k]) for k in alone_val} == alone_val
        assert float(columns["data/samples"]) == 90 and float(columns["loss"]) > 0
        assert f"{pair}/contrastive" in columns
        assert {k.split("/")[0] for k in columns} == {pair, "retrieval", "data", "loss"}


def test_a_missing_source_val_dir_is_refused_before_anything_runs(
    tmp_path, demo_data, capsys, monkeypatch
) -> None:
    overrides = per_source_overrides(demo_data)
    overrides["data.train.sources"][1]["val_dir"] = str(tmp_path / "nope")
    config = write_config(tmp_path, tiny_config(tmp_path, demo_data, **overrides))
    monkeypatch.chdir(tmp_path)
    assert train_main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: data.train.sources[1].val_dir='{tmp_path / 'nope'}' does not exist"), err
    assert err.count("\n") == 1 and not (tmp_path / "outputs").exists() and not (tmp_path / "models").exists()


def test_held_out_settings_refused_at_load(tmp_path, demo_data) -> None:
    """No test split anywhere; a source's val_dir on a source that feeds no pair of model.pairs."""
    raw = tiny_config(tmp_path, demo_data, **mixture_overrides(demo_data))
    raw["data"]["test_dir"] = ""
    with pytest.raises(
        ConfigError, match=r"^test: data\.test_dir is empty and no source of data\.train\.sources"
    ):
        build_config(AlignmentConfig, raw, "test")
    raw = tiny_config(tmp_path, demo_data, **per_source_overrides(demo_data))
    raw["model"]["audio"] = None  # vision-text only: the audio_text source feeds no pair
    raw["model"]["pairs"] = ["vision_text"]
    raw["losses"]["pair_weights"] = {}
    with pytest.raises(
        ConfigError, match=r"^test: data\.train\.sources\[1\]\.val_dir: source 'audio_text' has"
    ):
        build_config(AlignmentConfig, raw, "test")
