"""The memory front: the one class every estimator talks to, whatever holds the rows.

:class:`MemoryFront` owns what a memory means: ids, classes (and the label
taxonomy), the centre of ``"center_l2"``, the version and the readers-writer
lock, what an add checks and in which order, the blocking of queries, the
leave-one-out prologue, the validation of reliabilities, exclusions and radii,
the re-centring of :meth:`~MemoryFront.get` and the :class:`~skknn.Neighbors`
record every search returns. Where the rows live is its row backend
(:class:`~skknn.memory.protocols.RowBackend`, the attribute ``backend``): rows
in this process (``skknn/memory/local.py``, kept in RAM or in memory-mapped
files) or in Dask shards (``skknn/memory/backends/dask.py``).
:class:`~skknn.VectorStore` and :class:`~skknn.distributed.ShardedStore` are
this class with its backend chosen and their own ways of being opened.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.utils import Bunch

from skknn._hierarchy import Taxonomy
from skknn._labels import grown_classes
from skknn.memory.checks import (
    checked_excluded,
    checked_ids,
    checked_new_ids,
    checked_reliability,
    checked_rows,
    checked_weights,
    label_paths,
    refuse_duplicates,
)
from skknn.memory.digest import rows_change
from skknn.memory.locks import edits, reads
from skknn.memory.neighbors import Hits, Neighbors
from skknn.memory.preprocessing import (
    check_preprocessing,
    fit_center,
    prepared_queries,
)
from skknn.memory.rows import uninterrupted
from skknn.memory.view import StoreView

DEFAULT_BATCH_SIZE = 4096


@dataclass(frozen=True)
class NewRows:
    """An add, checked: what the front hands to its backend's ``add``.

    Parameters
    ----------
    X : ndarray of float32 of shape (m, n_features)
        The raw rows (the caller's array, never modified).
    labels : ndarray of shape (m,)
        Label values, or label-path codes for multi-output labels.
    ids : ndarray of int64 of shape (m,)
        Fresh sample ids.
    weights : ndarray of float32 of shape (m,)
        Sample weights.
    mean : ndarray or None
        The centre of ``"center_l2"`` after the add.
    classes : ndarray
        The sorted classes after the add.
    old_to_new : ndarray or None
        Each old class code's new code when the classes grew in between.
    taxonomy : Taxonomy or None
        The label levels after the add (multi-output labels).

    Examples
    --------
    >>> from skknn.memory.base import NewRows
    >>> sorted(NewRows.__dataclass_fields__)[:3]
    ['X', 'classes', 'ids']
    """

    X: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    weights: np.ndarray
    mean: np.ndarray | None
    classes: np.ndarray
    old_to_new: np.ndarray | None
    taxonomy: Taxonomy | None


@dataclass(frozen=True)
class Commit:
    """What an edit does to the front, handed to the row backend with the edit.

    The backend writes :attr:`describe`'s state with its rows (a memory on disk
    commits both at once) and calls :attr:`applied` exactly once, when its new
    rows are in place, even if it raises afterwards: from then on the front
    holds the edit's classes, centre and version.

    Parameters
    ----------
    version : int
        The memory's version after the edit.
    describe : callable
        ``describe() -> (meta, arrays)``: the front's state after the edit, as
        :meth:`MemoryFront.state` begins it (the estimator's commit guard runs
        first).
    applied : callable
        ``applied()``: the front takes the edit.

    Examples
    --------
    >>> from skknn.memory.base import Commit
    >>> sorted(Commit.__dataclass_fields__)
    ['applied', 'describe', 'version']
    """

    version: int
    describe: Callable[[], tuple[dict, dict]]
    applied: Callable[[], None]


class MemoryFront(StoreView):
    """A memory of labelled embeddings: the one front over a row backend.

    Usually made as :class:`~skknn.VectorStore` (rows in this process) or
    :class:`~skknn.distributed.ShardedStore` (rows in Dask shards), which choose
    its backend; any :class:`~skknn.memory.protocols.RowBackend` will do.

    Parameters
    ----------
    backend : RowBackend
        Where the rows live, empty; the front takes its ``n_features`` and
        ``metric``.
    preprocessing : {"l2", "center_l2"} or None, default="l2"
        Applied to stored and query vectors alike. It must agree with the
        backend's ``normalizes`` (any pre-processing, or cosine, normalises):
        ValueError otherwise.

    Examples
    --------
    Every memory searches with the same method:

    >>> from skknn import VectorStore
    >>> from skknn.memory.base import MemoryFront
    >>> VectorStore.search is MemoryFront.search
    True
    >>> store = VectorStore(2, engine="exact")
    >>> store.add([[1., 0.], [0., 1.]], ["a", "b"])
    array([0, 1])
    >>> store.search([[.9, .1]], k=1).label_values()
    array([['a']], dtype='<U1')

    The same front over a row backend made by hand:

    >>> from skknn.memory.local import LocalRows
    >>> from skknn.memory.metric import METRICS
    >>> rows = LocalRows(2, metric=METRICS["cosine"], normalizes=True)
    >>> memory = MemoryFront(rows)
    >>> memory.add([[1., 0.], [0., 1.]], ["a", "b"])
    array([0, 1])
    >>> memory.search([[.9, .1]], k=1).label_values()
    array([['a']], dtype='<U1')
    """

    # The name label-type errors give (the estimator's, for a sharded memory).
    _owner = "VectorStore"

    def __init__(self, backend, *, preprocessing: str | None = "l2"):
        check_preprocessing(preprocessing)
        metric = backend.metric
        normalizes = preprocessing is not None or metric.name == "cosine"
        if bool(backend.normalizes) != normalizes:
            raise ValueError(
                f"preprocessing={preprocessing!r} with metric={metric.name!r} "
                f"{'normalises' if normalizes else 'does not normalise'} vectors, "
                "but the backend was made to "
                f"{'normalise' if backend.normalizes else 'keep'} them: make both "
                "agree."
            )
        self._front(backend.n_features, metric, preprocessing, backend)

    def _front(self, n_features: int, metric, preprocessing, backend) -> None:
        """The front's own state, empty, over ``backend``."""
        self.n_features = int(n_features)
        self.metric = metric
        self.preprocessing = preprocessing
        self.backend = backend
        self.uid = uuid.uuid4().hex
        self._version = 0
        self._mean: np.ndarray | None = None
        self._classes: np.ndarray | None = None
        self._taxonomy: Taxonomy | None = None  # multi-output labels only
        self._next_id = 0
        # Called before every commit to disk: the estimator's check that its
        # storage folder still opens to this memory (skknn/memory/folder.py).
        self.commit_guard = None
        self._lock()  # made now: searches must not add attributes

    def _restore_front(self, meta: dict, arrays: dict) -> None:
        """The front's state as :meth:`_front_state` wrote it."""
        from skknn._archive import labels_from_json

        self.uid = meta["uid"]
        self._version = int(meta["version"])
        self._next_id = int(meta["next_id"])
        self._mean = arrays.get("mean")
        self._classes = (
            None if meta.get("classes") is None else labels_from_json(meta["classes"])
        )
        self._taxonomy = None
        if meta.get("taxonomy") is not None:
            self._taxonomy = Taxonomy(
                tuple(labels_from_json(c) for c in meta["taxonomy"]),
                arrays["taxonomy_paths"],
            )

    def _front_state(self, **changes) -> tuple[dict, dict]:
        """``(meta, arrays)`` of the front: now, or with the ``changes``
        (classes, taxonomy, mean, next_id, version) an edit is about to make."""
        from skknn._archive import labels_to_json

        now = {
            "classes": self._classes,
            "taxonomy": self._taxonomy,
            "mean": self._mean,
            "next_id": self._next_id,
            "version": self._version,
            **changes,
        }
        classes, taxonomy = now["classes"], now["taxonomy"]
        meta = {
            "n_features": self.n_features,
            "metric": self.metric.name,
            "preprocessing": self.preprocessing,
            "next_id": int(now["next_id"]),
            "uid": self.uid,
            "version": int(now["version"]),
            "classes": None if classes is None else labels_to_json(classes),
        }
        arrays = {}
        if now["mean"] is not None:
            arrays["mean"] = now["mean"]
        if taxonomy is not None:
            meta["taxonomy"] = [labels_to_json(c) for c in taxonomy.classes]
            arrays["taxonomy_paths"] = taxonomy.paths
        return meta, arrays

    def _commit(self, applied=None, **changes) -> Commit:
        """The :class:`Commit` of an edit making ``changes`` to the front; by
        default it only advances the version."""
        version = self._version + 1

        def describe():
            if self.commit_guard is not None:
                self.commit_guard()
            return self._front_state(version=version, **changes)

        def advance():
            self._version += 1

        return Commit(version, describe, advance if applied is None else applied)

    @reads
    def state(self) -> tuple[dict, dict]:
        """``(meta, arrays)`` describing the memory, for files: the front's
        state and the backend's rows (:meth:`RowBackend.state`).

        Returns
        -------
        meta : dict
            JSON-able scalars.
        arrays : dict of str to ndarray
            The arrays.
        """
        return self.backend.state(*self._front_state())

    # -- adding ---------------------------------------------------------------------
    @edits
    def add(
        self, X, labels, ids=None, *, classes=None, sample_weight=None
    ) -> np.ndarray:
        """Store raw vectors with their labels; returns their ids.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Raw embeddings; copied once into the store and pre-processed there
            (the caller's array is never modified).
        labels : array-like of shape (n_samples,) or (n_samples, n_levels)
            Class labels; new ones extend :attr:`classes`. Two dimensions give
            multi-output labels, one column per level (FORMULAS.md 7): the
            store keeps each sample's label path as its class and the levels in
            :attr:`taxonomy`. The first add decides which; every later add must
            match it.
        ids : array-like of shape (n_samples,), default=None
            Unique int ids, none stored before; default :meth:`next_ids`.
        classes : array-like, default=None
            Labels to know before any of their samples arrive; for multi-output
            labels, one array-like per level.
        sample_weight : array-like of shape (n_samples,), default=None
            Each sample's weight in every vote it takes part in (finite, > 0;
            multiplies pruning's reliability). Default 1.

        Returns
        -------
        ids : ndarray of int64
            The stored samples' ids, in the order of ``X`` (a copy).
        """
        X, labels = checked_rows(X, labels, self.n_features)
        m = X.shape[0]
        taxonomy, labels = label_paths(
            self._taxonomy, self._classes is not None, labels, classes, self._owner
        )
        if taxonomy is not None:  # path codes: classes are 0 .. n_paths - 1
            classes = np.arange(taxonomy.n_paths)
        new_classes, old_to_new = grown_classes(
            self._classes, labels, classes, self._owner
        )
        stored = self.backend.stored
        ids = self.next_ids(m) if ids is None else checked_new_ids(ids, m, stored)
        weights = checked_weights(sample_weight, m)
        mean = self._mean
        if mean is None and self.preprocessing == "center_l2" and m:
            mean = fit_center(X)
        new = NewRows(X, labels, ids, weights, mean, new_classes, old_to_new, taxonomy)
        next_id = max(self._next_id, int(ids.max()) + 1) if m else self._next_id
        commit = self._commit(
            lambda: self._added(new, next_id),
            classes=new.classes,
            taxonomy=new.taxonomy,
            mean=new.mean,
            next_id=next_id,
        )
        # Ctrl-C is held until rows and front agree: an id the rows hold that
        # the front does not know would be issued again.
        with uninterrupted():
            self.backend.add(new, commit)
        return ids.copy()

    def _added(self, new: NewRows, next_id: int) -> None:
        """The front's own state once the rows of ``new`` are stored."""
        self._classes, self._taxonomy = new.classes, new.taxonomy
        self._mean = new.mean
        self._next_id = next_id
        self._version += 1

    # -- looking up -----------------------------------------------------------------
    def _located(self, ids, what: str = "ids") -> tuple[np.ndarray, np.ndarray]:
        """``(ids, where)`` of stored ids (1-d ints, every one in memory): the
        checked ids and what the backend's ``locate`` makes of them."""
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"{what} must be 1-d; got shape {ids.shape}.")
        ids = checked_ids(ids)
        where, known = self.backend.locate(ids)
        if not known.all():
            unknown = np.unique(ids[~known])
            raise ValueError(f"{what} not in memory: {unknown[:10].tolist()}.")
        return ids, where

    @reads
    def get(self, ids, *, prepared: bool = False) -> Bunch:
        """Raw vectors, labels, reliabilities and exclusions of stored samples.

        Parameters
        ----------
        ids : array-like of int
            Stored sample ids.
        prepared : bool, default=False
            Give ``X`` as stored and searched (pre-processed) instead of raw.

        Returns
        -------
        data : Bunch
            ``X`` (float32, the raw vectors as added, to float32 rounding of the
            pre-processing and its inverse), ``labels`` (class values),
            ``sample_weight``, ``reliability``, ``excluded``; rows in the order
            of ``ids``.
        """
        got = self.backend.fetch(self._located(ids)[1], prepared)
        got.labels = self._label_values(got.pop("codes"))
        if self._mean is not None and not prepared:
            got.X += self._mean
        return got

    def _label_values(self, codes: np.ndarray) -> np.ndarray:
        if self._taxonomy is None:
            return self.classes[codes]
        return self._taxonomy.rows(codes)

    # -- removing -------------------------------------------------------------------
    @reads
    def check_removable(self, ids) -> np.ndarray:
        """Validate ids to remove (1-d ints, unique, all stored); a sorted copy.

        Nothing changes: callers check before they start an edit of their own.

        Parameters
        ----------
        ids : array-like of int
            Sample ids to remove.

        Returns
        -------
        ids : ndarray of int64
            The same ids, sorted.
        """
        ids, _ = self._located(ids, "sample_ids to unlearn")
        return refuse_duplicates(ids.astype(np.int64), "sample_ids to unlearn")

    @edits
    def remove(self, ids, *, retrain_index: bool = False) -> None:
        """Delete stored samples from the rows and the index (all or nothing).

        Parameters
        ----------
        ids : array-like of int
            Stored sample ids.
        retrain_index : bool, default=False
            Retrain an approximate index's trained parts (IVF centroids, PQ/SQ
            codebooks) on what remains; otherwise they are kept and only the
            removed codes leave the index, except from an HNSW graph: there the
            removed nodes are marked dead and skipped by searches, and their
            bytes stay until the graph is compacted (``retrain_index=True``,
            over 20% dead, or a save, which writes no index then).
        """
        uniq = self.check_removable(ids)
        rows_change(self, uniq)  # an edit log hashes rows it has not yet
        if uniq.size:
            # Ctrl-C is held until index, rows and front agree.
            with uninterrupted():
                self.backend.remove(uniq, bool(retrain_index), self._commit())

    # -- reliabilities and exclusions -------------------------------------------------
    @edits
    def set_reliability(self, ids, reliability) -> None:
        """Set the voting weights of stored samples (finite, > 0; FORMULAS.md 5).

        Parameters
        ----------
        ids : array-like of int
            Stored sample ids.
        reliability : array-like of float, aligned with ``ids``
            One weight per id.
        """
        self._set_flags("reliability", ids, reliability, checked_reliability)

    @edits
    def set_excluded(self, ids, excluded) -> None:
        """Set the hard-pruning flags of stored samples (excluded: no vote).

        Parameters
        ----------
        ids : array-like of int
            Stored sample ids.
        excluded : array-like of bool, aligned with ``ids``
            One flag per id.
        """
        self._set_flags("excluded", ids, excluded, checked_excluded)

    def _set_flags(self, name: str, ids, values, check) -> None:
        """Check ``values`` of stored ``ids`` with ``check`` and set them (a new
        version), all or nothing."""
        _, where = self._located(ids)
        values = check(values, where.shape)
        self.backend.set_column(name, where, values, self._commit())

    # -- the index --------------------------------------------------------------------
    @edits
    def set_index_params(self, params: dict) -> None:
        """Set the index's search knobs by their FAISS names (``{"nprobe": 32}``).

        Search results may change, so the version advances. A knob the index does
        not have raises ValueError and changes nothing.

        Parameters
        ----------
        params : dict
            The new ``index_params``: FAISS knobs by their FAISS names, and
            ``"refine"``. A knob left out goes back to FAISS's default.
        """
        params = dict(params)
        if self.auto and params != self.index_params:
            raise ValueError(
                "engine='auto' chooses its own index_params; name an index to set "
                "or tune its knobs."
            )
        self.backend.set_index_params(params, self._commit())

    @edits
    def retrain_index(self) -> None:
        """Build the index afresh on every stored sample: an approximate index
        trains again on a sample of the whole memory (as a fresh fit would),
        instead of on the samples it held when it was first built."""
        if self.n_samples:
            self.backend.retrain_index(self._commit())

    @edits
    def replace_vectors(self, X) -> None:
        """Replace every stored vector, keeping ids, labels and weights.

        For a memory whose encoder has changed (a backbone being fine-tuned):
        ``X`` holds the samples' new raw embeddings, one row per stored sample
        in the order of :meth:`ids`. They are pre-processed anew (the centre of
        ``"center_l2"`` is refitted on them), written over the old rows and the
        index is rebuilt on them, all or nothing.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The new raw vectors, aligned with :meth:`ids`.
        """
        X = np.asarray(X, dtype=np.float32)
        n = self.n_samples
        if X.shape != (n, self.n_features):
            raise ValueError(
                f"X must hold one row per stored sample, shape "
                f"({n}, {self.n_features}); got {X.shape}."
            )
        if not np.isfinite(X).all():
            raise ValueError("X holds NaN or infinite values; the memory takes none.")
        self.backend.check_replaceable()
        rows_change(self)  # an edit log hashes rows it has not yet, as they were
        mean = self._mean
        if self.preprocessing == "center_l2" and n:
            mean = fit_center(X)

        def applied():
            self._mean = mean
            self._version += 1

        self.backend.replace_vectors(X, mean, self._commit(applied, mean=mean))

    @edits
    def destroy(self) -> None:
        """Zero and delete the memory's files and empty it (a memory on disk
        that is being replaced). A memory in RAM is only emptied."""
        self.backend.destroy(self._commit())

    # -- searching --------------------------------------------------------------------
    def prepare(self, X) -> np.ndarray:
        """A pre-processed float32 copy of raw vectors (the input is untouched).

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
            Raw vectors.

        Returns
        -------
        Q : ndarray of float32 of shape (n_queries, n_features)
            ``X`` in the stored vectors' space, as :meth:`search` takes it with
            ``prepared=True``.
        """
        return prepared_queries(X, self.n_features, self._mean, self.normalizes)

    @reads
    def search(
        self,
        X,
        k: int,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool = False,
        prepared: bool = False,
        index_params: dict | None = None,
    ) -> Neighbors:
        """The ``k`` nearest stored samples of raw query vectors.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
            Raw queries, pre-processed as the stored vectors were (on a copy,
            one block at a time).
        k : int
            Capped at the number of stored samples.
        batch_size : int, default=4096
            Queries per block: bounds the working memory.
        progress : bool, default=False
            A progress bar over blocks.
        prepared : bool, default=False
            ``X`` is already in the stored vectors' space (e.g. built from
            :meth:`get` with ``prepared=True``): searched as given.
        index_params : dict, default=None
            Search with these knobs (as :meth:`set_index_params` takes them)
            instead of the memory's, for this call only: what
            ``KNNVoter.tune_index`` measures while other threads search with
            the memory's own.

        Returns
        -------
        neighbors : Neighbors
            The ``k`` nearest of each query, nearest first, equal distances by
            sample id.
        """
        knobs = None if index_params is None else self.backend.knobs(index_params)
        return self._search_blocks(
            X, k, batch_size, progress, prepared, exact=False, knobs=knobs
        )

    @reads
    def search_exact(self, X, k: int, **options) -> Neighbors:
        """The ``k`` nearest stored samples of raw queries by brute force over the
        stored vectors, whatever the engine: the reference that approximate
        indexes are measured against (:meth:`KNNVoter.tune_index`).

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
            Raw queries, as :meth:`search` takes them.
        k : int
            Capped at the number of stored samples.
        **options
            ``batch_size``, ``progress`` and ``prepared``, as :meth:`search`
            takes them (an exact search has no index knobs).

        Returns
        -------
        neighbors : Neighbors
            The exact ``k`` nearest of each query, nearest first.
        """
        unknown = set(options) - {"batch_size", "progress", "prepared"}
        if unknown:
            raise TypeError(
                f"search_exact() got unexpected keyword arguments {sorted(unknown)}."
            )
        opts = {"batch_size": DEFAULT_BATCH_SIZE, "progress": False, **options}
        return self._search_blocks(
            X,
            k,
            opts["batch_size"],
            opts["progress"],
            opts.get("prepared", False),
            exact=True,
        )

    def _search_blocks(
        self, X, k, batch_size, progress, prepared, *, exact, knobs=None
    ) -> Neighbors:
        X = np.asarray(X)
        k = capped_k(k, self.n_samples)
        starts = range(0, X.shape[0], batch_size)
        backend = self.backend

        def submit(s):
            block = X[s : s + batch_size]
            Q = (
                np.array(block, np.float32, order="C")
                if prepared
                else self.prepare(block)
            )
            Q = backend.in_store_units(Q, "Queries")
            return Q, backend.submit(Q, k, exact, knobs)

        parts = []
        for Q, pending in self._blocks(starts, submit, progress, "search"):
            # A zero query (after centring) has no direction: every normalised
            # sample is equally far from it, so its neighbours are arbitrary.
            lost = ~Q.any(axis=1) if self.normalizes else None
            parts.append(self._record(backend.collect(pending, k), lost))
        return Neighbors.concatenate(parts) if parts else self._empty(k)

    def _record(self, hits: Hits, directionless=None) -> Neighbors:
        """The neighbour record of a backend's hits, with the front's classes."""
        # the first five fields are the record's first five, in its order
        return Neighbors(
            *hits[:5],
            self.classes,
            hits.query_ids,
            hits.query_codes,
            directionless,
            self._taxonomy,
        )

    @reads
    def search_self(
        self,
        ids=None,
        k: int = 1,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool = False,
    ) -> Neighbors:
        """Leave-one-out neighbours of stored samples (FORMULAS.md 2).

        Searches ``k + 1`` and drops the query itself *by sample id* (with
        duplicate vectors, self is not always first); if self is not among them,
        the last neighbour is dropped, so exactly ``min(k, n - 1)`` remain.

        Parameters
        ----------
        ids : array-like of int, default=None
            Stored samples that query; all, oldest first, if None.
        k : int, default=1
            Capped at the number of stored samples minus one.
        batch_size : int, default=4096
            Queries per block: bounds the working memory.
        progress : bool, default=False
            A progress bar over blocks.

        Returns
        -------
        neighbors : Neighbors
            With ``query_ids`` and ``query_labels`` set; rows in the order of
            the query ids.
        """
        backend = self.backend
        queries = backend.all_queries() if ids is None else self._located(ids)[1]
        n = self.n_samples
        if n < 2:
            raise ValueError(
                f"Leave-one-out needs at least 2 samples in memory; it has {n}."
            )
        k = capped_k(k, n - 1)
        jobs = backend.self_jobs(queries, batch_size)
        parts, positions = [], []
        for pending in self._blocks(
            jobs,
            lambda job: backend.submit_self(queries, job, k),
            progress,
            "leave-one-out",
        ):
            pos, hits = backend.collect_self(pending, k)
            parts.append(self._record(hits))
            positions.append(pos)
        if not parts:
            return self._empty(k)
        merged = Neighbors.concatenate(parts)
        if positions[0] is None:  # the blocks came in the queries' order
            return merged
        return merged.take(np.argsort(np.concatenate(positions), kind="stable"))

    def _blocks(self, jobs, submit, progress: bool, desc: str):
        """``submit(job)`` for each job, yielding each submission once the
        backend's ``in_flight`` newer ones are out (the caller collects it
        before the next is made), with a progress bar over more than one job."""
        if progress and len(jobs) > 1:
            from tqdm.auto import tqdm

            jobs = tqdm(jobs, desc=desc, unit="block")
        pending = []
        for job in jobs:
            pending.append(submit(job))
            if len(pending) > self.backend.in_flight:
                yield pending.pop(0)
        yield from pending

    @reads
    def within_radius(
        self, query_ids, radii, *, X=None, ids=None, prepared: bool = False
    ) -> np.ndarray:
        """Which stored queries have some point within their radius.

        The points are raw vectors ``X`` (pre-processed here) or the stored
        samples ``ids``. Exactly those queries can see their neighbour lists
        change when the points enter or leave the store (pruning's incremental
        counts use it). A query with an infinite radius takes any point.

        Parameters
        ----------
        query_ids : array-like of int
            Stored samples whose radii are given.
        radii : array-like of float, aligned with ``query_ids``
            Each query's radius, a distance under the store's metric.
        X : array-like of shape (n_points, n_features), default=None
            Raw points.
        ids : array-like of int, default=None
            Exactly one of ``X`` and ``ids``.
        prepared : bool, default=False
            ``X`` is already pre-processed (as :meth:`search` takes it).

        Returns
        -------
        near : ndarray of bool, aligned with ``query_ids``
            Whether some point lies within each query's radius.
        """
        if (X is None) == (ids is None):
            raise ValueError("within_radius takes exactly one of X and ids.")
        if ids is not None:
            P = self.backend.points(self._located(ids)[1])
        else:
            P = np.array(X, dtype=np.float32) if prepared else self.prepare(X)
            P = self.backend.in_store_units(P, "Points")
        _, where = self._located(query_ids, "query_ids")
        radii = np.asarray(radii, dtype=np.float32)
        if radii.shape != where.shape:
            raise ValueError(
                f"radii must have shape {where.shape}, one per query id; got "
                f"{radii.shape}."
            )
        return self.backend.within(where, radii, P)

    def _empty(self, k: int) -> Neighbors:
        return Neighbors.empty(k, self.classes, self._taxonomy)


def capped_k(k: int, available: int) -> int:
    """``k`` capped at the samples available; ValueError for an empty memory."""
    k = min(int(k), available)
    if k <= 0:
        raise ValueError("The memory is empty: fit or partial_fit samples first.")
    return k


def query_blocks(n: int, size: int, progress: bool, desc: str):
    """Starts of the blocks of ``size`` among ``n`` queries, under a progress
    bar when asked and there is more than one block."""
    starts = range(0, n, size)
    if progress and n > size:
        from tqdm.auto import tqdm

        return tqdm(starts, desc=desc, unit="block")
    return starts
