"""ShardedStore: a memory split into shards held by Dask actors on a cluster.

The client side of ``KNNVoter(backend="dask")``. It implements the same
:class:`~skknn.Store` protocol as :class:`~skknn.VectorStore`, so the estimators
vote on its :class:`~skknn.Neighbors` records without knowing where the rows are.

Division of work (the design of cuML's multi-GPU kNN):

- the **client** issues sample ids, owns the classes (and label paths), the
  centre of ``"center_l2"``, the list of ids in insertion order and which shard
  holds each id (a fixed hash of the id: :func:`shard_of`);
- each **shard** (``skknn/memory/backends/dask.py``) is an ordinary store of its
  rows on one worker, with its own engine (FAISS or torch, the estimator's
  ``index``);
- a **search** sends each query block to every shard, each returns its top
  ``k`` with exact distances, and the client keeps the ``k`` nearest of the
  ``S * k`` candidates, equal distances by sample id: the local store orders
  the same way, so with exact engines the records are equal.

Edits are checked on the client before any shard changes; an add that fails on
one shard is taken back from the others. Unlearning is physical on every shard
that holds one of the ids; a shard lost during it is named in the error and the
ids it held stay listed (unlearn them again once it is restored).
"""

from __future__ import annotations

import contextvars
import glob
import re
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sklearn.utils import Bunch

from skknn._hierarchy import Taxonomy
from skknn._labels import encode
from skknn.memory.backends.dask import ROW_ARRAYS, Shard
from skknn.memory.base import MemoryFront, NewRows
from skknn.memory.locks import edits, reads
from skknn.memory.merge import merge_top
from skknn.memory.metric import METRICS
from skknn.memory.neighbors import MISSING, Neighbors

# Query blocks in flight at once: enough to keep every worker busy while the
# client merges, few enough to bound the memory queued on the workers.
IN_FLIGHT = 4

# Set by skknn.io.save / load around one estimator: where a sharded memory writes
# its shard files, and which backend a loaded one gets.
SAVING: contextvars.ContextVar = contextvars.ContextVar("skknn_saving", default=None)
LOADING: contextvars.ContextVar = contextvars.ContextVar("skknn_loading", default=None)

_SHARD_FILE = re.compile(r"\.[0-9a-f]{12}-v\d+\.shard\d+")


_NOT_PICKLED = (
    "A sharded memory (backend='dask') is not pickled or copied: that "
    "would gather every shard's vectors into one process. Save it with "
    "est.save(path) (a manifest and one file per shard, written by the "
    "workers), or bring it into one process with "
    "skknn.distributed.to_local(est)."
)


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


def _workers(client) -> list[str]:
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


class ShardedStore(MemoryFront):
    """A memory of labelled embeddings in shards on Dask workers.

    Made by ``KNNVoter(backend="dask").fit``; see the module docstring and
    ``docs/architecture.md`` ("Beyond one machine").

    Parameters
    ----------
    n_features : int
        Embedding width.
    config : dict
        The estimator's ``metric``, ``preprocessing``, ``index``,
        ``index_params``, ``device`` and ``storage_dtype``.
    n_shards : int, default=None
        One per worker of the client's cluster when None.
    client : distributed.Client, default=None
        The current client when None. It is used, never stored in a file or a
        pickle.

    Examples
    --------
    >>> from distributed import Client, LocalCluster
    >>> from skknn.distributed import ShardedStore
    >>> cluster = LocalCluster(n_workers=2, processes=False, dashboard_address=":0")
    >>> client = Client(cluster)
    >>> config = dict(metric="cosine", preprocessing="l2", index="flat",
    ...               index_params=None, device="cpu", storage_dtype="float32")
    >>> store = ShardedStore(2, config)
    >>> store.add([[1., 0.], [0., 1.], [.9, .1]], ["cat", "dog", "cat"])
    array([0, 1, 2])
    >>> store.n_shards, sum(store.shard_sizes)
    (2, 3)
    >>> nb = store.search([[1., .2]], k=2)
    >>> nb.ids, nb.label_values()
    (array([[2, 0]]), array([['cat', 'cat']], dtype='<U3'))
    >>> client.close(); cluster.close()
    """

    sharded = True
    storage_folder = None
    engine = None  # each shard has its own
    _owner = "KNNVoter"

    def __init__(self, n_features: int, config: dict, n_shards=None, client=None):
        self.n_features = int(n_features)
        self.metric = METRICS[config["metric"]]
        self.preprocessing = config["preprocessing"]
        self.storage_dtype = config["storage_dtype"]
        self._config = dict(config)
        self.uid = uuid.uuid4().hex
        self._version = 0
        self._n = 0
        self._ids = np.empty(0, np.int64)
        self._next_id = 0
        self._classes: np.ndarray | None = None
        self._taxonomy: Taxonomy | None = None
        # Label key -> code in the sorted classes (identity for label paths).
        self._key_codes = np.empty(0, np.int64)
        self._mean: np.ndarray | None = None
        self._sorted_ids = None
        client = current_client() if client is None else client
        workers = _workers(client)
        if not workers:
            raise ValueError("The Dask cluster has no workers to hold the shards.")
        self.n_shards = len(workers) if n_shards is None else int(n_shards)
        futures = [
            self._start_shard(client, workers[i % len(workers)], i)
            for i in range(self.n_shards)
        ]
        self._futures = futures
        self._actors = [f.result() for f in futures]
        self._marks = [None] * self.n_shards  # (uid, version, n) of each shard
        self._describe(self._each("info"))
        self._lock()

    def _start_shard(self, client, worker: str, i: int, file=None, state=None):
        return client.submit(
            Shard,
            self.n_features,
            self._config,
            file,
            state,
            actor=True,
            workers=[worker],
            allow_other_workers=False,
            key=f"skknn-shard-{self.uid[:12]}-{i}-{uuid.uuid4().hex[:8]}",
        )

    def _describe(self, infos: dict) -> None:
        for i, info in infos.items():
            self._marks[i] = (info["uid"], info["version"], info["n_samples"])
        first = infos[min(infos)]
        self._engine_name = first["engine"]
        self.index_params = first["index_params"]
        self.device = torch.device(first["device"])
        self.auto = self._config["index"] == "auto" and not self.index_params

    # -- what it holds ------------------------------------------------------------
    @property
    def engine_name(self) -> str:
        """The shards' engine; with ``index="auto"`` each shard switches by its
        own size, so this asks the first shard holding samples."""
        if not self.auto or not any(self.shard_sizes):
            return self._engine_name
        shard = self._live()[0]
        return self._gather([self._call(shard, "info")])[shard]["engine"]

    @property
    def shard_sizes(self) -> list[int]:
        """Samples held by each shard."""
        return [m[2] for m in self._marks]

    @property
    def vector_nbytes(self) -> int:
        """Bytes the shards hold for their vectors, all workers together."""
        return sum(info["vector_nbytes"] for info in self.shard_info())

    def shard_info(self) -> list[dict]:
        """Per shard: its worker, process id, samples, engine, device, vector
        bytes and the seconds it has spent searching.

        Returns
        -------
        info : list of dict
            One dict per shard, in shard order: ``worker`` (its address),
            ``pid``, ``n_samples``, ``uid``, ``version``, ``engine``,
            ``index_params``, ``device``, ``vector_nbytes`` and
            ``search_seconds``.
        """
        infos = self._each("info")
        return [
            {"worker": getattr(self._actors[i], "_address", None), **infos[i]}
            for i in range(self.n_shards)
        ]

    # -- talking to the shards ------------------------------------------------------
    def _gather(self, calls) -> dict:
        """Wait for every ``(shard, actor future)``; the results by shard
        (:func:`gather`)."""
        return gather(calls, self.n_shards)

    def _call(self, i: int, method: str, *args):
        """``(shard, future)`` of one actor call (:func:`call`)."""
        return call(self._actors, i, method, *args)

    def _each(self, method: str, *args) -> dict:
        """The results of ``method`` on every shard."""
        return self._gather(
            [self._call(i, method, *args) for i in range(self.n_shards)]
        )

    def _live(self, exclude=()) -> list[int]:
        """Shards holding samples (an empty store cannot be searched)."""
        return [
            i for i in range(self.n_shards) if self._marks[i][2] and i not in exclude
        ]

    def _by_shard(self, ids: np.ndarray):
        """``(shard, positions)`` of the ids each shard holds."""
        owner = shard_of(ids, self.n_shards)
        order = np.argsort(owner, kind="stable")
        bounds = np.searchsorted(owner[order], np.arange(self.n_shards + 1))
        return [
            (i, order[bounds[i] : bounds[i + 1]])
            for i in range(self.n_shards)
            if bounds[i + 1] > bounds[i]
        ]

    # -- adding: the hooks of MemoryFront --------------------------------------------
    def _add_rows(self, new: NewRows) -> None:
        """Send each checked row, centred, to the shard its id is hashed to; an
        add that fails on one shard is taken back from the others."""
        key_codes, keys = self._keys_for(new)
        ids, m = new.ids, new.ids.size
        Xc = new.X - new.mean if new.mean is not None else new.X
        parts = self._by_shard(ids)
        calls = [
            self._call(i, "add", Xc[p], keys[p], ids[p], new.weights[p])
            for i, p in parts
        ]
        try:
            marks = self._gather(calls)
        except BaseException:
            self._take_back(calls, ids, parts)
            raise
        for i, mark in marks.items():
            self._marks[i] = mark
        self._ids = np.concatenate([self._ids[: self._n], ids])
        self._n += m
        self._classes, self._taxonomy = new.classes, new.taxonomy
        self._key_codes = key_codes
        self._mean = new.mean
        if m:
            self._next_id = max(self._next_id, int(ids.max()) + 1)
        self._sorted_ids = None
        self._version += 1

    def _take_back(self, calls, ids, parts) -> None:
        """After a failed add, remove its rows from the shards that took them."""
        where = dict(parts)
        undo = []
        for i, fut in calls:
            try:
                fut.result()
            except Exception:  # that shard holds nothing new
                continue
            undo.append(self._call(i, "remove", ids[where[i]], False))
        for i, fut in undo:
            try:
                self._marks[i] = fut.result()
            except Exception:  # reported by the add's own error
                pass

    def _keys_for(self, new: NewRows):
        """``(key_codes, keys)`` after the add ``new``: each sample's label key
        (the shards keep a fixed key per label), and the key -> class-code map
        that goes with them (only the client's map changes as classes grow)."""
        if new.taxonomy is not None:  # label paths: keys are the path codes
            return np.arange(new.taxonomy.n_paths), new.labels.astype(np.int64)
        key_codes = self._key_codes
        if new.old_to_new is not None:
            key_codes = new.old_to_new[key_codes]
        fresh = np.setdiff1d(np.arange(len(new.classes)), key_codes)
        key_codes = np.concatenate([key_codes, fresh]).astype(np.int64)
        code_to_key = np.empty(len(new.classes), np.int64)
        code_to_key[key_codes] = np.arange(len(key_codes))
        return key_codes, code_to_key[encode(new.classes, new.labels)]

    def _stored(self, ids: np.ndarray) -> np.ndarray:
        if self._sorted_ids is None:
            self._sorted_ids = np.sort(self._ids[: self._n])
        s = self._sorted_ids
        if not s.size:
            return np.zeros(ids.shape, bool)
        pos = np.minimum(np.searchsorted(s, ids), s.size - 1)
        return s[pos] == ids

    def _locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, known)``: a sharded memory addresses its rows by id."""
        return ids, self._stored(ids)

    # -- removing -------------------------------------------------------------------
    def _remove_ids(self, uniq: np.ndarray, retrain: bool) -> None:
        """Delete the ids from the shards that hold them (physically, as the
        local store does); every shard checks first, then all remove."""
        parts = self._by_shard(uniq)
        self._gather(
            [self._call(i, "check_remove", uniq[p], retrain) for i, p in parts]
        )
        calls = [self._call(i, "remove", uniq[p], retrain) for i, p in parts]
        done = {}
        try:
            done = self._gather(calls)
        finally:
            for i, fut in calls:  # what did go is gone: the client says so too
                if i not in done:
                    try:
                        done[i] = fut.result()
                    except Exception:  # reported by _gather
                        continue
            gone = np.concatenate([uniq[p] for i, p in parts if i in done] or [[]])
            for i, mark in done.items():
                self._marks[i] = mark
            if gone.size:
                keep = ~np.isin(self._ids[: self._n], gone)
                self._ids = self._ids[: self._n][keep]
                self._n = self._ids.size
                self._sorted_ids = None
                self._version += 1

    @edits
    def retrain_index(self) -> None:
        marks = self._gather([self._call(i, "retrain_index") for i in self._live()])
        for i, mark in marks.items():
            self._marks[i] = mark
        self._version += 1

    # -- reliabilities, exclusions, knobs -------------------------------------------
    def _set_column(self, name: str, ids: np.ndarray, values: np.ndarray) -> None:
        self._per_shard("set_" + name, ids, values)

    def _per_shard(self, method: str, ids, values) -> None:
        parts = self._by_shard(ids)
        marks = self._gather(
            [self._call(i, method, ids[p], values[p]) for i, p in parts]
        )
        for i, mark in marks.items():
            self._marks[i] = mark
        self._version += 1

    @edits
    def set_index_params(self, params: dict) -> None:
        """Set every shard's search knobs; one shard refusing changes none.

        Parameters
        ----------
        params : dict
            The knobs by their FAISS names (``{"nprobe": 32}``), as
            :meth:`VectorStore.set_index_params` takes them. A knob the index
            does not have raises ValueError.
        """
        params = dict(params)
        if self.auto and params != self.index_params:
            raise ValueError(
                "engine='auto' chooses its own index_params; name an index to set "
                "its knobs."
            )
        old = self.index_params
        self._gather([self._call(0, "set_index_params", params)])
        try:
            marks = self._gather(
                [
                    self._call(i, "set_index_params", params)
                    for i in range(self.n_shards)
                ]
            )
        except BaseException:
            self._gather(
                [self._call(i, "set_index_params", old) for i in range(self.n_shards)]
            )
            raise
        for i, mark in marks.items():
            self._marks[i] = mark
        self.index_params = params
        self._version += 1

    def tuning_grid(self, n_features: int | None = None):
        """The shards' index knob grid, as ``KNNVoter.tune_index`` walks it (every
        shard has the same index), or None for an exact engine.

        Parameters
        ----------
        n_features : int, default=None
            Unused: the shards know their width (kept for the engine's call).

        Returns
        -------
        grid : tuple of (list of dict, list of int) or None
            The knob settings and refine factors to try.
        """
        shard = (self._live() or [0])[0]
        return self._gather([self._call(shard, "tuning_grid")])[shard]

    # -- searching: the hooks of MemoryFront ------------------------------------------
    _in_flight = IN_FLIGHT

    def _search_knobs(self, index_params: dict):
        raise ValueError(
            "A sharded memory searches with its shards' own knobs; set them with "
            "set_index_params."
        )

    def _in_store_units(self, Q: np.ndarray, what: str) -> np.ndarray:
        return Q  # each shard checks and scales its queries itself

    def _submit_block(self, Q: np.ndarray, k: int, exact: bool, knobs) -> list:
        """One block sent to every shard holding samples (answers in flight)."""
        return [
            self._call(i, "search", Q, min(k, self._marks[i][2]), exact)
            for i in self._live()
        ]

    def _collect_block(self, calls: list, k: int) -> Neighbors:
        return self._merge(self._gather(calls).values(), k)

    def _all_queries(self) -> np.ndarray:
        return self._ids[: self._n]

    def _self_jobs(self, q_ids: np.ndarray, batch_size: int) -> list:
        """``(shard, positions)`` blocks: each block's queries from one shard."""
        return [
            (a, p[s : s + batch_size])
            for a, p in self._by_shard(q_ids)
            for s in range(0, p.size, batch_size)
        ]

    def _submit_self(self, q_ids: np.ndarray, job, k: int):
        """A block of shard ``a``'s queries searched in their own shard leaving
        themselves out and in every other shard in full (FORMULAS.md 2)."""
        a, pos = job
        block = q_ids[pos]
        Q, keys = self._gather([self._call(a, "vectors", block)])[a]
        calls = [
            self._call(i, "search", Q, min(k, self._marks[i][2]), False)
            for i in self._live(exclude=(a,))
        ]
        if self._marks[a][2] >= 2:
            own_k = min(k, self._marks[a][2] - 1)
            calls.append(self._call(a, "search_self", block, own_k))
        return pos, block, keys, calls

    def _collect_self(self, pending, k: int):
        pos, block, keys, calls = pending
        grids = [g[:5] for g in self._gather(calls).values()]
        record = replace(
            self._merge(grids, k),
            query_ids=block.copy(),
            query_labels=self._key_codes[keys],
        )
        return pos, record

    def _merge(self, grids, k: int) -> Neighbors:
        """The ``k`` nearest of the shards' candidates, equal distances by id."""
        D, ids, keys, rel, excl = merge_top(grids, k)
        present = ids != MISSING
        return Neighbors(
            distances=D,
            ids=ids,
            labels=np.where(present, self._key_codes[np.where(present, keys, 0)], 0),
            reliability=rel,
            excluded=excl & present,
            classes=self.classes,
            taxonomy=self._taxonomy,
        )

    def _fetch(self, ids: np.ndarray, prepared: bool) -> Bunch:
        """What :meth:`get` gives of these ids, before the centre is added;
        with ``prepared``, ``X`` and ``labels`` only."""
        n, d = ids.shape[0], self.n_features
        X = np.empty((n, d), np.float32)
        keys = np.empty(n, np.int64)
        rel = np.empty(n, np.float32)
        excl = np.empty(n, bool)
        sw = np.empty(n, np.float32)
        parts = self._by_shard(ids)
        method = "vectors" if prepared else "get"
        got = self._gather([self._call(i, method, ids[p]) for i, p in parts])
        for i, p in parts:
            X[p], keys[p] = got[i][0], got[i][1]
            if not prepared:
                rel[p], excl[p], sw[p] = got[i][2:]
        labels = self._label_values(self._key_codes[keys])
        if prepared:  # vectors() carries the rest only in get()
            return Bunch(X=X, labels=labels)
        return Bunch(
            X=X, labels=labels, reliability=rel, excluded=excl, sample_weight=sw
        )

    def _stored_points(self, ids: np.ndarray) -> np.ndarray:
        return self._fetch(ids, True).X

    def _within(self, q: np.ndarray, radii: np.ndarray, P: np.ndarray) -> np.ndarray:
        """Each query answered by its own shard."""
        out = np.zeros(q.shape[0], dtype=bool)
        parts = self._by_shard(q)
        got = self._gather(
            [self._call(i, "within_radius", q[p], radii[p], P) for i, p in parts]
        )
        for i, p in parts:
            out[p] = got[i]
        return out

    # -- files ----------------------------------------------------------------------
    def state(self) -> tuple[dict, dict]:
        """The manifest ``(meta, arrays)``; the shards write their own files.

        Only inside ``est.save(path)``: a sharded memory is never gathered into
        one pickle behind the user's back.

        Returns
        -------
        meta : dict
            The client's state (configuration, classes, next id, uid, version)
            and ``shards``: per shard, the name of the file it wrote beside
            ``path``, its uid, version and number of samples.
        arrays : dict
            ``sample_ids`` (insertion order) and ``key_codes`` (the class code
            of each label key); ``mean`` and ``taxonomy_paths`` where held.

        Raises
        ------
        TypeError
            Outside ``est.save(path)`` (a pickle or a copy).
        """
        saving = SAVING.get()
        if saving is None:
            raise TypeError(_NOT_PICKLED)
        return self._write_shards(Path(saving["path"]), saving["after"])

    def _write_shards(self, path: Path, after: list) -> tuple[dict, dict]:
        folder = path.resolve().parent
        tag = f"{self.uid[:12]}-v{self._version}"
        names = [f"{path.name}.{tag}.shard{i}" for i in range(self.n_shards)]
        written = self._gather(
            [
                self._call(i, "save", str(folder / names[i]))
                for i in range(self.n_shards)
            ]
        )
        meta, arrays = self._client_state()
        meta["shards"] = [
            {"file": names[i], **written[i]} for i in range(self.n_shards)
        ]
        # Once the manifest names these files, older saves' shards are deleted:
        # an unlearned vector must not survive in a file the manifest forgot.
        after.append(lambda: _remove_stale(folder, path.name, set(names)))
        return meta, arrays

    def _client_state(self) -> tuple[dict, dict]:
        """What the client holds, as a manifest without its shard list."""
        from skknn._archive import labels_to_json

        meta = {
            "sharded": True,
            "n_shards": self.n_shards,
            "n_features": self.n_features,
            "metric": self.metric.name,
            "preprocessing": self.preprocessing,
            "storage_dtype": self.storage_dtype,
            "index": self._config["index"],
            "index_params": self.index_params,
            "auto": self.auto,
            "engine": self.engine_name,
            "device": self._config["device"],
            "next_id": int(self._next_id),
            "uid": self.uid,
            "version": int(self._version),
            "classes": None if self._classes is None else labels_to_json(self._classes),
        }
        arrays = {
            "sample_ids": self._ids[: self._n].copy(),
            "key_codes": self._key_codes,
        }
        if self._mean is not None:
            arrays["mean"] = self._mean
        if self._taxonomy is not None:
            meta["taxonomy"] = [labels_to_json(c) for c in self._taxonomy.classes]
            arrays["taxonomy_paths"] = self._taxonomy.paths
        return meta, arrays

    @classmethod
    def from_manifest(cls, meta: dict, arrays: dict, folder: Path, client=None):
        """Re-create the shards of a saved sharded memory on the current cluster.

        Parameters
        ----------
        meta : dict
            The manifest :meth:`state` wrote; its ``shards`` name the files.
        arrays : dict
            The manifest's arrays (``sample_ids``, ``key_codes``, ...).
        folder : path-like
            The folder holding the shard files; each shard's worker reads its
            file there.
        client : distributed.Client, default=None
            The current client when None.

        Returns
        -------
        store : ShardedStore
            One shard per file, each checked against the manifest (files from
            different saves raise ValueError).
        """
        files = [str(shard_path(Path(folder), s["file"])) for s in meta["shards"]]
        self = cls._opened(meta, arrays, client, files=files)
        for i, shard in enumerate(meta["shards"]):
            got = self._marks[i]
            want = (shard["uid"], shard["version"], shard["n_samples"])
            if tuple(got) != want:
                raise ValueError(
                    f"shard file {shard['file']!r} holds shard state {got}, but the "
                    f"manifest names {want}: the files are from different saves"
                )
        return self

    @classmethod
    def from_local_state(cls, meta, arrays, config: dict, n_shards=None, client=None):
        """Split a local store's state into shards on the current cluster (rows
        routed by id as :meth:`add` routes them, vectors sent as stored).

        Parameters
        ----------
        meta : dict
            A local store's state (:meth:`VectorStore.state`), its scalars.
        arrays : dict
            That state's arrays.
        config : dict
            As the class takes it; its ``index``, ``index_params`` and
            ``device`` make each shard's engine (the rest comes from ``meta``).
        n_shards : int, default=None
            One per worker of the client's cluster when None.
        client : distributed.Client, default=None
            The current client when None.

        Returns
        -------
        store : ShardedStore
            The same samples, ids, uid and version, in ``n_shards`` shards.
        """
        from skknn.memory.backends.dask import split_state

        client = current_client() if client is None else client
        if n_shards is None:
            n_shards = len(_workers(client))
        ids = arrays["sample_ids"]
        taxonomy = meta.get("taxonomy")
        n_codes = (
            arrays["taxonomy_paths"].shape[0]
            if taxonomy is not None
            else len(meta["classes"]["values"])
            if meta.get("classes")
            else 0
        )
        manifest = {
            **{
                k: meta[k]
                for k in (
                    "n_features",
                    "metric",
                    "preprocessing",
                    "next_id",
                    "uid",
                    "version",
                    "classes",
                )
            },
            "storage_dtype": meta.get("storage_dtype", "float32"),
            "index": config["index"],
            "index_params": config["index_params"] or {},
            "device": config["device"],
            "n_shards": int(n_shards),
            "shards": [],
        }
        if taxonomy is not None:
            manifest["taxonomy"] = taxonomy
        client_arrays = {"sample_ids": ids, "key_codes": np.arange(n_codes)}
        for name in ("mean", "taxonomy_paths"):
            if name in arrays:
                client_arrays[name] = arrays[name]
        states = split_state(meta, arrays, int(n_shards), shard_of(ids, n_shards))
        manifest["shards"] = [
            {"uid": m["uid"], "version": 0, "n_samples": int(a["sample_ids"].size)}
            for m, a in states
        ]
        return cls._opened(manifest, client_arrays, client, states=states)

    @classmethod
    def _opened(cls, meta, arrays, client, *, files=None, states=None):
        self = cls.__new__(cls)
        self._restore_client_state(meta, arrays)
        client = current_client() if client is None else client
        workers = _workers(client)
        self._futures = []
        for i in range(self.n_shards):
            worker = workers[i % len(workers)]
            if files is not None:
                fut = self._start_shard(client, worker, i, file=files[i])
            else:  # the rows travel to their worker once, not inside the task
                data = client.scatter([states[i]], workers=[worker])[0]
                fut = self._start_shard(client, worker, i, state=data)
            self._futures.append(fut)
        self._actors = [f.result() for f in self._futures]
        self._describe(self._each("info"))
        self._lock()
        return self

    def _restore_client_state(self, meta: dict, arrays: dict) -> None:
        from skknn._archive import labels_from_json

        _check_manifest(meta, arrays)
        self.n_features = meta["n_features"]
        self.metric = METRICS[meta["metric"]]
        self.preprocessing = meta["preprocessing"]
        self.storage_dtype = meta["storage_dtype"]
        self._config = {
            "metric": meta["metric"],
            "preprocessing": meta["preprocessing"],
            "index": meta["index"],
            "index_params": meta["index_params"],
            "device": meta["device"],
            "storage_dtype": meta["storage_dtype"],
        }
        self.uid = meta["uid"]
        self._version = meta["version"]
        self.n_shards = meta["n_shards"]
        self._ids = arrays["sample_ids"]
        self._n = self._ids.size
        self._next_id = meta["next_id"]
        self._classes = (
            None if meta["classes"] is None else labels_from_json(meta["classes"])
        )
        self._taxonomy = None
        if meta.get("taxonomy") is not None:
            self._taxonomy = Taxonomy(
                tuple(labels_from_json(c) for c in meta["taxonomy"]),
                arrays["taxonomy_paths"],
            )
        self._key_codes = arrays["key_codes"]
        self._mean = arrays.get("mean")
        self._sorted_ids = None
        self._marks = [(s["uid"], s["version"], s["n_samples"]) for s in meta["shards"]]

    @edits
    def restore(self, path) -> list[int]:
        """Re-create lost shards from the save at ``path``; returns their numbers.

        A shard is restored only if it has not changed since that save (its own
        version matches the manifest's): edits made after the save exist nowhere
        else. Otherwise load the whole save with ``skknn.load(path)``.

        Parameters
        ----------
        path : str or path-like
            The file an estimator holding this memory was saved to
            (``est.save(path)``); the shard files lie beside it.

        Returns
        -------
        lost : list of int
            The numbers of the shards re-created (empty when none was lost).
        """
        from skknn._archive import read_archive

        path = Path(path)
        meta, _ = read_archive(path)
        manifest = _find_manifest(meta["state"])
        if manifest is None or manifest["uid"] != self.uid:
            raise ValueError(f"{str(path)!r} is not a save of this memory.")
        client = current_client()
        lost = []
        for i in range(self.n_shards):
            try:
                self._gather([self._call(i, "info")])
            except ShardLost:
                lost.append(i)
        workers = _workers(client)
        for i in lost:
            saved = manifest["shards"][i]
            want = self._marks[i]
            if (saved["uid"], saved["version"], saved["n_samples"]) != tuple(want):
                raise ValueError(
                    f"Shard {i} changed after the save at {str(path)!r} (it is at "
                    f"version {want[1]}, the save holds {saved['version']}): its "
                    "later edits exist nowhere. Load the whole save with "
                    "skknn.load(path) instead."
                )
            file = shard_path(path.resolve().parent, saved["file"])
            fut = self._start_shard(client, workers[i % len(workers)], i, str(file))
            self._futures[i], self._actors[i] = fut, fut.result()
        return lost

    @reads
    def gathered_state(self, device) -> tuple[dict, dict]:
        """The ``(meta, arrays)`` of one local store (on ``device``) holding every
        shard's rows: :func:`skknn.distributed.to_local`.

        Parameters
        ----------
        device : str or torch.device
            Where the local store will search: its index is chosen for it.

        Returns
        -------
        meta : dict
            The local store's scalars, as :meth:`VectorStore.from_state` takes
            them.
        arrays : dict
            Its arrays: every shard's rows in the memory's insertion order,
            label keys turned into class codes.
        """
        meta, arrays = self._client_state()
        shards = self._each("state")
        return local_state(
            meta, arrays, [shards[i] for i in range(self.n_shards)], device
        )

    def __getstate__(self):
        raise TypeError(_NOT_PICKLED)

    def __repr__(self) -> str:
        return (
            f"ShardedStore(n_samples={self._n}, n_shards={self.n_shards}, "
            f"n_features={self.n_features}, metric={self.metric.name!r}, "
            f"engine={self.engine_name!r})"
        )


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


def shard_path(folder: Path, name: str) -> Path:
    if "/" in name or "\\" in name or name in ("", ".", ".."):
        raise ValueError(f"shard file name {name!r} is not a plain file name")
    return folder / name


def _remove_stale(folder: Path, stem: str, keep: set) -> None:
    for f in folder.glob(f"{glob.escape(stem)}.*.shard*"):
        name = f.name
        if name not in keep and _SHARD_FILE.fullmatch(name[len(stem) :]):
            f.unlink(missing_ok=True)


def _find_manifest(state: dict):
    """The sharded memory's manifest in an estimator's saved state (nested
    voters included), or None."""
    if not isinstance(state, dict):
        return None
    if state.get("memory", {}).get("sharded"):
        return state["memory"]
    for value in state.values():
        if isinstance(value, dict):
            found = _find_manifest(value)
            if found is not None:
                return found
    return None


def _check_manifest(meta: dict, arrays: dict) -> None:
    need = (
        "n_shards",
        "shards",
        "n_features",
        "metric",
        "preprocessing",
        "storage_dtype",
        "index",
        "index_params",
        "device",
        "next_id",
        "uid",
        "version",
        "classes",
    )
    missing = [k for k in need if k not in meta]
    if missing:
        raise ValueError(f"the shard manifest lacks {missing}")
    if len(meta["shards"]) != meta["n_shards"]:
        raise ValueError("the manifest lists a different number of shard files")
    if "sample_ids" not in arrays or "key_codes" not in arrays:
        raise ValueError("the manifest lacks its sample ids or label keys")
    total = sum(int(s["n_samples"]) for s in meta["shards"])
    if total != arrays["sample_ids"].shape[0]:
        raise ValueError(
            f"the shards hold {total} samples but the manifest lists "
            f"{arrays['sample_ids'].shape[0]} ids"
        )


def local_state(meta: dict, arrays: dict, shards: list, device) -> tuple[dict, dict]:
    """One local store's ``(meta, arrays)`` from a manifest and its shards'
    states: rows in the memory's insertion order, label keys turned into class
    codes, the index chosen for ``device`` (rebuilt when the store is made)."""
    from skknn._archive import labels_from_json
    from skknn._device import resolve_engine
    from skknn.memory.engines import auto_engine

    ids = np.concatenate([s[1]["sample_ids"] for s in shards])
    want = arrays["sample_ids"]
    sorter = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids, want, sorter=sorter)
    pos = sorter[np.minimum(pos, max(ids.size - 1, 0))]
    if ids.size != want.size or not np.array_equal(ids[pos], want):
        raise ValueError("the shards do not hold exactly the manifest's sample ids")
    keys = np.concatenate(
        [
            labels_from_json(s[0]["classes"]).astype(np.int64)[s[1]["labels"]]
            if s[0].get("classes") is not None
            else s[1]["labels"]
            for s in shards
        ]
    )
    key_codes = arrays["key_codes"]
    if keys.size and (keys.min() < 0 or keys.max() >= key_codes.size):
        raise ValueError("a shard holds a label key the manifest does not know")
    out = {
        name: np.concatenate([s[1][name] for s in shards])[pos] for name in ROW_ARRAYS
    }
    if all("norms" in s[1] for s in shards):
        out["norms"] = np.concatenate([s[1]["norms"] for s in shards])[pos]
    out["labels"] = key_codes[keys][pos]
    for name in ("mean", "taxonomy_paths"):
        if name in arrays:
            out[name] = arrays[name]
    engine = resolve_engine(meta["index"], torch.device(device))
    auto = engine == "auto"
    index_params = meta["index_params"]
    if auto:
        engine, index_params = auto_engine(want.size)
    local = {
        "n_features": meta["n_features"],
        "metric": meta["metric"],
        "preprocessing": meta["preprocessing"],
        "engine": engine,
        "auto": auto,
        "storage_dtype": meta["storage_dtype"],
        "index_params": index_params,
        "next_id": meta["next_id"],
        "uid": meta["uid"],
        "version": meta["version"],
        "classes": meta["classes"],
    }
    if "taxonomy" in meta:
        local["taxonomy"] = meta["taxonomy"]
    return local, out
