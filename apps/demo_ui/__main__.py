"""`uv run apps/demo_ui --checkpoint STAGE2 [--index INDEX] [--shards DIR] [--samples DIR] [--port N]`: the
web demo (gradio, the apps' `ui` extra): ask the stage-2 model about an image/audio, search an index by text.
See apps/qa/ui.py."""

import sys

from apps.qa.ui import demo_ui_main

if __name__ == "__main__":
    sys.exit(demo_ui_main())
