"""Matryoshka search over a trained stage-1 model's embeddings: the index file, exact and funnel search,
and `uv run apps/search index|query`.

An index (`SearchIndex`, one .npz file) holds the raw top-dim projections of images and/or audio (so
that the view at any dim is exactly the evaluation's `truncate_normalize`), their keys, modality and
label, and the checkpoint they came from with `weights_fingerprint` of its towers; a query refuses an
index whose fingerprint differs from the model that would embed the query.

`MatryoshkaSearcher.search` is exact inner-product search at one dim, or, given a shortlist dim, the
adaptive retrieval funnel of the MRL paper (Kusupati et al., 2022): rank the whole collection at a low
dim, keep `shortlist` candidates, re-rank those at the full dim. Below `FAISS_MIN_VECTORS` vectors the
scan is a torch matmul and a top-k (ties keep index order, as the evaluation's argmax does); from
there on it is a faiss `IndexFlatIP` (exact, multi-threaded, no (Q, N) score matrix).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from apps.alignment.config import BATCH_KEY
from apps.alignment.embed import Embedder, InputError, read_audio, read_image
from apps.common.retrieval import truncate_normalize

INDEX_FORMAT = "eg-search/1"
FAISS_MIN_VECTORS = 20_000  # a (1024, 20k) float32 score matrix is 80 MB; beyond, faiss scans in blocks
INDEXED = ("vision", "audio")  # what an index holds: a query of any modality retrieves these
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")  # eg-data's image and audio extensions
AUDIO_SUFFIXES = (".flac", ".wav")


def _top_stable(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of each row of `sims` (C, N), best first, ties in index order (as a stable full sort
    would give, and as the evaluation's argmax picks) at the cost of a top-k: rows where the k-th score
    ties with one left out are sorted in full."""
    scores, ids = torch.topk(sims, k, dim=1)  # (C, k), order among ties unspecified
    ids, by_id = ids.sort(dim=1)
    scores, order = scores.gather(1, by_id).sort(dim=1, descending=True, stable=True)
    ids = ids.gather(1, order)
    tied = ((sims >= scores[:, -1:]).sum(dim=1) > k).nonzero().flatten()
    if tied.numel():
        full_scores, full_ids = torch.sort(sims[tied], dim=1, descending=True, stable=True)
        scores[tied], ids[tied] = full_scores[:, :k], full_ids[:, :k]
    return scores, ids


class MatryoshkaSearcher:
    """Inner-product search over Matryoshka embeddings: (N, D) raw projections, viewed at any dim <= D."""

    def __init__(self, embeddings: torch.Tensor, use_faiss: bool | None = None) -> None:
        self.embeddings = embeddings.detach().float().cpu().contiguous()  # (N, D)
        self.size, self.max_dim = self.embeddings.shape
        self.use_faiss = self.size >= FAISS_MIN_VECTORS if use_faiss is None else use_faiss
        self._views: dict[int, torch.Tensor] = {}
        self._faiss: dict[int, Any] = {}

    def view(self, dim: int) -> torch.Tensor:
        """(N, dim): the first `dim` features of every row, L2-normalized (computed once per dim)."""
        if dim not in self._views:
            self._views[dim] = truncate_normalize(self.embeddings, dim).contiguous()
        return self._views[dim]

    def _faiss_index(self, dim: int) -> Any:
        if dim not in self._faiss:
            import faiss

            index = faiss.IndexFlatIP(dim)
            index.add(self.view(dim).numpy())
            self._faiss[dim] = index
        return self._faiss[dim]

    def top(self, queries: torch.Tensor, k: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-k of unit-norm `queries` (Q, dim) at `dim`: scores (Q, k) float32, ids (Q, k) long."""
        k = min(k, self.size)
        if self.use_faiss:
            scores, ids = self._faiss_index(dim).search(np.ascontiguousarray(queries.numpy()), k)
            return torch.from_numpy(scores), torch.from_numpy(ids)
        gallery = self.view(dim)
        out_scores, out_ids = [], []
        for start in range(0, queries.shape[0], 1024):
            scores, ids = _top_stable(queries[start : start + 1024] @ gallery.T, k)  # (C, N) -> (C, k)
            out_scores.append(scores)
            out_ids.append(ids)
        return torch.cat(out_scores), torch.cat(out_ids)

    def search(
        self,
        queries: torch.Tensor,
        k: int = 10,
        dim: int | None = None,
        shortlist_dim: int | None = None,
        shortlist: int = 200,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k rows for raw query projections (Q, >= dim): scores (Q, k), ids (Q, k), best first.

        Exact at `dim` (default the top dim); with `shortlist_dim`, the funnel: the `shortlist` best at
        `shortlist_dim`, re-ranked at `dim`.
        """
        dim = self.max_dim if dim is None else dim
        if not 1 <= dim <= min(self.max_dim, queries.shape[-1]):
            raise InputError(f"dim={dim} must be within 1..{min(self.max_dim, queries.shape[-1])}")
        if k < 1:
            raise InputError(f"k={k} must be >= 1")
        q = truncate_normalize(queries.float().cpu(), dim)  # (Q, dim)
        if shortlist_dim is None:
            return self.top(q, k, dim)
        if not 1 <= shortlist_dim <= dim:
            raise InputError(f"shortlist dim {shortlist_dim} must be within 1..{dim} (the re-ranking dim)")
        if shortlist < k:
            raise InputError(f"shortlist={shortlist} must be >= k={k}")
        _, candidates = self.top(
            truncate_normalize(queries.float().cpu(), shortlist_dim), shortlist, shortlist_dim
        )
        view = self.view(dim)
        # one query at a time: its (S, dim) candidates stay in cache (a (Q, S, dim) gather was 4x slower)
        sims = torch.stack([view[ids] @ row for ids, row in zip(candidates, q)])  # (Q, S)
        scores, order = torch.sort(sims, dim=1, descending=True, stable=True)
        k = min(k, candidates.shape[1])
        return scores[:, :k], candidates.gather(1, order[:, :k])


@dataclass
class SearchIndex:
    """Indexed items: raw projections (N, max_dim), keys, modality and label per row, and `meta`
    (format, checkpoint, fingerprint, step, max_dim, dims, source, skipped)."""

    embeddings: torch.Tensor
    keys: list[str]
    modality: list[str]
    labels: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        """Write one .npz file at `path` (exactly; atomically: a temporary file renamed)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f,
                embeddings=self.embeddings.float().numpy(),
                keys=np.array(self.keys, dtype=str),
                modality=np.array(self.modality, dtype=str),
                labels=self.labels.long().numpy(),
                meta=np.array(json.dumps(self.meta)),
            )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> SearchIndex:
        """Read an index written by `save`; InputError naming the file when it is missing or not one."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"index {str(path)!r} does not exist; build it with `uv run apps/search index`")
        try:
            data = np.load(path, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise TypeError("not an .npz archive")
            with data:
                meta = json.loads(str(data["meta"]))
                index = cls(
                    torch.from_numpy(data["embeddings"]),
                    [str(k) for k in data["keys"]],
                    [str(m) for m in data["modality"]],
                    torch.from_numpy(data["labels"]),
                    meta,
                )
        except Exception as exc:  # a user's file: not a zip, truncated, other arrays, bad JSON
            raise InputError(f"index {str(path)!r} is not a search index ({type(exc).__name__})") from exc
        if meta.get("format") != INDEX_FORMAT:
            raise InputError(
                f"index {str(path)!r} has format {meta.get('format')!r}, expected {INDEX_FORMAT!r}"
            )
        return index

    def rows(self, modality: str | None = None) -> torch.Tensor:
        """Row numbers of `modality` (all rows for None); InputError when the index has none."""
        rows = [i for i, m in enumerate(self.modality) if modality is None or m == modality]
        if not rows:
            raise InputError(f"the index has no {modality or ''} items (it has {self.counts() or 'none'})")
        return torch.tensor(rows, dtype=torch.long)

    def counts(self) -> dict[str, int]:
        return {m: self.modality.count(m) for m in INDEXED if m in self.modality}


def _index_meta(embedder: Embedder, source: str, skipped: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": INDEX_FORMAT,
        "checkpoint": str(Path(embedder.checkpoint).resolve()),
        "fingerprint": embedder.fingerprint,
        "step": embedder.aligned.step,
        "max_dim": embedder.max_dim,
        "dims": embedder.dims,
        "source": source,
        "skipped": skipped,
    }


def _sorted_index(rows: list[tuple[str, str, int, torch.Tensor]], meta: dict[str, Any]) -> SearchIndex:
    """Rows (key, modality, label, projection) ordered by key then modality, as the evaluation orders."""
    if not rows:
        raise InputError(f"{meta['source']}: nothing to index (no readable image or audio there)")
    rows.sort(key=lambda row: (row[0], INDEXED.index(row[1])))
    return SearchIndex(
        torch.stack([r[3] for r in rows]),
        [r[0] for r in rows],
        [r[1] for r in rows],
        torch.tensor([r[2] for r in rows], dtype=torch.long),
        meta,
    )


def index_shards(embedder: Embedder, shard_dir: str) -> SearchIndex:
    """Embed every image and audio clip of a shard folder, read as the evaluation reads a split (eg-data's
    eval mode, every sample once); unreadable samples are skipped and counted in meta["skipped"]."""
    from apps.common.loaders import eval_loader, loader_for_encoders

    wanted = [m for m in INDEXED if m in embedder.modalities]
    if not wanted:
        raise InputError(f"checkpoint {embedder.checkpoint} has no vision or audio tower: nothing to index")
    cfg = embedder.aligned.config
    encoders = {name: tower.encoder for name, tower in embedder.model.towers.items()}
    loader_cfg = loader_for_encoders(cfg.data.train, encoders, "data.train")
    loader = eval_loader(
        loader_cfg,
        shard_dir,
        embedder.batch_size,
        "--shards",
        modalities=[BATCH_KEY[m] for m in wanted],
        required=[],
    )
    rows: list[tuple[str, str, int, torch.Tensor]] = []
    for batch in loader:
        for modality in wanted:
            name = BATCH_KEY[modality]
            present = batch[f"{name}_present"].bool()
            if not bool(present.any()):
                continue
            inputs = {k: batch[k][present] for k in (name, f"{name}_mask") if k in batch}
            projected = embedder.project_batch(modality, inputs)  # (P, max_dim)
            picked = present.nonzero().flatten().tolist()
            rows += [
                (batch["key"][i], modality, int(batch["label"][i]), z) for i, z in zip(picked, projected)
            ]
    report = loader.data_report()
    skipped = {
        "count": sum(report["bad"].values()),
        "by_reason": {r: n for r, n in report["bad"].items() if n},
    }
    skipped["examples"] = report.get("examples", {})
    return _sorted_index(rows, _index_meta(embedder, str(shard_dir), skipped))


def index_files(embedder: Embedder, folder: str) -> SearchIndex:
    """Embed every image (jpg/jpeg/png/webp) and audio file (flac/wav) under `folder`, keyed by their path
    relative to it; unreadable files are skipped and counted (with up to 5 named) in meta["skipped"]."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"--files={folder!r} is not a folder")
    suffixes = {"vision": IMAGE_SUFFIXES, "audio": AUDIO_SUFFIXES}
    rows: list[tuple[str, str, int, torch.Tensor]] = []
    bad: list[str] = []
    for modality in (m for m in INDEXED if m in embedder.modalities):
        paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes[modality])
        read = read_image if modality == "vision" else read_audio
        project = embedder.project_images if modality == "vision" else embedder.project_audio
        for start in range(0, len(paths), embedder.batch_size):
            good: list[tuple[str, Any]] = []
            for path in paths[start : start + embedder.batch_size]:
                try:
                    good.append((path.relative_to(root).as_posix(), read(path, modality)))
                except InputError as exc:
                    bad.append(str(exc))
            if good:
                projected = project([item for _, item in good])
                rows += [(key, modality, -1, z) for (key, _), z in zip(good, projected)]
    skipped = {"count": len(bad), "examples": bad[:5]}
    return _sorted_index(rows, _index_meta(embedder, str(folder), skipped))


def query_embedder(
    index: SearchIndex, index_path: str, checkpoint: str = "", device: str = "cpu"
) -> Embedder:
    """The model that embeds queries: `checkpoint` or the index's own, refused unless its towers have the
    weights the index was built with."""
    path = checkpoint or index.meta["checkpoint"]
    if not Path(path).is_file():
        raise InputError(
            f"index {index_path!r} was built from checkpoint {path!r}, which does not exist; pass --checkpoint"
        )
    embedder = Embedder.from_checkpoint(path, device)
    if embedder.fingerprint != index.meta["fingerprint"]:
        raise InputError(
            f"index {index_path!r} was built from {index.meta['checkpoint']} (weights {index.meta['fingerprint']}), "
            f"not from {path} (weights {embedder.fingerprint}); rebuild the index with this checkpoint"
        )
    return embedder


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apps/search",
        description="Index images/audio with a stage-1 checkpoint; query by text, image or audio.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("index", help="embed a shard folder or a folder of files at the top dim")
    build.add_argument("--checkpoint", required=True, metavar="CKPT", help="stage-1 checkpoint")
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--shards", metavar="DIR", help="webdataset shard folder (e.g. data/demo/test)")
    source.add_argument("--files", metavar="DIR", help="folder of jpg/png/webp images and flac/wav audio")
    build.add_argument("--out", required=True, metavar="INDEX", help="index file to write (.npz)")
    build.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ask = sub.add_parser("query", help="print the top-k items for a text, image or audio query")
    ask.add_argument("--index", required=True, metavar="INDEX")
    what = ask.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", metavar="TEXT")
    what.add_argument("--image", metavar="FILE")
    what.add_argument("--audio", metavar="FILE")
    ask.add_argument("--k", type=int, default=10, help="number of results (default 10)")
    ask.add_argument("--modality", choices=INDEXED, help="search only these items (default: all)")
    ask.add_argument("--dim", type=int, help="ranking dim (default: the top dim)")
    ask.add_argument("--dim-shortlist", type=int, help="funnel: shortlist at this dim, re-rank at --dim")
    ask.add_argument("--shortlist", type=int, default=200, help="funnel shortlist size (default 200)")
    ask.add_argument("--checkpoint", default="", metavar="CKPT", help="embed the query with this checkpoint")
    ask.add_argument("--device", default="cpu")
    return parser


def _run_index(args: argparse.Namespace) -> None:
    embedder = Embedder.from_checkpoint(args.checkpoint, args.device)
    index = index_shards(embedder, args.shards) if args.shards else index_files(embedder, args.files)
    index.save(args.out)
    counts = ", ".join(f"{n} {m}" for m, n in index.counts().items())
    print(
        f"indexed {len(index.keys)} items ({counts}) from {index.meta['source']} at dim {embedder.max_dim} "
        f"with {args.checkpoint} (step {embedder.aligned.step}, weights {embedder.fingerprint}) -> {args.out}"
    )
    skipped = index.meta["skipped"]
    if skipped["count"]:
        print(
            f"skipped {skipped['count']} unreadable: {skipped.get('by_reason', '')} e.g. {skipped['examples']}"
        )


def _run_query(args: argparse.Namespace) -> None:
    index = SearchIndex.load(args.index)
    rows = index.rows(args.modality)
    # read the query before loading the model, so that a bad file is refused at once
    if args.text is not None:
        if not args.text.strip():
            raise InputError("--text is empty; pass a non-empty string")
        kind, item, shown = "text", args.text, f"text {args.text!r}"
    elif args.image is not None:
        kind, item, shown = "image", read_image(args.image, "--image"), f"image {args.image}"
    else:
        kind, item, shown = "audio", read_audio(args.audio, "--audio"), f"audio {args.audio}"
    embedder = query_embedder(index, args.index, args.checkpoint, args.device)
    dim = embedder.check_dim(args.dim)
    shortlist_dim = None if args.dim_shortlist is None else embedder.check_dim(args.dim_shortlist)
    project = {
        "text": embedder.project_texts,
        "image": embedder.project_images,
        "audio": embedder.project_audio,
    }
    query = project[kind]([item])  # (1, max_dim)
    searcher = MatryoshkaSearcher(index.embeddings[rows])
    scores, ids = searcher.search(query, args.k, dim, shortlist_dim, args.shortlist)
    how = (
        f"exact at dim {dim}"
        if shortlist_dim is None
        else f"funnel: {min(args.shortlist, len(rows))} at dim {shortlist_dim}, re-ranked at dim {dim}"
    )
    print(f"{shown} -> top {ids.shape[1]} of {len(rows)} {args.modality or 'indexed'} items ({how}):")
    has_labels = bool((index.labels >= 0).any())
    print(f"{'rank':>4}  {'score':>7}  {'modality':<8}  " + ("label  " if has_labels else "") + "key")
    for rank, (score, i) in enumerate(zip(scores[0].tolist(), ids[0].tolist()), start=1):
        row = int(rows[i])
        label = f"{int(index.labels[row]):>5}  " if has_labels else ""
        print(f"{rank:>4}  {score:>7.4f}  {index.modality[row]:<8}  {label}{index.keys[row]}")


def search_main(argv: Sequence[str] | None = None) -> int:
    """`uv run apps/search index ...` / `uv run apps/search query ...` (see `--help`)."""
    from apps.common.cli import run_guarded

    args = _parser().parse_args(argv)
    return run_guarded(lambda: _run_index(args) if args.command == "index" else _run_query(args))
