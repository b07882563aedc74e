"""`uv run apps/ask --checkpoint CKPT [--image FILE] [--audio FILE] "question"` prints a trained stage-2 model's
answer; `--interactive` keeps the model loaded and answers the questions read from stdin, one a line.

The answer is `QAAssistant.answer` (apps/qa/load.py): the evaluation's preprocessing and greedy generation,
with the prefix of the inputs given (image+audio, image, audio, or none: blind).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, TextIO

INTERACTIVE_HELP = """interactive mode (--interactive): one line at a time from stdin, until EOF (Ctrl-D):
  QUESTION          print the answer, with the image/audio set so far (none set: blind)
  :image FILE       use FILE as the image of the questions that follow; `:image` alone clears it
  :audio FILE       the same for the audio
  # ...             a comment; blank lines are skipped too
  --image/--audio set the starting inputs. Stdout gets one line per question (its answer, a line break in
  it written as \\n), nothing else.
  A refused line (a missing file, an image for a model without images) prints `error: ...` on stderr and
  the session goes on; the exit status is then 2, else 0.

examples:
  uv run apps/ask --checkpoint checkpoints/demo_qa_trm/checkpoint_best.pt --image digit.png "which digit is this?"
  printf ':image a.png\\nwhich digit is this?\\n:image\\n:audio a.flac\\nwhich digit is this?\\n' |
    uv run apps/ask --checkpoint checkpoints/demo_qa_trm/checkpoint_best.pt --interactive"""


LINE_BREAKS = {
    ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
}  # where str.splitlines splits


def one_line(answer: str) -> str:
    """`answer` with its line breaks written as escapes (`\\n`, ...), so that each answer is one output line."""
    return answer.translate(LINE_BREAKS)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apps/ask",
        description="Ask a trained stage-2 (QA) model a question about an image and/or audio.",
        epilog=INTERACTIVE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("question", nargs="?", help="the question (omit with --interactive)")
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="CKPT",
        help="stage-2 checkpoint, e.g. checkpoints/demo_qa_trm/checkpoint_best.pt",
    )
    parser.add_argument("--image", metavar="FILE", help="image file (jpg, png, webp, ...)")
    parser.add_argument("--audio", metavar="FILE", help="audio file (flac, wav; any sample rate)")
    parser.add_argument("--interactive", action="store_true", help="read questions from stdin (see below)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    return parser


class Session:
    """The inputs set so far and the loaded model; `line(text)` handles one interactive line."""

    def __init__(
        self, assistant: Any, image: Any = None, audio: Any = None, out: TextIO = sys.stdout
    ) -> None:
        self.assistant, self.out = assistant, out
        self.inputs: dict[str, Any] = {"image": image, "audio": audio}

    def line(self, text: str) -> None:
        """Answer a question, or set/clear an input (`:image FILE`, `:audio FILE`, `:image`)."""
        from apps.alignment.embed import InputError

        text = text.strip()
        if not text or text.startswith("#"):
            return
        if not text.startswith(":"):
            print(one_line(self.assistant.answer(text, **self.inputs)), file=self.out, flush=True)
            return
        command, _, argument = text[1:].partition(" ")
        argument = argument.strip()
        if command not in self.inputs:
            raise InputError(
                f"{text!r}: unknown command; use :image FILE, :audio FILE, or :image / :audio to clear"
            )
        if not argument:
            self.inputs[command] = None
            return
        # checked now (readable, a modality the model has): a bad file is refused on its own line
        self.assistant.prepare("?", **{command: argument})
        self.inputs[command] = argument


def interactive(session: Session, lines: TextIO) -> int:
    """Every line of `lines` through `session`; a refused line prints one error line; 2 if any was refused."""
    from apps.common.cli import USER_ERROR_EXIT, user_error_types

    errors = user_error_types()
    refused = 0
    for text in lines:
        try:
            session.line(text)
        except errors as exc:
            refused += 1
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"error: {message}", file=sys.stderr, flush=True)
    return USER_ERROR_EXIT if refused else 0


def ask_main(argv: Sequence[str] | None = None) -> int:
    """`uv run apps/ask ...` (see `--help`)."""
    from apps.common.cli import run_guarded

    parser = _parser()
    args = parser.parse_args(argv)
    if args.interactive == (args.question is not None):
        parser.error("give a question, or --interactive (questions from stdin), not both")

    def main() -> int:
        from apps.alignment.embed import read_audio, read_image
        from apps.qa.load import load_qa

        # read the inputs before loading the model, so that a bad file is refused at once
        if args.image is not None:
            read_image(args.image, "image")
        if args.audio is not None:
            read_audio(args.audio, "audio")
        assistant = load_qa(args.checkpoint, args.device)
        image, audio = args.image, args.audio
        if not args.interactive:
            print(one_line(assistant.answer(args.question, image, audio)))
            return 0
        assistant.prepare("?", image, audio)  # a starting input the model cannot take: refused here
        if sys.stdin.isatty():
            print(
                f"{args.checkpoint} (step {assistant.step}, inputs: {', '.join(assistant.inputs)}): "
                "a question a line; :image FILE / :audio FILE set inputs; Ctrl-D ends",
                file=sys.stderr,
            )
        return interactive(Session(assistant, image, audio), sys.stdin)

    return run_guarded(main)
