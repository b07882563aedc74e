"""The embedding API and Matryoshka search on a tiny trained stage-1 model: embeddings equal the
evaluation's, the search equals brute force and faiss, the funnel against a hand-built ranking, text ->
image label@1 equal to eval.json's, and the apps/search command line (its output and its refusals)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: conftest's helpers
from apps.alignment.embed import Embedder, InputError
from apps.alignment.evaluate import collect_embeddings, retrieval_result
from apps.alignment.search import MatryoshkaSearcher, SearchIndex, index_files, index_shards, search_main
from apps.common.loaders import eval_loader, loader_for_encoders
from apps.common.retrieval import truncate_normalize
from conftest import REPO, TRAIN_SCRIPT, run_app, tiny_config, write_config

pytestmark = pytest.mark.slow
SEARCH_SCRIPT = REPO / "apps" / "search" / "__main__.py"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> dict:
    """A 4-step tiny model, its embedder, the test split's raw samples and the evaluation's embeddings."""
    from eg_data import read_all

    workdir = tmp_path_factory.mktemp("embed_search")
    config = write_config(workdir, tiny_config(workdir, demo_data))
    done = run_app(TRAIN_SCRIPT, ["--config", str(config)], workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = workdir / "checkpoints" / "tiny" / "checkpoint_latest.pt"
    embedder = Embedder.from_checkpoint(checkpoint)
    cfg = embedder.aligned.config
    encoders = {name: tower.encoder for name, tower in embedder.model.towers.items()}
    loader_cfg = loader_for_encoders(cfg.data.train, encoders, "data.train")
    loader = eval_loader(loader_cfg, str(demo_data / "test"), cfg.eval.batch_size, "data.test_dir")
    collected = collect_embeddings(embedder.model, loader, torch.device("cpu"), cfg.train.precision)
    raw = {sample["__key__"]: sample for sample in read_all(demo_data / "test")}
    return {
        "workdir": workdir,
        "checkpoint": checkpoint,
        "embedder": embedder,
        "collected": collected,
        "raw": raw,
        "test_dir": demo_data / "test",
    }


def _write_files(raw: dict, keys: list[str], folder: Path) -> tuple[list[Path], list[Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    images, audio = [], []
    for key in keys:
        images.append(folder / f"{key}.png")
        images[-1].write_bytes(raw[key]["png"])
        audio.append(folder / f"{key}.flac")
        audio[-1].write_bytes(raw[key]["flac"])
    return images, audio


def test_api_embeddings_equal_the_evaluations(trained: dict, tmp_path: Path) -> None:
    embedder, collected, raw = trained["embedder"], trained["collected"], trained["raw"]
    rows = list(range(0, len(collected["keys"]), 4))  # 45 held-out samples spread over the split
    keys = [collected["keys"][i] for i in rows]
    image_paths, audio_paths = _write_files(raw, keys, tmp_path)
    pil_images = [Image.open(io.BytesIO(raw[k]["png"])) for k in keys]
    wave_rates = [soundfile.read(io.BytesIO(raw[k]["flac"]), dtype="float32") for k in keys]  # 22.05 kHz
    captions = [raw[k]["txt"].decode() for k in keys]
    odd_batches = Embedder(embedder.aligned, batch_size=7)  # other batch boundaries than the evaluation's
    assert embedder.dims == [8, 16, 32]
    for dim in embedder.dims:
        want = {
            m: truncate_normalize(collected["embeddings"][m][rows], dim) for m in ("vision", "audio", "text")
        }
        got = {
            "vision": [embedder.embed_images(image_paths, dim), odd_batches.embed_images(pil_images, dim)],
            "audio": [
                embedder.embed_audio(audio_paths, dim),
                odd_batches.embed_audio([(wave, rate) for wave, rate in wave_rates], dim),
            ],
            "text": [embedder.embed_texts(captions, dim), odd_batches.embed_texts(captions, dim)],
        }
        for modality, results in got.items():
            for result in results:
                assert result.shape == (len(keys), dim)
                torch.testing.assert_close(result, want[modality], atol=1e-5, rtol=0)
                torch.testing.assert_close(result.norm(dim=1), torch.ones(len(keys)), atol=1e-6, rtol=0)
    # the raw projections, and a 16 kHz array input, match too
    from eg_data.transforms import decode_audio

    waves_16k = [decode_audio(raw[k]["flac"]) for k in keys[:5]]
    torch.testing.assert_close(
        embedder.project_audio(waves_16k), collected["embeddings"]["audio"][rows[:5]], atol=1e-5, rtol=0
    )


def test_dim_policy_and_bad_inputs_are_one_line_errors(trained: dict, tmp_path: Path) -> None:
    embedder = trained["embedder"]
    assert embedder.embed_texts("a small one").shape == (1, 32)  # one string alone; None = the top dim
    for bad in (0, 12, 33, 64, "8", 8.0, True):
        with pytest.raises(
            InputError, match=r"^dim=.* is not a Matryoshka dim of this model; use one of \[8, 16, 32\]"
        ):
            embedder.embed_texts(["a small one"], dim=bad)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    cases = [
        (lambda: embedder.embed_images([tmp_path / "missing.png"]), "image 0 '.*missing.png' does not exist"),
        (lambda: embedder.embed_images([garbage]), "image 0 '.*garbage.png' is not a readable image"),
        (lambda: embedder.embed_audio([garbage]), "audio 0 '.*garbage.png' is not readable audio"),
        (lambda: embedder.embed_audio([np.zeros(0, np.float32)]), "audio 0 is an array of shape"),
        (lambda: embedder.embed_texts(["fine", "  "]), "text 1 is '  '; pass a non-empty string"),
    ]
    for call, message in cases:
        with pytest.raises(InputError, match=message) as info:
            call()
        assert "\n" not in str(info.value)


def test_exact_search_equals_brute_force_and_faiss() -> None:
    gen = torch.Generator().manual_seed(0)
    embeddings = torch.randn(500, 32, generator=gen) * torch.linspace(2.0, 0.2, 32)  # (N, D), decaying
    queries = torch.randn(7, 32, generator=gen)
    torch_search, faiss_search = (
        MatryoshkaSearcher(embeddings),
        MatryoshkaSearcher(embeddings, use_faiss=True),
    )
    assert not torch_search.use_faiss
    for dim in (8, 32):
        brute = truncate_normalize(queries, dim) @ truncate_normalize(embeddings, dim).T  # (Q, N)
        want_scores, want_ids = brute.sort(dim=1, descending=True)
        scores, ids = torch_search.search(queries, k=10, dim=dim)
        assert torch.equal(ids, want_ids[:, :10])
        torch.testing.assert_close(scores, want_scores[:, :10])
        f_scores, f_ids = faiss_search.search(queries, k=10, dim=dim)
        assert torch.equal(f_ids, ids)
        torch.testing.assert_close(f_scores, scores, atol=1e-5, rtol=0)
    # a shortlist of the whole collection re-ranks everything: the funnel is then exact
    f_scores, f_ids = torch_search.search(queries, k=10, shortlist_dim=8, shortlist=500)
    assert torch.equal(f_ids, torch_search.search(queries, k=10)[1])


def test_ties_rank_in_index_order_like_the_evaluations_argmax() -> None:
    b = [0.0, 1.0, 0.0]
    items = torch.tensor([[1.0, 0.0, 0.0], b, b, [0.0, 0.8, 0.6], b, [0.0, 0.0, 1.0]])  # b at rows 1, 2, 4
    query = torch.tensor([[0.0, 2.0, 0.1]])
    searcher = MatryoshkaSearcher(items)
    for k, want in ((1, [1]), (2, [1, 2]), (3, [1, 2, 4]), (4, [1, 2, 4, 3])):
        assert searcher.search(query, k=k)[1].tolist() == [want], k
        assert searcher.search(query, k=k, shortlist_dim=2, shortlist=5)[1].tolist() == [want], k
    sims = truncate_normalize(query, 3) @ truncate_normalize(items, 3).T
    assert int(sims.argmax()) == 1


def test_funnel_shortlist_at_low_dim_then_rerank_at_full_dim() -> None:
    # At dim 2 the query [1, 0] prefers a (cos 1) over b (cos 0.994); at dim 4 b wins (0.821 vs 0.707).
    items = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.9, 0.1, 5.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    query = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    searcher = MatryoshkaSearcher(items)
    scores, ids = searcher.search(query, k=1)
    assert ids.tolist() == [[1]] and scores.item() == pytest.approx(5.9 / (2**0.5 * float(items[1].norm())))
    scores, ids = searcher.search(query, k=1, shortlist_dim=2, shortlist=1)  # b never reaches the re-rank
    assert ids.tolist() == [[0]] and scores.item() == pytest.approx(2**-0.5)
    scores, ids = searcher.search(query, k=2, shortlist_dim=2, shortlist=2)  # a and b re-ranked at dim 4
    assert ids.tolist() == [[1, 0]]
    with pytest.raises(InputError, match="shortlist=1 must be >= k=2"):
        searcher.search(query, k=2, shortlist_dim=2, shortlist=1)


def test_text_to_image_label_match_equals_the_evaluations(trained: dict) -> None:
    embedder, collected = trained["embedder"], trained["collected"]
    index = index_shards(embedder, str(trained["test_dir"]))
    vision = index.rows("vision")
    assert [index.keys[i] for i in vision] == collected["keys"]
    torch.testing.assert_close(index.embeddings[vision], collected["embeddings"]["vision"], atol=1e-5, rtol=0)
    captions = [trained["raw"][k]["txt"].decode() for k in collected["keys"]]
    queries = embedder.project_texts(captions)  # (N, max_dim)
    searcher = MatryoshkaSearcher(index.embeddings[vision])
    labels = index.labels[vision]
    result = retrieval_result(collected, embedder.aligned.config, embedder.dims)
    for dim in embedder.dims:
        _, top1 = searcher.search(queries, k=1, dim=dim)
        ours = float((labels[top1[:, 0]] == collected["labels"]).double().mean())
        assert ours == result["vision_text"][str(dim)]["text_to_vision"]["label_match@1"], dim


def test_index_files_skips_and_counts_unreadable_files(trained: dict, tmp_path: Path) -> None:
    embedder, raw = trained["embedder"], trained["raw"]
    keys = sorted(raw)[:3]
    images, _ = _write_files(raw, keys, tmp_path / "files" / "sub")
    (tmp_path / "files" / "broken.jpg").write_bytes(b"\x89PNG garbage")
    (tmp_path / "files" / "notes.txt").write_text("not indexed")
    index = index_files(embedder, str(tmp_path / "files"))
    assert index.counts() == {"vision": 3, "audio": 3}
    assert index.meta["skipped"]["count"] == 1 and "broken.jpg" in index.meta["skipped"]["examples"][0]
    assert index.keys[:2] == [f"sub/{keys[0]}.flac", f"sub/{keys[0]}.png"]  # keys are relative paths, sorted
    vision = index.rows("vision")
    torch.testing.assert_close(index.embeddings[vision], embedder.project_images(images), atol=1e-6, rtol=0)
    assert (index.labels == -1).all()


def test_search_app_index_and_query(trained: dict, tmp_path: Path) -> None:
    checkpoint, workdir = trained["checkpoint"], trained["workdir"]
    out = tmp_path / "test_index.npz"
    done = run_app(
        SEARCH_SCRIPT,
        ["index", "--checkpoint", str(checkpoint), "--shards", str(trained["test_dir"]), "--out", str(out)],
        workdir,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("indexed 360 items (180 vision, 180 audio)")
    text = "a small seven upright"
    done = run_app(
        SEARCH_SCRIPT,
        ["query", "--index", str(out), "--text", text, "--k", "5", "--modality", "vision"],
        workdir,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0] == f"text {text!r} -> top 5 of 180 vision items (exact at dim 32):"
    printed = [line.split() for line in lines[2:]]
    index = SearchIndex.load(out)
    vision = index.rows("vision")
    scores, ids = MatryoshkaSearcher(index.embeddings[vision]).search(
        trained["embedder"].project_texts([text]), k=5
    )
    assert [row[4] for row in printed] == [index.keys[vision[i]] for i in ids[0].tolist()]
    assert [float(row[1]) for row in printed] == pytest.approx(scores[0].tolist(), abs=6e-5)


def _main(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = search_main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_search_queries_and_refusals_in_process(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    embedder, raw, checkpoint = trained["embedder"], trained["raw"], trained["checkpoint"]
    out = tmp_path / "index.npz"
    assert (
        _main(
            [
                "index",
                "--checkpoint",
                str(checkpoint),
                "--shards",
                str(trained["test_dir"]),
                "--out",
                str(out),
            ],
            capsys,
        )[0]
        == 0
    )
    key = sorted(raw)[10]
    images, audio = _write_files(raw, [key], tmp_path / "q")
    code, stdout, _ = _main(["query", "--index", str(out), "--image", str(images[0]), "--k", "3"], capsys)
    first = stdout.splitlines()[2].split()
    assert (
        code == 0
        and float(first[1]) == pytest.approx(1.0, abs=1e-4)
        and first[2:] == ["vision", str(raw_label(raw, key)), key]
    )
    code, stdout, _ = _main(
        [
            "query",
            "--index",
            str(out),
            "--audio",
            str(audio[0]),
            "--modality",
            "audio",
            "--dim-shortlist",
            "8",
            "--shortlist",
            "20",
        ],
        capsys,
    )
    assert code == 0 and "funnel: 20 at dim 8, re-ranked at dim 32" in stdout.splitlines()[0]
    assert stdout.splitlines()[2].split()[2:] == ["audio", str(raw_label(raw, key)), key]

    other = tmp_path / "other.pt"  # the same model with one tower weight changed
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    name = next(k for k in state["model"] if k.startswith("towers.text") and k.endswith("weight"))
    state["model"][name] = state["model"][name] + 0.01
    torch.save(state, other)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image")
    not_index = tmp_path / "not_index.npz"
    not_index.write_text("hello")
    refusals = [
        (["--image", str(tmp_path / "missing.png")], "--image '.*missing.png' does not exist"),
        (["--image", str(garbage)], "--image '.*garbage.png' is not a readable image"),
        (["--audio", str(garbage)], "--audio '.*garbage.png' is not readable audio"),
        (
            ["--text", "a one", "--checkpoint", str(other)],
            f"was built from .*checkpoint_latest.pt \\(weights {embedder.fingerprint}\\), not from .*other.pt",
        ),
        (
            ["--text", "a one", "--dim", "12"],
            r"dim=12 is not a Matryoshka dim of this model; use one of \[8, 16, 32\]",
        ),
        (["--text", "a one", "--dim-shortlist", "16", "--dim", "8"], "shortlist dim 16 must be within 1..8"),
        (["--text", "a one", "--k", "0"], "k=0 must be >= 1"),
    ]
    for extra, message in refusals:
        code, stdout, stderr = _main(["query", "--index", str(out), *extra], capsys)
        assert code == 2 and stdout == "", extra
        assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error: "), stderr
        assert __import__("re").search(message, stderr), (message, stderr)
    for index_path, message in (
        (tmp_path / "none.npz", "does not exist"),
        (not_index, "is not a search index"),
    ):
        code, _, stderr = _main(["query", "--index", str(index_path), "--text", "a one"], capsys)
        assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1
    code, _, stderr = _main(
        ["index", "--checkpoint", str(checkpoint), "--shards", str(tmp_path / "nope"), "--out", str(out)],
        capsys,
    )
    assert code == 2 and stderr.startswith("error: --shards=") and "does not exist" in stderr


def raw_label(raw: dict, key: str) -> int:
    import json

    return int(json.loads(raw[key]["json"])["label"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_embeddings_on_gpu_equal_cpu(trained: dict) -> None:
    cpu = trained["embedder"]
    gpu = Embedder.from_checkpoint(trained["checkpoint"], "cuda")
    captions = [trained["raw"][k]["txt"].decode() for k in sorted(trained["raw"])[:20]]
    torch.testing.assert_close(gpu.embed_texts(captions), cpu.embed_texts(captions), atol=1e-4, rtol=0)
    assert gpu.fingerprint == cpu.fingerprint
