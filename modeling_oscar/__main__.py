"""`python -m oscar_hf ...` is the `oscar-hf` command: see `oscar_hf.processors.cli`."""

import sys

from .processors.cli import main


if __name__ == "__main__":
    sys.exit(main())
