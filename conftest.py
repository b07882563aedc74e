"""Workspace-wide pytest setup for `uv run pytest` at the repo root (tests/ and every packages/*/tests).

Subprocesses started by the tests (apps, torchrun ranks, killed-and-resumed runs) write bytecode caches into
the venv even where the machine sets PYTHONDONTWRITEBYTECODE: without them each one recompiles torch,
transformers and open_clip (about 9 s of CPU per process on the project's 2-core machine).
"""

import os

os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
