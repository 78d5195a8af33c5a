"""Alias of :mod:`skknn.memory.sharded`: moved there by issue 24, kept for pickles
and code that import the old path."""

from skknn.memory.sharded import (  # noqa: F401
    IN_FLIGHT,
    LOADING,
    SAVING,
    ShardedStore,
    ShardLost,
    call,
    current_client,
    gather,
    local_state,
    shard_of,
    shard_path,
)
