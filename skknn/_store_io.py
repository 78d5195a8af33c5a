"""Alias of :mod:`skknn.memory.state`: moved there by issue 24, kept for pickles
and code that import the old path."""

from skknn.memory.state import (  # noqa: F401
    StoreStateMixin,
)
