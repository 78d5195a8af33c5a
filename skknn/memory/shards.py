"""Talking to the shards of a sharded memory: the current Dask client, the
shard of each id, and actor calls gathered with a lost worker named.
"""

from __future__ import annotations

import numpy as np


class ShardLost(RuntimeError):
    """A shard's worker is gone: no partial answer is given. Restore the shard
    from the last save with ``est.memory_.restore(path)``, or fit again.

    Examples
    --------
    >>> from skknn.distributed import ShardLost
    >>> issubclass(ShardLost, RuntimeError)
    True
    """


def current_client():
    """The running ``distributed.Client``, or an error that says how to start one."""
    try:
        from distributed import get_client
    except ImportError as exc:
        raise ImportError(
            "backend='dask' needs Dask distributed: pip install 'skknn[dask]'."
        ) from exc
    try:
        return get_client()
    except ValueError as exc:
        raise ValueError(
            "backend='dask' keeps the memory on the workers of the current Dask "
            "client, and there is none. Start one first, e.g. "
            "`from distributed import Client, LocalCluster; "
            "client = Client(LocalCluster())`, or connect to your cluster with "
            "Client('tcp://scheduler:8786')."
        ) from exc


def worker_addresses(client) -> list[str]:
    """The workers' addresses, asked of the scheduler now. Not
    ``scheduler_info()["workers"]``: the client's periodic refresh may leave
    that cached dict without its workers for a moment."""
    return sorted(client.nthreads())


def shard_of(ids: np.ndarray, n_shards: int) -> np.ndarray:
    """The shard holding each id: a SplitMix64 hash of the id modulo the shard
    count, so ids a user chooses (all even, in ranges) still spread evenly."""
    z = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(n_shards)).astype(np.intp)


def _is_lost(exc: BaseException) -> bool:
    from distributed.comm.core import CommClosedError

    if isinstance(exc, (CommClosedError, OSError)):
        return True
    return isinstance(exc, RuntimeError) and "Actor was lost" in str(exc)


def gather(calls, n_shards: int) -> dict:
    """Wait for every ``(shard, actor future)``; the results by shard. A lost
    shard raises :class:`ShardLost` naming it, after all calls are done."""
    results, lost, error = {}, [], None
    for i, fut in calls:
        try:
            results[i] = fut.result()
        except Exception as exc:  # sorted below
            if _is_lost(exc):
                lost.append((i, exc))
            elif error is None:
                error = exc
    if lost:
        names = ", ".join(str(i) for i, _ in lost)
        raise ShardLost(
            f"Shard(s) {names} of {n_shards} were lost with their Dask "
            f"worker ({lost[0][1]}); no partial answer is given. Restore them "
            "from the last save with est.memory_.restore(path), or fit again."
        ) from lost[0][1]
    if error is not None:
        raise error
    return results


def call(actors: list, i: int, method: str, *args):
    """``(shard, future)`` of one actor call; a call that cannot even be sent
    (the worker is known to be gone) fails when its result is asked for."""
    try:
        return i, getattr(actors[i], method)(*args)
    except Exception as exc:  # raised by gather, with the other calls'
        return i, _Failed(exc)


class _Failed:
    """Stands for an actor call that raised before returning a future."""

    def __init__(self, exc: BaseException):
        self.exc = exc

    def result(self):
        raise self.exc
