"""Alias of :mod:`skknn.memory.view`: moved there by issue 24, kept for pickles
and code that import the old path."""

from skknn.memory.view import (  # noqa: F401
    StoreView,
)
