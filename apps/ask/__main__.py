"""`uv run apps/ask --checkpoint CKPT [--image FILE] [--audio FILE] "question"` prints a trained stage-2 model's
answer; `--interactive` answers questions read from stdin with one load (`:image FILE` / `:audio FILE` lines
set the inputs). See apps/qa/ask.py and apps/qa/load.py."""

import sys

from apps.qa.ask import ask_main

if __name__ == "__main__":
    sys.exit(ask_main())
