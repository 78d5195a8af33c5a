"""Alias of :mod:`skknn.memory.backends.dask`: moved there by issue 24, kept for pickles
and code that import the old path."""

from skknn.memory.backends.dask import (  # noqa: F401
    ROW_ARRAYS,
    SHARD_CLASS,
    Shard,
    load_shard_store,
    read_shard,
    shard_preprocessing,
    split_state,
)
