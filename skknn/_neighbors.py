"""Alias of :mod:`skknn.memory.neighbors`: moved there by issue 24, kept for pickles
and code that import the old path."""

from skknn.memory.neighbors import (  # noqa: F401
    MISSING,
    Neighbors,
)
