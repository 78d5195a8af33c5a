"""Alias of :mod:`skknn.memory.front`: moved there by issue 24, kept for pickles
and code that import the old path."""

from skknn.memory.front import (  # noqa: F401
    DEFAULT_BATCH_SIZE,
    VectorStore,
    capped_k,
    query_blocks,
)
from skknn.memory.ties import TIE_RTOL, TIE_SPARE  # noqa: F401
