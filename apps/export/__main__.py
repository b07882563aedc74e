"""`uv run apps/export --checkpoint CKPT --out DIR`: a stage-1 checkpoint as a self-contained folder that
`eg_encoders.AlignedEncoders.from_pretrained(DIR)` loads with eg-encoders alone (apps/alignment/export.py)."""

import sys

from apps.alignment.export import export_main

if __name__ == "__main__":
    sys.exit(export_main())
