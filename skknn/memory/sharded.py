"""ShardedStore: a memory split into shards held by Dask actors on a cluster.

The client side of ``KNNVoter(backend="dask")``. Its public surface is
:class:`~skknn.memory.base.MemoryFront`'s, as :class:`~skknn.VectorStore`'s is,
so the estimators vote on its :class:`~skknn.Neighbors` records without knowing
where the rows are; this module implements the front's hooks
(:class:`~skknn.memory.protocols.RowStore`) over the shards.

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
from dataclasses import replace

import numpy as np
import torch
from sklearn.utils import Bunch

from skknn._docstrings import fill_doc
from skknn._hierarchy import Taxonomy
from skknn._labels import encode
from skknn.memory.backends.dask import Shard
from skknn.memory.base import MemoryFront, NewRows
from skknn.memory.locks import edits
from skknn.memory.merge import merge_top
from skknn.memory.metric import METRICS
from skknn.memory.neighbors import MISSING, Neighbors
from skknn.memory.sharded_files import (  # noqa: F401 (SAVING, LOADING, ... kept here)
    LOADING,
    SAVING,
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

# Query blocks in flight at once: enough to keep every worker busy while the
# client merges, few enough to bound the memory queued on the workers.
IN_FLIGHT = 4


@fill_doc
class ShardedStore(ShardedFilesMixin, MemoryFront):
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

    sharded = True
    # Leave-one-out (JOINT's fit, pruning, loo_proba) searched and merged by
    # the queries' shard, which sends back only the merged top k; False: the
    # client fetches the queries' vectors, sends them to every shard and merges.
    loo_on_workers = True
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
        self._key_codes = key_codes
        self._sorted_ids = None

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
        parts = self._by_shard(ids)
        marks = self._gather(
            [self._call(i, "set_" + name, ids[p], values[p]) for i, p in parts]
        )
        for i, mark in marks.items():
            self._marks[i] = mark

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

    def _collect_self(self, pending, k: int):
        pos, block, keys, calls = pending
        if keys is None:  # merged by the queries' shard
            ((merged, keys),) = self._gather(calls).values()
            grids = [merged]
        else:
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

    def __repr__(self) -> str:
        return (
            f"ShardedStore(n_samples={self._n}, n_shards={self.n_shards}, "
            f"n_features={self.n_features}, metric={self.metric.name!r}, "
            f"engine={self.engine_name!r})"
        )
