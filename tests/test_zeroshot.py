"""Zero-shot classification without a model: the CLIP text classifier and the metrics against a hand-computed
case and scikit-learn, CLIP_benchmark's wds layout written by clip-benchmark's own writer and read as is,
the demo's zero-shot folder, the linear probe's C selection, and the refusals (files, templates, classes,
eval.zeroshot and a zero-shot best_metric in a config)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: conftest's helpers
from apps.alignment.linear_probe import probe_at_dim
from apps.alignment.zeroshot import (
    classification_metrics,
    confusion,
    flatten_zeroshot,
    format_zeroshot_table,
    text_classifier,
)
from apps.common.cli import train_main
from apps.common.data_cli import data_main
from apps.common.zeroshot_data import (
    BenchmarkDataError,
    read_split,
    read_templates,
    task_of,
    write_split,
    write_task,
)
from conftest import REPO


def test_text_classifier_and_metrics_on_a_hand_computed_case() -> None:
    # 3 classes x 2 templates in 2-D. Class 0's prompts: (1, 0) and (0.6, 0.8) -> mean (0.8, 0.4),
    # renormalized (2, 1)/sqrt(5). Class 1's: (0, 1) twice -> (0, 1). Class 2's: (-1, 0) and (0, -1) ->
    # (-1, -1)/sqrt(2). The 4-D prompts are cut to their first 2 features first (a Matryoshka dim).
    prompts = torch.tensor(
        [
            [[1.0, 0.0, 5.0, 5.0], [0.6, 0.8, -3.0, 1.0]],
            [[0.0, 2.0, 1.0, 0.0], [0.0, 0.5, 0.0, 9.0]],
            [[-3.0, 0.0, 0.0, 0.0], [0.0, -1.0, 2.0, 2.0]],
        ]
    )
    classifier = text_classifier(prompts, dim=2)
    want = torch.tensor([[2.0, 1.0], [0.0, np.sqrt(5.0)], [-np.sqrt(2.5), -np.sqrt(2.5)]]) / np.sqrt(5.0)
    torch.testing.assert_close(classifier, want.float())
    # Images: (1, 0.1) -> class 0 (2.1/sqrt5 = 0.94 > 0.1); (0.2, 1) -> class 1 (1 > 1.4/sqrt5 = 0.63);
    # (-1, 0.2) -> class 2 (0.57) ahead of class 1 (0.2) and class 0 (-0.8); (1, 1) -> class 0
    # (3/sqrt5 = 1.34 > 1). True classes 0, 1, 1, 1: hits 1, 1, 0, 0.
    images = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.1], [0.2, 1.0], [-1.0, 0.2], [1.0, 1.0]]), dim=1
    )
    logits = images @ classifier.T
    assert logits.argmax(dim=1).tolist() == [0, 1, 2, 0]
    m = classification_metrics(logits, torch.tensor([0, 1, 1, 1]))
    assert m["acc1"] == 0.5
    # Per-class recall: class 0 1/1, class 1 1/3 (class 2 is absent from the targets: left out).
    assert m["mean_per_class_recall"] == pytest.approx((1 + 1 / 3) / 2)
    assert "acc5" not in m  # fewer than 5 classes: clip_benchmark reports no top-5 either
    # rows = true class: class 0 -> predicted 0; class 1 -> predicted 1, 2 and 0; class 2 never occurs
    assert confusion(logits, torch.tensor([0, 1, 1, 1])) == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]
    result = {"vision": {"dims": {"2": m}}}
    assert flatten_zeroshot(result) == {
        "zeroshot/vision/2/acc1": 0.5,
        "zeroshot/vision/2/mean_per_class_recall": m["mean_per_class_recall"],
        "zeroshot/mean_acc1": 0.5,
    }
    assert "0.500" in format_zeroshot_table(result)


def test_metrics_equal_scikit_learn_on_random_logits() -> None:
    from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score

    gen = torch.Generator().manual_seed(0)
    for num_classes in (6, 12):
        logits = torch.randn(300, num_classes, generator=gen)
        targets = torch.randint(0, num_classes, (300,), generator=gen)
        m = classification_metrics(logits, targets)
        labels = list(range(num_classes))
        assert m["acc1"] == pytest.approx(top_k_accuracy_score(targets, logits, k=1, labels=labels))
        assert m["acc5"] == pytest.approx(top_k_accuracy_score(targets, logits, k=5, labels=labels))
        assert m["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(targets, logits.argmax(1)))


def _webp(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="webp", lossless=True)
    return buf.getvalue()


@pytest.mark.filterwarnings(
    "ignore:This DataLoader will create 8 worker:UserWarning"
)  # convert_dataset's own
@pytest.mark.filterwarnings("ignore:WebDataset\\(shardshuffle:UserWarning")  # clip-benchmark's reader
def test_a_folder_written_by_clip_benchmark_is_read_as_is(tmp_path: Path) -> None:
    from clip_benchmark.datasets.builder import build_dataset
    from clip_benchmark.webdataset_builder import convert_dataset

    class Dataset(list):
        """(image bytes, class) pairs with the attributes convert_dataset writes out."""

    samples = Dataset((_webp(i), i % 3) for i in range(11))
    samples.classes = ["cat", "dog", "bird"]
    samples.templates = ["a photo of a {c}.", "a {c}"]
    convert_dataset(samples, "test", str(tmp_path), max_count=4, verbose=False)  # 3 shards: 4, 4, 3
    assert (tmp_path / "test" / "nshards.txt").read_text().strip() == "3"
    classnames, templates = task_of(tmp_path)
    assert classnames == ["cat", "dog", "bird"] and templates == ["a photo of a {c}.", "a {c}"]
    split = read_split(tmp_path, "test", len(classnames))
    assert [s.label for s in split.samples] == [i % 3 for i in range(11)]
    assert [s.image for s in split.samples] == [_webp(i) for i in range(11)]  # the bytes, untouched
    assert split.modalities == ["vision"]
    theirs = build_dataset("wds/x", root=str(tmp_path), split="test", task="zeroshot_classification")
    assert theirs.classes == classnames and theirs.templates == templates
    assert [int(label) for _, label in theirs] == [s.label for s in split.samples]


def test_layout_refusals(tmp_path: Path) -> None:
    rows = [{"key": f"s{i}", "cls": i % 2, "webp": _webp(i)} for i in range(4)]
    write_split(tmp_path, "test", rows)
    with pytest.raises(BenchmarkDataError, match="classnames.txt does not exist"):
        task_of(tmp_path)
    write_task(tmp_path, ["a", "b"], ["the {c}"])
    (tmp_path / "zeroshot_classification_templates.txt").write_text("the {c}\na photo\n")
    with pytest.raises(BenchmarkDataError, match=r"line 2: template 'a photo' has no '\{c\}' or '\{\}'"):
        task_of(tmp_path)
    assert read_templates(_write(tmp_path / "t.txt", "an {}\n{c}!\n")) == ["an {c}", "{c}!"]
    with pytest.raises(BenchmarkDataError, match="has class 1, which is not in the 1 class names"):
        read_split(tmp_path, "test", num_classes=1)
    with pytest.raises(BenchmarkDataError, match="val/nshards.txt does not exist"):
        read_split(tmp_path, "val", num_classes=2)
    write_split(tmp_path / "nocls", "test", [{"key": "s0", "webp": _webp(0)}])
    with pytest.raises(BenchmarkDataError, match="'s0' of .* has no .cls"):
        read_split(tmp_path / "nocls", "test", num_classes=2)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_open_clip_imagenet_names_and_templates_come_from_open_clip() -> None:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    names, templates = task_of(REPO, "openclip:imagenet", "openclip:imagenet")
    assert names == list(IMAGENET_CLASSNAMES) and len(templates) == 80
    assert [t.replace("{c}", "goldfish") for t in templates] == [
        f("goldfish") for f in OPENAI_IMAGENET_TEMPLATES
    ]


@pytest.mark.filterwarnings("ignore:WebDataset\\(shardshuffle:UserWarning")  # clip-benchmark's reader
def test_demo_zeroshot_folder_in_clip_benchmarks_layout(demo_data: Path, tmp_path: Path, capsys) -> None:
    from clip_benchmark.datasets.builder import build_dataset
    from eg_data import read_all
    from eg_data.demo import WORDS

    out = tmp_path / "demo_zeroshot"
    assert data_main(["demo-zeroshot", "--input", str(demo_data), "--out", str(out)]) == 0  # apps/data's
    assert json.loads(capsys.readouterr().out) == {"train": 1437, "val": 180, "test": 180}
    classnames, templates = task_of(out)
    assert classnames == list(WORDS)
    assert templates == ["a handwritten {c}", "the digit {c}", "handwritten number {c}", "{c}"]
    want = {raw["__key__"]: raw for raw in read_all(demo_data / "test")}
    split = read_split(out, "test", 10)
    assert split.modalities == ["vision", "audio"]
    for sample in split.samples:
        raw = want[sample.key]
        assert sample.label == json.loads(raw["json"])["label"]
        assert (sample.image, sample.audio) == (raw["png"], raw["flac"])
    theirs = build_dataset("wds/demo", root=str(out), split="test", task="zeroshot_classification")
    assert theirs.classes == classnames and theirs.templates == templates
    assert [int(label) for _, label in theirs] == [s.label for s in split.samples]


def test_linear_probe_chooses_c_on_the_validation_split() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 6))

    def split(n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 4, n)
        return centres[labels] + noise * rng.normal(size=(n, 6)), labels

    train, val, test = split(80, 1.0), split(60, 1.0), split(60, 1.0)
    grid = (1e-4, 1.0)  # 1e-4 shrinks every weight to ~0 (near chance); 1.0 fits
    m = probe_at_dim(train, val, test, grid)
    accs = {c: (LogisticRegression(C=c, max_iter=1000, random_state=0).fit(*train).predict(val[0]) == val[1]).mean()
            for c in grid}  # fmt: skip
    assert m["C"] == max(grid, key=lambda c: accs[c]) == 1.0
    assert m["val_acc1"] == pytest.approx(accs[1.0])
    chosen = LogisticRegression(C=1.0, max_iter=1000, random_state=0).fit(*train)
    assert m["acc1"] == pytest.approx((chosen.predict(test[0]) == test[1]).mean())
    assert m["acc1"] > 0.6


def _config(tmp_path: Path, **changes) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    for dotted, value in changes.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path = tmp_path / "zs.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"eval.zeroshot": {"dataset": ""}}, "eval.zeroshot.dataset is empty"),
        (
            {"eval.zeroshot": {"dataset": "d", "templates": ["the digit {c}", "a digit"]}},
            "eval.zeroshot.templates[1]='a digit' has no '{c}' or '{}'",
        ),
        (
            {"train.best_metric": "val/zeroshot/mean_acc1"},
            "is a zero-shot metric but eval.zeroshot is not set",
        ),
        (
            {"eval.zeroshot": {"dataset": "d"}, "train.best_metric": "val/zeroshot/vision/48/acc1"},
            "dim 48 is not evaluated (dims [32, 64, 128])",
        ),
        (
            {"eval.zeroshot": {"dataset": "d"}, "train.best_metric": "val/zeroshot/text/32/acc1"},
            "is not val/zeroshot/mean_acc1 or val/zeroshot/<vision|audio>/<dim>/",
        ),
    ],
)
def test_config_refuses_bad_zeroshot_settings_at_load(tmp_path: Path, capsys, changes, message) -> None:
    path = _config(tmp_path, **changes)
    assert train_main(["--config", str(path), "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: ") and message in err and len(err.splitlines()) == 1


def test_config_accepts_a_zeroshot_best_metric(tmp_path: Path, capsys) -> None:
    path = _config(
        tmp_path, **{"eval.zeroshot": {"dataset": "d"}, "train.best_metric": "val/zeroshot/audio/64/acc1"}
    )
    assert train_main(["--config", str(path), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["eval"]["zeroshot"] == {
        "dataset": "d",
        "split": "val",
        "templates": None,
        "max_samples": 0,
    }
