"""``python -m assft``: the command line."""

from __future__ import annotations

import sys

from assft.cli import main

if __name__ == "__main__":
    sys.exit(main())
