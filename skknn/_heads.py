"""Kept for pickles saved before the head moved to :mod:`skknn.heads._head`:
they name ``skknn._heads:Head`` (tests/data/v3/pickle_globals.txt)."""

from skknn.heads._head import Head

__all__ = ["Head"]
