"""`uv run apps/export --checkpoint CKPT --out DIR`: a stage-1 checkpoint as a self-contained folder that
`eg_encoders.AlignedEncoders.from_pretrained(DIR)` loads with eg-encoders alone; a stage-2 one adds
its decoder, projector and peft adapter (apps/qa/export_cli.py)."""

import sys

from apps.qa.export_cli import export_main

if __name__ == "__main__":
    sys.exit(export_main())
