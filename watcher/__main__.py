"""`python -m watcher` is the `thumbwatch` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
