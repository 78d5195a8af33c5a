"""The ``skknn`` command's documented path (and the console script's,
``skknn.cli:main``); the code lives in :mod:`skknn.app.cli`."""

import sys

from skknn.app.cli import build_parser, demo, evaluate, explain, main

__all__ = ["build_parser", "demo", "evaluate", "explain", "main"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
