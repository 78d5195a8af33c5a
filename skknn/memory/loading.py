"""A saved memory back in RAM, in a storage folder or on a Dask cluster.

Which constructor a file's memory state goes through: a local memory stays local
(or is split into shards when the caller loads it with ``backend="dask"``); a
sharded one is re-created on the cluster or gathered here. The estimator checks
that its own parameters describe what comes back.
"""

from __future__ import annotations

from pathlib import Path

from skknn.memory.backends.dask import read_shard
from skknn.memory.front import VectorStore
from skknn.memory.sharded import ShardedStore, local_state, shard_path


def saved_memory(
    state: dict,
    arrays: dict,
    *,
    device,
    backend: str,
    shard_config: dict,
    n_shards: int | None,
    folder: Path | None,
    storage_root: Path | None,
    v1: dict | None = None,
):
    """The memory of a file's ``state`` and ``arrays``.

    Parameters
    ----------
    state, arrays : dict
        The memory's part of the file (``meta["memory"]``, ``memory/*`` arrays).
    device : torch.device
        Where a local memory searches.
    backend : {"local", "dask"}
        Where the memory goes.
    shard_config : dict
        What each shard is made from, for a memory split into shards.
    n_shards : int or None
        How many shards a local memory is split into (None: one per worker).
    folder : Path or None
        The folder of a sharded file (its shard files sit beside it).
    storage_root : Path or None
        A storage folder for a local memory (None: RAM).
    v1 : dict, default=None
        For files of format 1, which kept them outside the memory: its
        ``preprocessing``, ``classes`` and ``mean``.
    """
    sharded = bool(state.get("sharded"))
    if not sharded and backend == "dask":  # a local memory split into shards
        return ShardedStore.from_local_state(state, arrays, shard_config, n_shards)
    if sharded and backend == "dask":
        return ShardedStore.from_manifest(state, arrays, folder)
    if sharded:  # gathered here
        shards = [read_shard(shard_path(folder, s["file"])) for s in state["shards"]]
        for shard, want in zip(shards, state["shards"]):
            if (shard[0]["uid"], shard[0]["version"]) != (want["uid"], want["version"]):
                raise ValueError(
                    f"shard file {want['file']!r} is not the one the manifest names"
                )
        local_meta, local_arrays = local_state(state, arrays, shards, device)
        return VectorStore.from_state(local_meta, local_arrays, device)
    if v1 is not None:
        return VectorStore.from_v1_state(state, arrays, device=device, **v1)
    return VectorStore.from_state(state, arrays, device, storage_path=storage_root)
