"""`python -m oscar_hf.data build <task> ...`: see `oscar_hf.data.cli`."""

import sys

from .cli import main


if __name__ == "__main__":
    sys.exit(main())
