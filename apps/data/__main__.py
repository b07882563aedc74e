"""`uv run apps/data demo|urls|speak|audio-captions ... [--config FILE] [--set KEY=VALUE ...]`: prepare datasets as shards;
`uv run apps/data demo-zeroshot`: the demo as a CLIP_benchmark zero-shot folder."""

import sys

from apps.common.data_cli import data_main

if __name__ == "__main__":
    sys.exit(data_main())
