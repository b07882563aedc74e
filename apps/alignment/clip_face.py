"""The face clip-benchmark evaluates: a model with `encode_image(pixels)` / `encode_text(tokens)`, a
`tokenizer(texts)` and an image `transform`, over a trained stage-1 model at one Matryoshka dim, so that
`clip_benchmark.metrics.zeroshot_classification.evaluate` and `zeroshot_retrieval.evaluate` run their own
code on our towers (the cross-check of apps/evaluate's figures).

A thin adapter over the apps' Embedder (apps/alignment/embed.py): images go through eg-data's transform
with the evaluation's settings (`Embedder.image_config`), the towers under the evaluation's precision, and
`truncate_normalize` at `dim`. Our text towers tokenize with their own tokenizers, so the "tokens" are the
strings themselves in a holder that `.to(device)` leaves as they are.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any
from unittest import mock

import torch
from eg_data import transform_image
from PIL import Image

from apps.common.retrieval import truncate_normalize


class TextTokens:
    """The strings of a batch, standing where clip-benchmark expects a token tensor."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = [str(t) for t in texts]

    def to(self, device: Any) -> TextTokens:
        """clip-benchmark moves tokens to its device; our towers tokenize themselves."""
        return self

    def __len__(self) -> int:
        return len(self.texts)


class ClipBenchmarkFace(torch.nn.Module):
    """encode_image / encode_text at `dim` (None = the top dim) of an Embedder's model, for clip-benchmark."""

    def __init__(self, embedder: Any, dim: int | None = None) -> None:
        super().__init__()
        self.embedder = embedder
        self.dim = embedder.check_dim(dim)

    def transform(self, image: Image.Image) -> torch.Tensor:
        """A PIL image -> (3, S, S) pixels, as the evaluation's loader makes them."""
        return transform_image(image.convert("RGB"), self.embedder.image_config)

    @staticmethod
    def tokenizer(texts: str | Sequence[str]) -> TextTokens:
        """clip-benchmark's tokenizer argument: the strings, held as they are."""
        return TextTokens([texts] if isinstance(texts, str) else texts)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) pixels -> (B, dim) unit-norm embeddings."""
        return truncate_normalize(self.embedder.project_batch("vision", {"image": pixels}), self.dim)

    def encode_text(self, tokens: TextTokens) -> torch.Tensor:
        """TextTokens -> (B, dim) unit-norm embeddings."""
        return truncate_normalize(self.embedder.project_texts(tokens.texts), self.dim)


@contextlib.contextmanager
def _quiet(module: Any) -> Iterator[None]:
    """clip-benchmark's progress bars and webdataset's shardshuffle warning kept out of the terminal."""
    with warnings.catch_warnings(), mock.patch.object(module, "tqdm", lambda items, **_: items):
        warnings.filterwarnings("ignore", message=".*shardshuffle", category=UserWarning)
        yield


def _accuracy(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> list[float]:
    """clip_benchmark's `zeroshot_classification.accuracy` with `.item()` where it calls float() on a
    shape-(1,) array, which NumPy >= 2.4 refuses (TypeError); the same arithmetic otherwise."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]


def clip_benchmark_zeroshot(face: ClipBenchmarkFace, folder: str, split: str, batch_size: int = 64) -> dict:
    """clip-benchmark's own zero-shot classification of `face` on a wds folder, read by its own
    `build_dataset("wds/...")`: {"acc1", "acc5", "mean_per_class_recall"}."""
    from clip_benchmark.datasets.builder import build_dataset
    from clip_benchmark.metrics import zeroshot_classification

    with _quiet(zeroshot_classification), mock.patch.object(zeroshot_classification, "accuracy", _accuracy):
        dataset = build_dataset(
            "wds/benchmark",
            root=folder,
            transform=face.transform,
            split=split,
            task="zeroshot_classification",
        )
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=0)
        return zeroshot_classification.evaluate(
            face, loader, face.tokenizer, dataset.classes, dataset.templates, "cpu", amp=False
        )


def clip_benchmark_retrieval(
    face: ClipBenchmarkFace, folder: str, split: str, ks: Sequence[int] = (1, 5, 10), batch_size: int = 64
) -> dict:
    """clip-benchmark's own image-text retrieval of `face` on a wds retrieval folder (dataset_type.txt =
    retrieval): {"image_retrieval_recall@k" (text -> image), "text_retrieval_recall@k" (image -> text)}."""
    from clip_benchmark.datasets.builder import build_dataset, image_captions_collate_fn
    from clip_benchmark.metrics import zeroshot_retrieval

    with _quiet(zeroshot_retrieval):
        dataset = build_dataset(
            "wds/benchmark", root=folder, transform=face.transform, split=split, task="zeroshot_retrieval"
        )
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, num_workers=0, collate_fn=image_captions_collate_fn
        )
        return zeroshot_retrieval.evaluate(
            face, loader, face.tokenizer, "cpu", amp=False, recall_k_list=list(ks)
        )
