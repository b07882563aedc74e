"""Zero-shot classification, linear probes and the clip-benchmark cross-check on a tiny trained stage-1
model: eval.zeroshot during training (metrics.csv, best_metric) equal to `apps/evaluate zeroshot` on the same
checkpoint, our top-1 and recall@k equal to clip-benchmark's own evaluation on folders its own writers made,
the linear probe's figures, and the command line's refusals (one line, exit 2)."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: conftest's helpers
from apps.alignment.clip_face import ClipBenchmarkFace, clip_benchmark_retrieval, clip_benchmark_zeroshot
from apps.alignment.embed import Embedder
from apps.alignment.eval_cli import evaluate_dispatch
from apps.alignment.zeroshot import class_embeddings, text_classifier
from apps.common.retrieval import direction_metrics, truncate_normalize
from apps.common.zeroshot_data import write_demo_zeroshot, write_split, write_task
from conftest import EVALUATE_SCRIPT, TRAIN_SCRIPT, run_app, tiny_config, write_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:This DataLoader will create 8 worker:UserWarning"),  # clip-benchmark's
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> dict:
    """A 30-step tiny model trained with eval.zeroshot on the demo's zero-shot folder (val split, validation
    at steps 10, 20 and 30) and checkpoint_best.pt chosen by the zero-shot mean top-1."""
    workdir = tmp_path_factory.mktemp("zeroshot")
    folder = workdir / "demo_zeroshot"
    write_demo_zeroshot(demo_data, folder)
    cfg = tiny_config(
        workdir,
        demo_data,
        **{
            "eval.zeroshot": {"dataset": str(folder), "split": "val"},
            "train.best_metric": "val/zeroshot/mean_acc1",
            "train.max_steps": 30,  # 4 steps leave every image predicted as one class (top-1 0.1)
            "train.val_every": 10,
            "train.save_every": 10,
        },
    )
    done = run_app(TRAIN_SCRIPT, ["--config", str(write_config(workdir, cfg))], workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoints = workdir / "checkpoints" / "tiny"
    return {"workdir": workdir, "folder": folder, "checkpoints": checkpoints, "demo": demo_data}


def test_training_logs_zeroshot_equal_to_apps_evaluate(trained: dict) -> None:
    workdir, folder = trained["workdir"], trained["folder"]
    with open(workdir / "outputs" / "tiny" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/zeroshot/mean_acc1")]
    assert [int(r["step"]) for r in rows] == [10, 20, 30]
    out = workdir / "zs_val.json"
    done = run_app(
        EVALUATE_SCRIPT,
        ["zeroshot", "--checkpoint", str(trained["checkpoints"] / "checkpoint_latest.pt"), "--dataset",
         str(folder), "--split", "val", "--out", str(out)],
        workdir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(out.read_text())["summary"]
    logged = {k.removeprefix("val/"): float(v) for k, v in rows[-1].items() if k.startswith("val/zeroshot/")}
    assert set(summary) <= set(logged)
    for name, value in summary.items():
        assert logged[name] == pytest.approx(value, abs=1e-6), name
    assert {"zeroshot/vision/8/acc1", "zeroshot/audio/32/mean_per_class_recall"} <= set(summary)
    # checkpoint_best.pt is the validation with the best zero-shot mean top-1 (the first on a tie)
    best = max(rows, key=lambda r: float(r["val/zeroshot/mean_acc1"]))
    saved = torch.load(trained["checkpoints"] / "checkpoint_best.pt", map_location="cpu", weights_only=True)
    assert saved["best_metric"] == "val/zeroshot/mean_acc1" and saved["step"] == int(best["step"])
    table = done.stdout.splitlines()
    assert table[1].split() == ["modality", "dim", "top-1", "top-5", "per-class", "recall"]
    assert table[3].split()[:3] == ["vision", "8", f"{summary['zeroshot/vision/8/acc1']:.3f}"]


def _convert(dataset: list, folder: Path, classes: list[str] | None, templates: list[str] | None) -> None:
    from clip_benchmark.webdataset_builder import PIL_to_bytes, convert_dataset, convert_retrieval_dataset

    class Rows(list):
        """(image bytes, target) pairs with clip-benchmark's dataset attributes."""

    rows = Rows((PIL_to_bytes("png")(image), target) for image, target in dataset)
    if classes is None:
        convert_retrieval_dataset(rows, "test", str(folder), verbose=False)
    else:
        rows.classes, rows.templates = classes, templates
        convert_dataset(rows, "test", str(folder), verbose=False)


def test_zeroshot_and_retrieval_equal_clip_benchmarks_own(trained: dict, tmp_path: Path) -> None:
    from eg_data import read_all
    from eg_data.demo import WORDS

    raw = read_all(trained["demo"] / "test")
    images = [Image.open(io.BytesIO(r["png"])).convert("RGB") for r in raw]
    labels = [json.loads(r["json"])["label"] for r in raw]
    templates = ["a handwritten {c}", "the digit {c}"]
    _convert(list(zip(images, labels)), tmp_path / "cls", list(WORDS), templates)
    out = tmp_path / "ours.json"
    checkpoint = trained["checkpoints"] / "checkpoint_latest.pt"
    args = [
        "zeroshot",
        "--checkpoint",
        str(checkpoint),
        "--dataset",
        str(tmp_path / "cls"),
        "--out",
        str(out),
    ]
    assert evaluate_dispatch(args) == 0
    section = json.loads(out.read_text())["zeroshot"]["vision"]
    ours = section["dims"]
    embedder = Embedder.from_checkpoint(checkpoint)
    # retrieval: captions made distinct (a repeated caption ties, which clip-benchmark's topk breaks by
    # position and we rank at the average position), one caption per image
    seen, keep = set(), []
    for i, r in enumerate(raw):
        if r["txt"] not in seen:
            seen.add(r["txt"])
            keep.append(i)
    captions = [raw[i]["txt"].decode() for i in keep]
    _convert([(images[i], [c]) for i, c in zip(keep, captions)], tmp_path / "ret", None, None)
    image_emb, text_emb = embedder.embed_images([images[i] for i in keep]), embedder.embed_texts(captions)
    for dim in embedder.dims:
        face = ClipBenchmarkFace(embedder, dim)
        theirs = clip_benchmark_zeroshot(face, str(tmp_path / "cls"), "test")
        for name in ("acc1", "acc5", "mean_per_class_recall"):
            assert ours[str(dim)][name] == pytest.approx(theirs[name], abs=1e-3), (dim, name)
        theirs = clip_benchmark_retrieval(face, str(tmp_path / "ret"), "test")
        a, b = truncate_normalize(image_emb, dim), truncate_normalize(text_emb, dim)
        v2t, t2v = direction_metrics(a, b), direction_metrics(b, a)
        for k in (1, 5, 10):
            assert v2t[f"recall@{k}"] == pytest.approx(theirs[f"text_retrieval_recall@{k}"], abs=1e-3)
            assert t2v[f"recall@{k}"] == pytest.approx(theirs[f"image_retrieval_recall@{k}"], abs=1e-3)
        # beyond the figures: clip-benchmark's own classifier and logits equal ours (the 30-step model is
        # near chance, so equal accuracies alone would say little)
        from clip_benchmark.metrics.zeroshot_classification import run_classification, zero_shot_classifier

        with mock.patch("clip_benchmark.metrics.zeroshot_classification.tqdm", lambda x, **_: x):
            weights = zero_shot_classifier(face, face.tokenizer, list(WORDS), templates, "cpu", amp=False)
            loader = torch.utils.data.DataLoader(
                [(face.transform(im), y) for im, y in zip(images, labels)], batch_size=64
            )
            logits, _ = run_classification(face, weights, loader, "cpu", amp=False)
        classifier = text_classifier(class_embeddings(embedder, list(WORDS), templates), dim)
        torch.testing.assert_close(weights.T, classifier, atol=1e-5, rtol=0)
        mine = truncate_normalize(embedder.embed_images(images), dim) @ classifier.T
        torch.testing.assert_close(logits / 100.0, mine, atol=1e-5, rtol=0)
    predicted = [sum(column) for column in zip(*section["confusion"])]
    assert sum(n > 0 for n in predicted) >= 2, predicted  # not one class for every image


def test_linear_probe_command(trained: dict, tmp_path: Path, capsys) -> None:
    from sklearn.linear_model import LogisticRegression

    from apps.common.zeroshot_data import decode_media, read_split

    out = tmp_path / "probe.json"
    checkpoint = trained["checkpoints"] / "checkpoint_latest.pt"
    args = [
        "linear-probe",
        "--checkpoint",
        str(checkpoint),
        "--dataset",
        str(trained["folder"]),
        "--out",
        str(out),
    ]
    assert evaluate_dispatch(args + ["--modality", "vision", "--max-samples", "200"]) == 0
    report = json.loads(out.read_text())
    assert report["splits"] == {"train": 200, "val": 180, "test": 180}
    result = report["linear_probe"]["vision"]["dims"]
    assert set(result) == {"8", "16", "32"}
    # The top dim recomputed by hand: the chosen C refitted on the train embeddings, scored on test
    embedder = Embedder.from_checkpoint(checkpoint)
    feats = {}
    for split in ("train", "test"):
        samples = read_split(trained["folder"], split, 10, 200).samples
        items, kept, _ = decode_media(samples, "vision")
        emb = truncate_normalize(embedder.embed_images(items), 32).numpy()  # the probe's view, bit for bit
        feats[split] = (emb, [samples[i].label for i in kept])
    model = LogisticRegression(C=result["32"]["C"], max_iter=1000, random_state=0).fit(*feats["train"])
    assert result["32"]["acc1"] == pytest.approx((model.predict(feats["test"][0]) == feats["test"][1]).mean())
    assert "linear probe" in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_2(trained: dict, tmp_path: Path, capsys) -> None:
    from eg_data import read_all

    checkpoint = str(trained["checkpoints"] / "checkpoint_latest.pt")
    png = read_all(trained["demo"] / "test")[0]["png"]
    bare = tmp_path / "bare"  # shards without classnames.txt
    write_split(bare, "test", [{"key": "s0", "cls": 0, "png": png}])
    bad_class = tmp_path / "bad_class"  # class 12 in the shards, 4 class names
    write_split(
        bad_class, "test", [{"key": "k0", "cls": 3, "png": png}, {"key": "k1", "cls": 12, "png": png}]
    )
    write_task(bad_class, ["zero", "one", "two", "three"], ["the digit {c}"])
    no_brace = tmp_path / "templates.txt"
    no_brace.write_text("the digit {c}\na digit\n")
    cases = [
        (["--dataset", str(bare)], "bare/classnames.txt does not exist"),
        (
            ["--dataset", str(trained["folder"]), "--templates", str(no_brace)],
            "line 2: template 'a digit' has no",
        ),
        (["--dataset", str(bad_class)], "sample 'k1' of "),
        (["--dataset", str(bad_class)], "has class 12, which is not in the 4 class names"),
        (
            ["--dataset", str(trained["folder"]), "--dim", "12"],
            "dim=12 is not a Matryoshka dim of this model",
        ),
    ]
    for extra, message in cases:
        args = ["zeroshot", "--checkpoint", checkpoint, *extra, "--out", str(tmp_path / "x.json")]
        assert evaluate_dispatch(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.json").exists()
    # the subprocess entry point: the same line, exit 2, no traceback
    done = run_app(
        EVALUATE_SCRIPT, ["zeroshot", "--checkpoint", checkpoint, "--dataset", str(bare)], tmp_path
    )
    assert (
        done.returncode == 2 and done.stderr.strip().startswith("error: ") and "Traceback" not in done.stderr
    )


def test_bench_evaluations_quick(trained: dict, tmp_path: Path) -> None:
    """benchmarks/bench_evaluations.py runs through; its rows agree where the two tools must agree."""
    out = tmp_path / "bench.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_evaluations.py"
    args = [
        "--checkpoint",
        str(trained["checkpoints"] / "checkpoint_latest.pt"),
        "--demo",
        str(trained["demo"]),
    ]
    done = run_app(script, [*args, "--quick", "--out", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert {r["dim"] for r in rows} == {32} and len(rows) == 3 + 2 * 6
    for r in rows:
        # a repeated caption is the one place they differ (image -> text over every test sample)
        if not (r["task"] == "retrieval image->text" and r["data"].startswith("all")):
            assert r["ours"] == pytest.approx(r["clip_benchmark"], abs=1e-3), r
    assert "| zero-shot, images |" in done.stdout
