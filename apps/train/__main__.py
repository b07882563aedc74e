"""`uv run apps/train --config configs/X.yaml [--set a.b=value ...] [--print-config]`: train one experiment."""

import sys

from apps.common.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
