"""`uv run apps/search index --checkpoint CKPT (--shards DIR | --files DIR) --out INDEX` embeds images and audio
into an index; `uv run apps/search query --index INDEX (--text T | --image F | --audio F) [--k 10]
[--modality vision|audio] [--dim D] [--dim-shortlist 32 --shortlist 200]` prints the top-k keys with scores.
See apps/alignment/search.py."""

import sys

from apps.alignment.search import search_main

if __name__ == "__main__":
    sys.exit(search_main())
