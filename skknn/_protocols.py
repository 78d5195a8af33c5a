"""Alias of :mod:`skknn.memory.protocols`: moved there by issue 24, kept for pickles
and code that import the old path."""

from skknn.memory.protocols import (  # noqa: F401
    RemovalSteps,
    RowBackend,
    SearchEngine,
    Store,
)
