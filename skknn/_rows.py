"""Alias of :mod:`skknn.memory.rows`: moved there by issue 24, kept for pickles
and code that import the old path."""

from skknn.memory.rows import (  # noqa: F401
    RowBuffer,
    compact_inplace,
    expand_inplace,
    grow,
    kept_runs,
    uninterrupted,
)
