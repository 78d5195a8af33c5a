"""One shard of a sharded memory: an ordinary store, held by a Dask actor.

This object lives on a Dask worker (``client.submit(Shard, ..., actor=True)``)
and is driven by :class:`~skknn.memory.sharded.ShardedStore` on the client. It holds a
:class:`~skknn.VectorStore` of its rows and answers in plain arrays: nothing
here knows about the other shards, the client's classes or the centre.

What it is sent and keeps:

- vectors already centred by the client (the store only L2-normalises them), so
  every shard pre-processes exactly as one local store would;
- a *label key* per sample instead of the label: an int that names the class
  (or the label path) for the life of the memory. The client maps keys to its
  sorted classes, which may grow and renumber; the shards never re-encode.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import numpy as np

from skknn._archive import FORMAT, VERSION, read_archive, write_archive
from skknn._device import resolve_device, resolve_engine
from skknn.memory.engines import auto_engine
from skknn.memory.front import VectorStore
from skknn.memory.merge import merge_top

SHARD_CLASS = "skknn-shard"
# A store state's arrays with one entry per row (besides labels and "norms").
ROW_ARRAYS = ("embeddings", "sample_ids", "reliability", "excluded", "sample_weight")


def shard_preprocessing(preprocessing: str | None) -> str | None:
    """What a shard's store applies: the client has already centred."""
    return None if preprocessing is None else "l2"


class Shard:
    """A store on a worker (see the module docstring).

    Parameters
    ----------
    n_features : int
    config : dict
        ``metric``, ``preprocessing`` (the estimator's), ``index``,
        ``index_params``, ``device``, ``storage_dtype``: the estimator's
        parameters, resolved here (``device="auto"`` picks this worker's GPU).
    file : str, default=None
        A shard file written by :meth:`save` to restore instead.
    """

    def __init__(self, n_features: int, config: dict, file=None, state=None):
        self.search_seconds = 0.0  # time spent searching: the client's overhead is
        # its wall time less the slowest shard's share of this
        device = resolve_device(config["device"], owner="KNNVoter shard")
        if file is not None:
            self.store = load_shard_store(file, device)
            return
        if state is not None:  # rows split from a local memory
            meta, arrays = state
            engine = resolve_engine(config["index"], device)
            meta = {**meta, "engine": engine, "auto": engine == "auto"}
            if engine == "auto":
                meta["engine"], meta["index_params"] = auto_engine(
                    arrays["sample_ids"].shape[0]
                )
            self.store = VectorStore.from_state(meta, arrays, device)
            return
        self.store = VectorStore(
            n_features,
            metric=config["metric"],
            preprocessing=shard_preprocessing(config["preprocessing"]),
            engine=resolve_engine(config["index"], device),
            device=device,
            index_params=config["index_params"],
            storage_dtype=config["storage_dtype"],
        )

    def info(self) -> dict:
        s = self.store
        return {
            "n_samples": s.n_samples,
            "uid": s.uid,
            "version": s.version,
            "engine": s.engine_name,
            "index_params": dict(s.index_params),
            "device": str(s.device),
            "vector_nbytes": s.vector_nbytes,
            "pid": os.getpid(),
            "search_seconds": self.search_seconds,
        }

    def _mark(self) -> tuple[str, int, int]:
        return self.store.uid, self.store.version, self.store.n_samples

    # -- edits: each returns the shard's (uid, version, n_samples) ------------------
    def add(self, X, keys, ids, sample_weight):
        self.store.add(X, keys, ids, sample_weight=sample_weight)
        return self._mark()

    def check_remove(self, ids, retrain: bool) -> None:
        s = self.store
        uniq = s.check_removable(ids)
        s.engine.check_remove(s.n_features, s.n_samples - uniq.size, retrain)

    def remove(self, ids, retrain: bool):
        self.store.remove(ids, retrain_index=retrain)
        return self._mark()

    def set_reliability(self, ids, values):
        self.store.set_reliability(ids, values)
        return self._mark()

    def set_excluded(self, ids, values):
        self.store.set_excluded(ids, values)
        return self._mark()

    def set_index_params(self, params: dict):
        self.store.set_index_params(params)
        return self._mark()

    def retrain_index(self):
        self.store.retrain_index()
        return self._mark()

    # -- reads ------------------------------------------------------------------------
    def tuning_grid(self):
        """The engine's knob grid for tuning, or None for an exact engine."""
        return self.store.tuning_grid()

    def search(self, Q, k: int, exact: bool = False):
        """Top ``k`` of prepared queries: ``(distances, ids, keys, reliability,
        excluded)``."""
        start = time.perf_counter()
        find = self.store.search_exact if exact else self.store.search
        out = _grid(find(Q, k, batch_size=max(1, len(Q)), prepared=True))
        self.search_seconds += time.perf_counter() - start
        return out

    def search_self(self, ids, k: int):
        """Leave-one-out within this shard, as :meth:`search` plus the queries'
        own keys."""
        start = time.perf_counter()
        nb = self.store.search_self(ids, k, batch_size=max(1, len(ids)))
        self.search_seconds += time.perf_counter() - start
        return (*_grid(nb), nb.classes[nb.query_labels])

    async def leave_one_out(self, ids, k: int, peers):
        """Leave-one-out neighbours of this shard's samples ``ids`` across the
        memory, merged here: the client gets the merged top ``k`` and the
        queries' keys, never the query vectors or the other shards' lists.

        ``peers``: ``(actor, k_i)`` of every other live shard. Their searches are
        awaited (this method runs on the worker's event loop), so a peer that is
        itself waiting on this shard finds its actor thread free: no deadlock.
        The result equals the client's merge of the same lists
        (``merge.merge_top``, equal distances by id).
        """
        loop = asyncio.get_running_loop()
        Q, keys = await loop.run_in_executor(None, self.vectors, ids)
        futures = [actor.search(Q, k_i, False) for actor, k_i in peers]
        grids = []
        if self.store.n_samples >= 2:
            own_k = min(k, self.store.n_samples - 1)
            own = await loop.run_in_executor(None, self.search_self, ids, own_k)
            grids.append(own[:5])
        grids += [tuple(await f) for f in futures]
        return merge_top(grids, k), keys

    def vectors(self, ids):
        """``(prepared vectors, keys)`` of stored samples, in the order of ids."""
        with self.store.reading():
            got = self.store.get(ids, prepared=True)
        return got.X, np.asarray(got.labels, dtype=np.int64)

    def get(self, ids):
        """Centred raw vectors, keys, reliabilities, exclusions, sample weights."""
        got = self.store.get(ids)
        labels = np.asarray(got.labels, dtype=np.int64)
        return got.X, labels, got.reliability, got.excluded, got.sample_weight

    def within_radius(self, query_ids, radii, P):
        return self.store.within_radius(query_ids, radii, X=P, prepared=True)

    def state(self) -> tuple[dict, dict]:
        """The store's ``(meta, arrays)`` (to gather the memory into one store)."""
        with self.store.reading():
            meta, arrays = self.store.state()
            return meta, {k: np.array(v) for k, v in arrays.items()}

    def save(self, path: str) -> dict:
        """Write this shard to ``path`` (atomically); returns what the manifest
        records of it."""
        with self.store.reading():
            meta, arrays = self.store.state()
            write_archive(
                path,
                {
                    "format": FORMAT,
                    "version": VERSION,
                    "class": SHARD_CLASS,
                    "state": meta,
                },
                arrays,
            )
        return {
            "uid": meta["uid"],
            "version": meta["version"],
            "n_samples": int(arrays["sample_ids"].shape[0]),
        }


def _grid(nb):
    keys = nb.classes[nb.labels] if len(nb.classes) else nb.labels
    return (
        nb.distances,
        nb.ids,
        np.asarray(keys, dtype=np.int64),
        nb.reliability,
        nb.excluded,
    )


def read_shard(path, mmap: bool = False) -> tuple[dict, dict]:
    """The store state ``(meta, arrays)`` of a shard file."""
    meta, arrays = read_archive(path, mmap=mmap)
    if meta.get("class") != SHARD_CLASS:
        raise ValueError(f"{str(path)!r} is not a skknn shard file.")
    return meta["state"], arrays


def load_shard_store(path, device) -> VectorStore:
    meta, arrays = read_shard(path)
    return VectorStore.from_state(meta, arrays, device)


def split_state(meta: dict, arrays: dict, n_shards: int, owner) -> list:
    """A local store's state split into shard states: shard ``i`` gets the rows
    with ``owner == i``, its labels as label keys (the class codes of now)."""
    from skknn._archive import labels_to_json

    out = []
    for i in range(n_shards):
        rows = np.flatnonzero(owner == i)
        keys = arrays["labels"][rows]
        classes = np.unique(keys)
        shard_meta = {
            "n_features": meta["n_features"],
            "metric": meta["metric"],
            "preprocessing": shard_preprocessing(meta["preprocessing"]),
            "engine": meta["engine"],
            "storage_dtype": meta.get("storage_dtype", "float32"),
            "index_params": meta.get("index_params") or {},
            "next_id": meta["next_id"],
            "uid": uuid.uuid4().hex,
            "version": 0,
            "classes": labels_to_json(classes.astype(np.int64)),
        }
        shard_arrays = {
            name: np.ascontiguousarray(arrays[name][rows])
            for name in (*ROW_ARRAYS, "norms")
            if name in arrays
        }
        shard_arrays["labels"] = np.searchsorted(classes, keys).astype(np.int64)
        out.append((shard_meta, shard_arrays))
    return out
