"""ShardedStore: a memory split into shards held by Dask actors on a cluster.

The client side of ``KNNVoter(backend="dask")``: :class:`ShardedStore` is the
memory front (:class:`~skknn.memory.base.MemoryFront`), as
:class:`~skknn.VectorStore` is, so the estimators vote on its
:class:`~skknn.Neighbors` records without knowing where the rows are; its row
backend is :class:`DaskRows` (:class:`~skknn.memory.protocols.RowBackend`),
which talks to the shards.

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

import uuid

import numpy as np
import torch
from sklearn.utils import Bunch

from skknn._docstrings import fill_doc
from skknn._labels import encode
from skknn.memory.backends.dask import Shard
from skknn.memory.base import MemoryFront, NewRows
from skknn.memory.locks import edits, reads
from skknn.memory.merge import merge_top
from skknn.memory.metric import METRICS
from skknn.memory.neighbors import MISSING, Hits
from skknn.memory.sharded_files import (  # noqa: F401 (SAVING, LOADING, ... kept here)
    LOADING,
    NOT_PICKLED,
    SAVING,
    DaskFilesMixin,
    ShardedFilesMixin,
    local_state,
    shard_path,
)
from skknn.memory.shards import (  # noqa: F401 (imported from here)
    ShardLost,
    call,
    current_client,
    gather,
    shard_of,
    worker_addresses,
)

IN_FLIGHT = 4  # query blocks a search keeps in flight (DaskRows.in_flight)


@fill_doc
class DaskRows(DaskFilesMixin):
    """A memory's rows in shards on Dask workers
    (:class:`~skknn.memory.protocols.RowBackend`): the client's side.

    It keeps the ids in insertion order, each label key's class code (the
    shards keep a fixed key per label) and which shard holds each id; each
    shard (:class:`~skknn.memory.backends.dask.Shard`) ranks, refines and
    breaks ties over its own rows, and the shards' lists are merged here by
    :func:`~skknn.memory.merge.merge_top`.

    %(sharded_parameters)s

    Examples
    --------
    A :class:`ShardedStore`'s backend (see there).
    """

    sharded = True
    # Leave-one-out (JOINT's fit, pruning, loo_proba) searched and merged by
    # the queries' shard, which sends back only the merged top k; False: the
    # client fetches the queries' vectors, sends them to every shard and merges.
    loo_on_workers = True
    folder = None
    engine = None  # each shard has its own
    # Query blocks in flight at once: enough to keep every worker busy while
    # the client merges, few enough to bound the memory queued on the workers.
    in_flight = IN_FLIGHT

    def __init__(self, n_features: int, config: dict, n_shards=None, client=None):
        self._configure(n_features, config)
        self._n = 0
        self._ids = np.empty(0, np.int64)
        # Label key -> code in the sorted classes (identity for label paths).
        self._key_codes = np.empty(0, np.int64)
        self._sorted_ids = None
        client = current_client() if client is None else client
        workers = worker_addresses(client)
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

    def _configure(self, n_features: int, config: dict) -> None:
        self.n_features = int(n_features)
        self.metric = METRICS[config["metric"]]
        # what the shards apply (the client only centres)
        self.normalizes = (
            config["preprocessing"] is not None or config["metric"] == "cosine"
        )
        self.storage_dtype = config["storage_dtype"]
        self._config = dict(config)
        self._tag = uuid.uuid4().hex[:12]  # names the shards' Dask keys

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
            key=f"skknn-shard-{self._tag}-{i}-{uuid.uuid4().hex[:8]}",
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
    def n_samples(self) -> int:
        return self._n

    def ids(self) -> np.ndarray:
        """Every stored id in insertion order (a copy)."""
        return self._ids[: self._n].copy()

    def tuning_grid(self, n_features: int):
        """The shards' index knob grid (every shard has the same index), or
        None for an exact engine."""
        shard = (self._live() or [0])[0]
        return self._gather([self._call(shard, "tuning_grid")])[shard]

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

    def mark(self, i: int) -> tuple:
        """``(uid, version, n_samples)`` of shard ``i`` as last seen."""
        return self._marks[i]

    @property
    def vector_nbytes(self) -> int:
        """Bytes the shards hold for their vectors, all workers together."""
        return sum(info["vector_nbytes"] for info in self.shard_info())

    def shard_info(self) -> list[dict]:
        """What each shard says of itself (:meth:`ShardedStore.shard_info`)."""
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

    # -- adding ---------------------------------------------------------------------
    def add(self, new: NewRows, commit) -> None:
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
        self._key_codes = key_codes
        self._sorted_ids = None
        commit.applied()

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

    def stored(self, ids: np.ndarray) -> np.ndarray:
        if self._sorted_ids is None:
            self._sorted_ids = np.sort(self._ids[: self._n])
        s = self._sorted_ids
        if not s.size:
            return np.zeros(ids.shape, bool)
        pos = np.minimum(np.searchsorted(s, ids), s.size - 1)
        return s[pos] == ids

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, known)``: a sharded memory addresses its rows by id."""
        return ids, self.stored(ids)

    # -- removing -------------------------------------------------------------------
    def remove(self, uniq: np.ndarray, retrain: bool, commit) -> None:
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
                commit.applied()

    def retrain_index(self, commit) -> None:
        marks = self._gather([self._call(i, "retrain_index") for i in self._live()])
        for i, mark in marks.items():
            self._marks[i] = mark
        commit.applied()

    def check_replaceable(self) -> None:
        raise ValueError(
            "replace_vectors works on a memory in this process; a sharded memory "
            "(backend='dask') is rebuilt by fitting again."
        )

    def replace_vectors(self, X, mean, commit) -> None:
        self.check_replaceable()

    def destroy(self, commit) -> None:
        raise ValueError(
            "A sharded memory has no files to destroy: its rows live in the "
            "shards' actors, released with the memory."
        )

    # -- reliabilities, exclusions, knobs -------------------------------------------
    def set_column(self, name: str, ids: np.ndarray, values, commit) -> None:
        parts = self._by_shard(ids)
        marks = self._gather(
            [self._call(i, "set_" + name, ids[p], values[p]) for i, p in parts]
        )
        for i, mark in marks.items():
            self._marks[i] = mark
        commit.applied()

    def set_index_params(self, params: dict, commit) -> None:
        """Set every shard's search knobs; one shard refusing changes none."""
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
        commit.applied()

    # -- searching --------------------------------------------------------------------
    def knobs(self, index_params: dict):
        raise ValueError(
            "A sharded memory searches with its shards' own knobs; set them with "
            "set_index_params."
        )

    def in_store_units(self, Q: np.ndarray, what: str) -> np.ndarray:
        return Q  # each shard checks and scales its queries itself

    def submit(self, Q: np.ndarray, k: int, exact: bool, knobs) -> list:
        """One block sent to every shard holding samples (answers in flight)."""
        return [
            self._call(i, "search", Q, min(k, self._marks[i][2]), exact)
            for i in self._live()
        ]

    def collect(self, calls: list, k: int) -> Hits:
        return self._merge(self._gather(calls).values(), k)

    def all_queries(self) -> np.ndarray:
        return self._ids[: self._n]

    def self_jobs(self, q_ids: np.ndarray, batch_size: int) -> list:
        """``(shard, positions)`` blocks: each block's queries from one shard."""
        return [
            (a, p[s : s + batch_size])
            for a, p in self._by_shard(q_ids)
            for s in range(0, p.size, batch_size)
        ]

    def submit_self(self, q_ids: np.ndarray, job, k: int):
        """A block of shard ``a``'s queries searched in their own shard leaving
        themselves out and in every other shard in full (FORMULAS.md 2): by
        shard ``a`` itself, which merges the lists (:attr:`loo_on_workers`), or
        from here."""
        a, pos = job
        block = q_ids[pos]
        if self.loo_on_workers:
            peers = [
                (self._actors[i], min(k, self._marks[i][2]))
                for i in self._live(exclude=(a,))
            ]
            return pos, block, None, [self._call(a, "leave_one_out", block, k, peers)]
        Q, keys = self._gather([self._call(a, "vectors", block)])[a]
        calls = [
            self._call(i, "search", Q, min(k, self._marks[i][2]), False)
            for i in self._live(exclude=(a,))
        ]
        if self._marks[a][2] >= 2:
            own_k = min(k, self._marks[a][2] - 1)
            calls.append(self._call(a, "search_self", block, own_k))
        return pos, block, keys, calls

    def collect_self(self, pending, k: int):
        pos, block, keys, calls = pending
        if keys is None:  # merged by the queries' shard
            ((merged, keys),) = self._gather(calls).values()
            grids = [merged]
        else:
            grids = [g[:5] for g in self._gather(calls).values()]
        hits = self._merge(grids, k)
        return pos, hits._replace(
            query_ids=block.copy(), query_codes=self._key_codes[keys]
        )

    def _merge(self, grids, k: int) -> Hits:
        """The ``k`` nearest of the shards' candidates, equal distances by id."""
        D, ids, keys, rel, excl = merge_top(grids, k)
        present = ids != MISSING
        codes = np.where(present, self._key_codes[np.where(present, keys, 0)], 0)
        return Hits(D, ids, codes, rel, excl & present)

    def fetch(self, ids: np.ndarray, prepared: bool) -> Bunch:
        """Vectors (centred, or ``prepared``), label codes, reliabilities,
        exclusions and sample weights of these ids; with ``prepared``, ``X``
        and ``codes`` only."""
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
        codes = self._key_codes[keys]
        if prepared:  # vectors() carries the rest only in get()
            return Bunch(X=X, codes=codes)
        return Bunch(X=X, codes=codes, reliability=rel, excluded=excl, sample_weight=sw)

    def points(self, ids: np.ndarray) -> np.ndarray:
        return self.fetch(ids, True).X

    def within(self, q: np.ndarray, radii: np.ndarray, P: np.ndarray) -> np.ndarray:
        """Each query answered by its own shard."""
        out = np.zeros(q.shape[0], dtype=bool)
        parts = self._by_shard(q)
        got = self._gather(
            [self._call(i, "within_radius", q[p], radii[p], P) for i, p in parts]
        )
        for i, p in parts:
            out[p] = got[i]
        return out

    def check_picklable(self) -> None:
        raise TypeError(NOT_PICKLED)


@fill_doc
class ShardedStore(ShardedFilesMixin, MemoryFront):
    """A memory of labelled embeddings in shards on Dask workers: the memory
    front over :class:`DaskRows`.

    Made by ``KNNVoter(backend="dask").fit``; see the module docstring and
    ``docs/architecture.md`` ("Beyond one machine").

    %(sharded_parameters)s

    Examples
    --------
    >>> from skknn.distributed import ShardedStore
    %(local_cluster)s
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

    _owner = "KNNVoter"
    _rows_type = DaskRows  # what ShardedFilesMixin opens a manifest's rows as

    def __init__(self, n_features: int, config: dict, n_shards=None, client=None):
        rows = DaskRows(n_features, config, n_shards, client)
        self._front(
            n_features, METRICS[config["metric"]], config["preprocessing"], rows
        )

    @property
    def n_shards(self) -> int:
        """How many shards hold the rows."""
        return self.backend.n_shards

    @property
    def loo_on_workers(self) -> bool:
        """Leave-one-out searched and merged by the queries' own shard, which
        sends back only the merged top k (default True); False: the client
        fetches the queries' vectors, sends them to every shard and merges."""
        return self.backend.loo_on_workers

    @loo_on_workers.setter
    def loo_on_workers(self, value: bool) -> None:
        self.backend.loo_on_workers = bool(value)

    @property
    def shard_sizes(self) -> list[int]:
        """Samples held by each shard."""
        return self.backend.shard_sizes

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
        return self.backend.shard_info()

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
        return self.backend.restore(path, self.uid)

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
        return self.backend.gathered_state(*self._front_state(), device)

    def __getstate__(self):
        raise TypeError(NOT_PICKLED)

    def __repr__(self) -> str:
        return (
            f"ShardedStore(n_samples={self.n_samples}, n_shards={self.n_shards}, "
            f"n_features={self.n_features}, metric={self.metric.name!r}, "
            f"engine={self.engine_name!r})"
        )
