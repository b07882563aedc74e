"""The web demo of the trained models: `uv run apps/demo_ui --checkpoint STAGE2 [--index INDEX]`.

Tab "Ask": upload an image and/or an audio file, or pick a held-out sample (the stage-2 config's
data.test_dir, or --samples), type a question and see the stage-2 model's answer (`load_qa(...).answer`,
the same call as `uv run apps/ask`); for a held-out sample's own question the dataset's answer is shown
beside it. Tab "Search": type text and see the nearest images and audio of an index built by
`uv run apps/search index` (the same exact top-dim search as `apps/search query --modality ...`), the
samples read from the shard folder the index names (or --shards).

The logic (`DemoSearch`, `DemoAsk`; `ShardSamples` in apps/common/ui.py) is plain Python; `build_app`
lays gradio around it. gradio is the apps' optional `ui` extra: it is imported only when the demo starts,
and its absence is one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apps.alignment.embed import InputError
from apps.alignment.search import MatryoshkaSearcher, SearchIndex
from apps.common.ui import ShardSamples

NUM_SAMPLES_LISTED = 40  # held-out samples offered in the Ask tab's picker
# small images (the demo's 32 px digits) shown large with sharp pixels
CSS = "#image img { width: 100%; height: 100%; object-fit: contain } img { image-rendering: pixelated }"
INSTALL_HINT = (
    "the web demo needs gradio, the apps' ui extra: uv sync --extra ui (pip install 'edge-glass[ui]')"
)


@dataclass
class Hit:
    """One search result: rank (1 = best), key, inner-product score at the top dim, label (-1: none),
    and the file to show (image or audio)."""

    rank: int
    key: str
    score: float
    label: int
    path: str | None


class DemoSearch:
    """Text -> the nearest indexed images and audio, each modality searched on its own exactly at the top
    dim: the ranking `apps/search query --text T --modality M --k K` prints."""

    def __init__(self, index_path: str, shards: str = "", device: str = "cpu", aligned: Any = None) -> None:
        """`aligned`: a loaded stage-1 model (the QA model's towers) that embeds the queries when its tower
        weights are those the index was built with, instead of loading the index's checkpoint again."""
        from apps.alignment.embed import Embedder
        from apps.alignment.search import query_embedder

        self.index_path = index_path
        self.index = SearchIndex.load(index_path)
        source = shards or self.index.meta["source"]
        self.files_root: Path | None = None
        self.samples: ShardSamples | None = None
        if Path(source, self.index.keys[0]).is_file():  # an index of a folder of files: keys are paths
            self.files_root = Path(source)
        else:
            what = "--shards" if shards else f"the folder index {index_path!r} was built from (--shards)"
            self.samples = ShardSamples(source, what)
            absent = [k for k in self.index.keys if k not in self.samples.info]
            if absent:
                raise InputError(
                    f"{source}: {len(absent)} indexed keys are not there (e.g. {absent[0]!r}); "
                    "pass --shards with the folder the index was built from"
                )
        reused = Embedder(aligned) if aligned is not None else None
        if reused is not None and reused.fingerprint == self.index.meta["fingerprint"]:
            self.embedder = reused
        else:  # the index's own checkpoint, refused unless its weights are the index's
            self.embedder = query_embedder(self.index, index_path, "", device)
        self.searchers = {}
        for modality in self.index.counts():
            rows = self.index.rows(modality)
            self.searchers[modality] = (rows, MatryoshkaSearcher(self.index.embeddings[rows]))

    @property
    def modalities(self) -> list[str]:
        return list(self.searchers)

    def search(self, text: str, k: int) -> dict[str, list[Hit]]:
        """{modality: its top-k hits for `text`, best first}; an empty text is an InputError."""
        if not text or not text.strip():
            raise InputError("type some text to search for")
        query = self.embedder.project_texts([text])  # (1, max_dim)
        found: dict[str, list[tuple[int, str, float, int]]] = {}
        for modality, (rows, searcher) in self.searchers.items():
            scores, ids = searcher.search(query, k)
            found[modality] = [
                (rank, self.index.keys[int(rows[i])], score, int(self.index.labels[int(rows[i])]))
                for rank, (score, i) in enumerate(zip(scores[0].tolist(), ids[0].tolist()), start=1)
            ]
        keys = sorted({key for hits in found.values() for _, key, _, _ in hits})
        if self.samples is not None:
            files = self.samples.media(keys)
        else:
            files = {key: (str(self.files_root / key),) * 2 for key in keys}
        slot = {"vision": 0, "audio": 1}
        return {
            m: [Hit(r, key, s, label, files[key][slot[m]]) for r, key, s, label in hits]
            for m, hits in found.items()
        }


class DemoAsk:
    """A stage-2 model and held-out samples to ask it about."""

    def __init__(self, checkpoint: str, samples: str = "", device: str = "cpu") -> None:
        from apps.qa.load import load_qa

        self.checkpoint = checkpoint
        self.assistant = load_qa(checkpoint, device)
        self.modalities = list(self.assistant.modalities)
        self.samples: ShardSamples | None = None
        self.samples_note = ""
        test_dir = samples or self.assistant.config.data.test_dir
        if samples or Path(test_dir).is_dir():
            self.samples = ShardSamples(test_dir, "--samples" if samples else "data.test_dir")
        else:
            self.samples_note = f"data.test_dir {test_dir!r} is not here: pass --samples DIR to pick samples"

    def answer(self, question: str, image: str | None, audio: str | None) -> str:
        """The model's answer to `question` about the given image and/or audio files."""
        if not question or not question.strip():
            raise InputError("type a question")
        given = {"image": image, "audio": audio}
        kwargs = {name: path for name, path in given.items() if path}
        return self.assistant.answer(question.strip(), **kwargs)

    def sample_questions(self, key: str) -> dict[str, str]:
        """{question: the dataset's answer} of a held-out sample."""
        assert self.samples is not None
        qa = self.samples.info[key]["json"].get("qa", [])
        return {pair["question"]: str(pair["answer"]) for pair in qa}


def _results_table(found: dict[str, list[Hit]]) -> str:
    lines = ["| modality | rank | score | label | key |", "| --- | --- | --- | --- | --- |"]
    for modality, hits in found.items():
        for hit in hits:
            label = str(hit.label) if hit.label >= 0 else ""
            lines.append(f"| {modality} | {hit.rank} | {hit.score:.4f} | {label} | {hit.key} |")
    return "\n".join(lines)


def build_app(ask: DemoAsk, search: DemoSearch | None, k: int = 4) -> Any:
    """The gradio Blocks of the demo: the Ask and Search tabs around `ask` and `search`."""
    import gradio as gr

    from apps.common.cli import user_error_types

    def guarded(fn: Any) -> Any:
        def call(*args: Any) -> Any:
            try:
                return fn(*args)
            except user_error_types() as exc:  # a user's input: shown in the page, not a traceback
                line = str(exc).strip().splitlines()[0]
                print(f"error: {line}", file=sys.stderr, flush=True)  # one line here too, no traceback
                raise gr.Error(line, print_exception=False) from exc

        return call

    def pick(key: str | None) -> tuple[Any, ...]:
        if not key or ask.samples is None:
            return None, None, gr.update(choices=[], value=None), "", None, "", ""
        image, audio = ask.samples.media([key])[key]
        questions = list(ask.sample_questions(key))
        caption = ask.samples.info[key]["txt"]
        note = f"held-out sample `{key}`" + (f": *{caption}*" if caption else "")
        return (
            image if "vision" in ask.modalities else None,
            audio if "audio" in ask.modalities else None,
            gr.update(choices=questions, value=None),
            note,
            key,
            "",  # the previous answer and its note belong to other inputs
            "",
        )

    def answer(question: str, image: str | None, audio: str | None, picked: str | None) -> tuple[str, str]:
        start = time.perf_counter()
        reply = ask.answer(question, image, audio)
        given = (
            " + ".join(name for name, item in (("image", image), ("audio", audio)) if item) or "none (blind)"
        )
        info = (
            f"inputs: {given}; answered by step {ask.assistant.step} in {time.perf_counter() - start:.2f} s"
        )
        info += "" if reply else " (an empty answer)"
        expected = ask.sample_questions(picked).get(question.strip()) if picked and ask.samples else None
        if expected is not None:
            info += f"; the dataset's answer for sample {picked}: **{expected}**"
        return reply, info

    def find(text: str) -> tuple[Any, ...]:
        assert search is not None
        found = search.search(text, k)
        gallery = [(h.path, f"{h.key} ({h.score:.3f})") for h in found.get("vision", [])]
        players = [
            gr.update(value=h.path, label=f"{h.rank}. {h.key} ({h.score:.3f})", visible=True)
            for h in found.get("audio", [])
        ]
        players += [gr.update(value=None, visible=False)] * (k - len(players))
        return (gallery, *players, _results_table(found))

    with gr.Blocks(title="Edge Glass demo", analytics_enabled=False) as app:
        gr.Markdown(f"## Edge Glass\nstage-2 model `{ask.checkpoint}` ({' + '.join(ask.modalities)})")
        with gr.Tab("Ask"):
            picked = gr.State(None)
            with gr.Row():
                image = gr.Image(
                    type="filepath", sources=["upload"], label="image", elem_id="image",
                    visible="vision" in ask.modalities, height=240,
                )  # fmt: skip
                audio = gr.Audio(
                    type="filepath", sources=["upload"], format=None, label="audio", elem_id="audio",
                    visible="audio" in ask.modalities,
                )  # fmt: skip
            if ask.samples is not None:
                listed = ask.samples.keys[:NUM_SAMPLES_LISTED]
                choices = [(f"{key}: {ask.samples.info[key]['txt']}", key) for key in listed]
                sample = gr.Dropdown(
                    choices=choices, value=None, elem_id="sample",
                    label=f"or pick a held-out sample ({len(listed)} of {len(ask.samples.keys)} in {ask.samples.shard_dir})",
                )  # fmt: skip
            else:
                gr.Markdown(ask.samples_note)
            with gr.Row():
                question = gr.Textbox(
                    label="question", elem_id="question", scale=3, placeholder="which digit is this?"
                )
                suggested = gr.Dropdown(
                    choices=[], label="the sample's questions", elem_id="suggested", scale=2
                )
            sample_note = gr.Markdown(elem_id="sample-note")
            ask_button = gr.Button("Ask", variant="primary", elem_id="ask")
            reply = gr.Textbox(label="answer", interactive=False, elem_id="answer")
            info = gr.Markdown(elem_id="answer-info")
            if ask.samples is not None:
                sample.change(pick, sample, [image, audio, suggested, sample_note, picked, reply, info])
            suggested.change(lambda q: q or gr.update(), suggested, question)
            for component in (image, audio):  # the user's own file: no dataset answer applies
                component.upload(lambda: (None, "", "", ""), None, [picked, sample_note, reply, info])
            inputs, outputs = [question, image, audio, picked], [reply, info]
            ask_button.click(guarded(answer), inputs, outputs)
            question.submit(guarded(answer), inputs, outputs)
        with gr.Tab("Search"):
            if search is None:
                gr.Markdown(
                    "No index given. Build one with `uv run apps/search index --checkpoint STAGE1 "
                    "--shards DIR --out INDEX`, then start the demo with `--index INDEX`."
                )
            else:
                counts = ", ".join(f"{n} {m}" for m, n in search.index.counts().items())
                gr.Markdown(f"index `{search.index_path}`: {counts} from `{search.index.meta['source']}`")
                with gr.Row():
                    text = gr.Textbox(
                        label="text", elem_id="search-text", scale=4, placeholder="a small seven"
                    )
                    search_button = gr.Button("Search", variant="primary", elem_id="search", scale=1)
                gallery = gr.Gallery(
                    label=f"nearest {k} images", columns=k, elem_id="search-images", height=220,
                    visible="vision" in search.modalities, object_fit="contain",
                )  # fmt: skip
                with gr.Row():
                    players = [
                        gr.Audio(visible=False, interactive=False, elem_id=f"search-audio-{i}")
                        for i in range(k)
                    ]
                table = gr.Markdown(elem_id="search-results")
                outputs = [gallery, *players, table]
                search_button.click(guarded(find), text, outputs)
                text.submit(guarded(find), text, outputs)
    return app


def _startup_lines(ask: DemoAsk, search: DemoSearch | None) -> list[str]:
    """What the demo serves, and every shard read error met while listing samples (none is silent)."""
    a = ask.assistant
    lines = [f"ask: {ask.checkpoint} (step {a.step}, inputs: {', '.join(a.inputs)})"]
    folders = []
    if ask.samples is not None:
        lines.append(f"held-out samples: {len(ask.samples.keys)} in {ask.samples.shard_dir}")
        folders.append(ask.samples)
    else:
        lines.append(ask.samples_note)
    if search is not None:
        counts = ", ".join(f"{n} {m}" for m, n in search.index.counts().items())
        lines.append(f"search: {search.index_path} ({counts}, weights {search.embedder.fingerprint})")
        folders += [search.samples] if search.samples is not None else []
    else:
        lines.append("search: no --index (the Search tab says how to build one)")
    for folder in folders:
        if folder.errors:
            lines.append(f"{folder.shard_dir}: {len(folder.errors)} read errors, e.g. {folder.errors[0]}")
    return lines


def _check_port(host: str, port: int) -> None:
    """InputError unless this process can serve on host:port (a port in use, a host not of this machine)."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"--host {host} --port {port}: cannot serve there ({reason}); pass another --port")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apps/demo_ui",
        description="Web demo: ask the stage-2 model about an image/audio; search an index by text.",
    )
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="stage-2 (qa) checkpoint")
    parser.add_argument(
        "--index", default="", metavar="INDEX", help="search index (uv run apps/search index)"
    )
    parser.add_argument(
        "--shards", default="", metavar="DIR", help="the indexed samples (default: the index's)"
    )
    parser.add_argument(
        "--samples", default="", metavar="DIR", help="held-out samples (default data.test_dir)"
    )
    parser.add_argument("--k", type=int, default=4, help="search results per modality (default 4)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    return parser


def demo_ui_main(argv: Sequence[str] | None = None) -> int:
    """`uv run apps/demo_ui --checkpoint CKPT [--index INDEX] [--port N] ...` (see `--help`)."""
    from apps.common.cli import run_guarded

    args = _parser().parse_args(argv)

    def main() -> None:
        if args.k < 1:
            raise InputError(f"--k={args.k} must be >= 1")
        _check_port(args.host, args.port)  # before the imports and the loading, not after
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no usage pings
        try:
            import gradio as gr
        except ImportError as exc:
            raise InputError(INSTALL_HINT) from exc
        ask = DemoAsk(args.checkpoint, args.samples, args.device)
        search = (
            DemoSearch(args.index, args.shards, args.device, ask.assistant.aligned) if args.index else None
        )
        app = build_app(ask, search, args.k)
        for line in _startup_lines(ask, search):
            print(line)
        # system fonts: the default theme fetches web fonts, which an offline machine cannot
        theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
        print(f"demo: http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
        # SIGTERM stops it as Ctrl-C does: gradio closes the server, the sample files are removed at exit
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        app.queue().launch(
            server_name=args.host,
            server_port=args.port,
            theme=theme,
            css=CSS,
            show_error=True,
            quiet=True,
            # a files index shows the files themselves (samples of shards are written to a temp folder)
            allowed_paths=[str(search.files_root)] if search and search.files_root else None,
        )

    return run_guarded(main)
