"""Alias of :mod:`skknn.memory.locks`: moved there by issue 24, kept for pickles
and code that import the old path."""

from skknn.memory.locks import (  # noqa: F401
    GuardedState,
    ReadWriteLock,
    edits,
    reads,
)
