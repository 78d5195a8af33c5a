"""Alias of :mod:`skknn.memory.blocks`: moved there by issue 24, kept for pickles
and code that import the old path."""

from skknn.memory.blocks import (  # noqa: F401
    iter_blocks,
)
