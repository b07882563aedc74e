"""Classification datasets in CLIP_benchmark's webdataset layout, read as they are and written for tests
and the demo; class names and prompt templates from the folder, from files, or from open_clip.

The layout (clip_benchmark.datasets.builder.build_wds_dataset, clip_benchmark.webdataset_builder):

    DIR/classnames.txt                            one class name per line, line i = class i
    DIR/zeroshot_classification_templates.txt     one prompt template per line, `{c}` = the class name
    DIR/<split>/nshards.txt                       the number of shards n
    DIR/<split>/0.tar ... <n-1>.tar               samples: `{key}.cls` (the class index as text) and an
                                                  image (webp/png/jpg/jpeg); here also audio (flac/wav/mp3)

CLIP_benchmark reads images only; a sample here may carry an image, a clip or both (the demo's digits are
both), and each modality the model has is evaluated on the samples that carry it. Templates may write the
class name's place as `{c}` (CLIP_benchmark) or `{}` (open_clip's style); a template with neither is
refused. `openclip:imagenet` names open_clip's ImageNet class names, and as templates its 80 OpenAI
prompts (`openclip:imagenet-simple`: its 7 short ones), read from `open_clip.zero_shot_metadata`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apps.common.config import ConfigError

CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")  # CLIP_benchmark's order
AUDIO_EXTS = ("flac", "wav", "mp3")
OPEN_CLIP_SETS = ("openclip:imagenet", "openclip:imagenet-simple")


class BenchmarkDataError(ConfigError):
    """A benchmark folder, class-name or template file that cannot be used (a user error: one line, exit 2)."""


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_classnames(spec: str | Path) -> list[str]:
    """Class names from a file (one per line) or `openclip:imagenet` (open_clip's 1,000 ImageNet names)."""
    if str(spec) in OPEN_CLIP_SETS:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        return list(IMAGENET_CLASSNAMES)
    path = Path(spec)
    if not path.is_file():
        raise BenchmarkDataError(f"class names file {str(path)!r} does not exist")
    names = _lines(path)
    if not names:
        raise BenchmarkDataError(f"class names file {str(path)!r} lists no class")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise BenchmarkDataError(f"class names file {str(path)!r} lists {twice[0]!r} twice")
    return names


def check_template(template: str, where: str) -> str:
    """`template` as CLIP_benchmark writes it (`{c}`); `{}` is accepted; BenchmarkDataError without either."""
    if "{c}" not in template and "{}" not in template:
        raise BenchmarkDataError(
            f"{where}: template {template!r} has no '{{c}}' or '{{}}' for the class name"
        )
    return template.replace("{}", "{c}")


def read_templates(spec: str | Path) -> list[str]:
    """Templates from a file (one per line), or open_clip's ImageNet sets (`openclip:imagenet`, 80 prompts;
    `openclip:imagenet-simple`, 7), each returned with `{c}` for the class name."""
    if str(spec) in OPEN_CLIP_SETS:
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

        chosen = OPENAI_IMAGENET_TEMPLATES if str(spec) == "openclip:imagenet" else SIMPLE_IMAGENET_TEMPLATES
        return [template("{c}") for template in chosen]  # open_clip's are functions of the class name
    path = Path(spec)
    if not path.is_file():
        raise BenchmarkDataError(f"templates file {str(path)!r} does not exist")
    templates = _lines(path)
    if not templates:
        raise BenchmarkDataError(f"templates file {str(path)!r} lists no template")
    return [check_template(t, f"{path} line {i + 1}") for i, t in enumerate(templates)]


def fill(template: str, classname: str) -> str:
    """The prompt of `classname` (str.replace, not str.format: a template may hold other braces)."""
    return template.replace("{c}", classname)


@dataclass
class BenchmarkSample:
    """One sample of a split: its key, shard, class index and the raw bytes of its image and clip."""

    key: str
    shard: str
    label: int
    image: bytes | None = None
    audio: bytes | None = None


@dataclass
class BenchmarkSplit:
    """A split's samples (in shard order) and the modalities that carry them."""

    folder: str
    split: str
    samples: list[BenchmarkSample] = field(default_factory=list)

    def having(self, modality: str) -> list[BenchmarkSample]:
        """The samples with an image (`vision`) or a clip (`audio`)."""
        attr = {"vision": "image", "audio": "audio"}[modality]
        return [s for s in self.samples if getattr(s, attr) is not None]

    @property
    def modalities(self) -> list[str]:
        """vision and/or audio: the modalities at least one sample has."""
        return [m for m in ("vision", "audio") if self.having(m)]


def task_of(
    folder: str | Path,
    classnames: str | Path | None = None,
    templates: str | Path | Sequence[str] | None = None,
) -> tuple[list[str], list[str]]:
    """The class names and templates of a benchmark folder, each from the folder's own file unless given
    (a file, an `openclip:` set, or for templates a list of strings)."""
    root = Path(folder)
    if not root.is_dir():
        raise BenchmarkDataError(f"dataset folder {str(root)!r} does not exist")
    if classnames is None:
        if not (root / CLASSNAMES_FILE).is_file():
            raise BenchmarkDataError(
                f"{root / CLASSNAMES_FILE} does not exist (CLIP_benchmark's layout); give --classnames FILE"
            )
        classnames = root / CLASSNAMES_FILE
    names = read_classnames(classnames)
    if templates is None:
        if not (root / TEMPLATES_FILE).is_file():
            raise BenchmarkDataError(
                f"{root / TEMPLATES_FILE} does not exist (CLIP_benchmark's layout); give --templates FILE"
            )
        templates = root / TEMPLATES_FILE
    if isinstance(templates, (str, Path)):
        prompts = read_templates(templates)
    else:
        prompts = [check_template(t, f"template {i}") for i, t in enumerate(templates)]
        if not prompts:
            raise BenchmarkDataError("the template list is empty")
    return names, prompts


def shard_paths(folder: str | Path, split: str) -> list[Path]:
    """`DIR/<split>/0.tar ... <n-1>.tar` as `<split>/nshards.txt` counts them (each must exist)."""
    split_dir = Path(folder) / split
    count_file = split_dir / "nshards.txt"
    if not count_file.is_file():
        raise BenchmarkDataError(f"{count_file} does not exist: {split_dir} is not a CLIP_benchmark split")
    text = count_file.read_text().strip()
    if not text.isdigit() or int(text) < 1:
        raise BenchmarkDataError(f"{count_file} holds {text!r}; expected the number of shards (>= 1)")
    paths = [split_dir / f"{i}.tar" for i in range(int(text))]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise BenchmarkDataError(f"{missing[0]} does not exist ({count_file} says {text} shards)")
    return paths


def read_split(folder: str | Path, split: str, num_classes: int, max_samples: int = 0) -> BenchmarkSplit:
    """Every sample of `DIR/<split>` (the first `max_samples` when > 0), read with webdataset as
    CLIP_benchmark reads it. A sample without `cls`, with a class outside 0..num_classes-1, or with neither
    an image nor a clip is refused (BenchmarkDataError naming the sample and its shard)."""
    import webdataset as wds

    paths = [str(p) for p in shard_paths(folder, split)]
    stream = wds.WebDataset(
        paths, shardshuffle=False, nodesplitter=lambda s: s, workersplitter=lambda s: s, empty_check=False
    )
    out = BenchmarkSplit(str(folder), split)
    for raw in stream:
        if max_samples and len(out.samples) >= max_samples:
            break
        key, shard = raw["__key__"], Path(raw.get("__url__", "?")).name
        where = f"sample {key!r} of {Path(folder) / split / shard}"
        if "cls" not in raw:
            raise BenchmarkDataError(f"{where} has no .cls (the class index)")
        text = raw["cls"].decode().strip() if isinstance(raw["cls"], bytes) else str(raw["cls"])
        if not text.lstrip("-").isdigit():
            raise BenchmarkDataError(f"{where}: .cls holds {text!r}, not a class index")
        label = int(text)
        if not 0 <= label < num_classes:
            raise BenchmarkDataError(
                f"{where} has class {label}, which is not in the {num_classes} class names (0..{num_classes - 1})"
            )
        image = next((raw[e] for e in IMAGE_EXTS if e in raw), None)
        audio = next((raw[e] for e in AUDIO_EXTS if e in raw), None)
        if image is None and audio is None:
            raise BenchmarkDataError(f"{where} has neither an image ({'/'.join(IMAGE_EXTS)}) nor audio")
        out.samples.append(BenchmarkSample(key, shard, label, image, audio))
    if not out.samples:
        raise BenchmarkDataError(f"{Path(folder) / split} holds no sample")
    return out


def decode_media(samples: Sequence[BenchmarkSample], modality: str) -> tuple[list[Any], list[int], list[str]]:
    """Decode the images (RGB PIL) or clips (16 kHz mono float32) of `samples` as eg-data decodes shard
    bytes: (decoded, indices into `samples` of the decoded ones, keys of the undecodable ones)."""
    from eg_data.transforms import decode_audio, decode_image

    decode = decode_image if modality == "vision" else decode_audio
    attr = "image" if modality == "vision" else "audio"
    items, kept, bad = [], [], []
    for i, sample in enumerate(samples):
        try:
            items.append(decode(getattr(sample, attr)))
            kept.append(i)
        except Exception as exc:  # noqa: BLE001 (PIL, soundfile raise many types): counted and said
            bad.append(f"{sample.key} ({type(exc).__name__})")
    return items, kept, bad


def write_split(
    folder: str | Path,
    split: str,
    samples: Iterable[dict[str, Any]],
    samples_per_shard: int = 1000,
) -> int:
    """Write `DIR/<split>/{0..n-1}.tar` + nshards.txt as clip_benchmark's `convert_dataset` does: each
    sample a dict with `key`, `cls` (int) and any of `png`/`webp`/`jpg`/`flac`/`wav` (bytes). Returns the
    number of samples written."""
    import webdataset as wds

    split_dir = Path(folder) / split
    split_dir.mkdir(parents=True, exist_ok=True)
    chunks: list[list[dict[str, Any]]] = [[]]
    for sample in samples:
        if len(chunks[-1]) == samples_per_shard:
            chunks.append([])
        chunks[-1].append(sample)
    for i, chunk in enumerate(chunks):
        with wds.TarWriter(str(split_dir / f"{i}.tar"), mtime=0) as writer:
            for sample in chunk:
                writer.write({"__key__": sample["key"], **{k: v for k, v in sample.items() if k != "key"}})
    (split_dir / "nshards.txt").write_text(f"{len(chunks)}\n")
    return sum(len(c) for c in chunks)


def write_task(folder: str | Path, classnames: Sequence[str], templates: Sequence[str]) -> None:
    """classnames.txt and zeroshot_classification_templates.txt of a benchmark folder."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    (root / CLASSNAMES_FILE).write_text("".join(f"{name}\n" for name in classnames))
    (root / TEMPLATES_FILE).write_text("".join(f"{check_template(t, 'template')}\n" for t in templates))


# The demo's zero-shot task: the digit words its captions use (eg_data.demo.WORDS) and templates in the
# captions' own phrasing ("a thick handwritten seven", "the digit seven, upright", "handwritten number
# seven, thin"), stripped of the stroke/slant/size words that vary per sample. Chosen from the caption
# templates, not tuned on any split.
DEMO_TEMPLATES = ("a handwritten {c}", "the digit {c}", "handwritten number {c}", "{c}")


def write_demo_zeroshot(
    demo_dir: str | Path, out_dir: str | Path, splits: Sequence[str] = ("train", "val", "test")
) -> dict[str, int]:
    """The demo dataset's splits (eg-data's shards, `label` in each sample's json) rewritten in
    CLIP_benchmark's layout with both the image and the spoken caption of each digit; class names zero..nine.
    Returns {split: samples written}."""
    import json

    from eg_data import read_all
    from eg_data.demo import WORDS

    counts = {}
    for split in splits:
        source = Path(demo_dir) / split
        if not source.is_dir():
            raise BenchmarkDataError(f"{source} does not exist; build the demo first (uv run apps/data demo)")
        rows = []
        for raw in read_all(source):
            meta = json.loads(raw["json"])
            rows.append(
                {"key": raw["__key__"], "cls": int(meta["label"]), "png": raw["png"], "flac": raw["flac"]}
            )
        counts[split] = write_split(out_dir, split, rows)
    write_task(out_dir, WORDS, DEMO_TEMPLATES)
    return counts


def write_demo_retrieval(demo_dir: str | Path, out_dir: str | Path, split: str = "test") -> int:
    """One demo split as a CLIP_benchmark retrieval folder (dataset_type.txt = retrieval; each sample its
    image and its one caption as `.txt`), for clip-benchmark's zeroshot_retrieval. Returns the count."""
    from eg_data import read_all

    source = Path(demo_dir) / split
    if not source.is_dir():
        raise BenchmarkDataError(f"{source} does not exist; build the demo first (uv run apps/data demo)")
    rows = [{"key": raw["__key__"], "png": raw["png"], "txt": raw["txt"]} for raw in read_all(source)]
    count = write_split(out_dir, split, rows)
    (Path(out_dir) / "dataset_type.txt").write_text("retrieval\n")
    return count


def iter_batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """`items` in consecutive slices of `size`."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


__all__ = [
    "BenchmarkDataError",
    "BenchmarkSample",
    "BenchmarkSplit",
    "decode_media",
    "fill",
    "read_classnames",
    "read_split",
    "read_templates",
    "task_of",
    "write_demo_zeroshot",
    "write_split",
    "write_task",
]
