"""The written contracts between the estimators, the store, its row backends
and the engines.

The estimators speak only :class:`Store`: raw vectors and sample ids in,
:class:`~skknn.Neighbors` records out. A store keeps its vectors wherever it
likes (RAM today; on disk or in shards next) and searches them through a
:class:`SearchEngine`. A capability that an implementation lacks is a declared
attribute, never an ``AttributeError`` caught later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from skknn._docstrings import fill_doc
from skknn.memory.metric import Metric
from skknn.memory.neighbors import Neighbors


@runtime_checkable
@fill_doc
class SearchEngine(Protocol):
    """Finds the nearest rows of a store's pre-processed vectors (float32, or
    float16 widened block by block).

    Engines address rows either by position in the store's array
    (``keys_are_ids = False``: they search that array itself) or by sample id
    (``True``: they hold their own copy or codes, as FAISS indexes do). A key of
    -1 marks a slot with no neighbour. An edit either completes or raises with
    the engine unchanged: the store relies on that to stay all-or-nothing.
    ``ready`` is False while an index waits for enough samples to train: the
    store then calls :meth:`build` on every add instead of :meth:`add`.

    %(protocol_parameters)s

    Examples
    --------
    A store's engine satisfies the protocol (it is checked at run time):

    >>> from skknn import SearchEngine, VectorStore
    >>> isinstance(VectorStore(2, engine="exact").engine, SearchEngine)
    True
    """

    metric: Metric
    device: torch.device
    keys_are_ids: bool
    ready: bool

    def build(self, X: np.ndarray, ids: np.ndarray) -> None:
        """Index ``X`` (rows with sample ``ids``) from scratch.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_features)
            The store's pre-processed rows.
        ids : ndarray of int64 of shape (n_samples,)
            The sample id of each row.
        """

    def add(self, X_new: np.ndarray, ids_new: np.ndarray) -> None:
        """Index rows appended to the store's array.

        Parameters
        ----------
        X_new : ndarray of shape (n_new, n_features)
            The appended pre-processed rows.
        ids_new : ndarray of int64 of shape (n_new,)
            Their sample ids.
        """

    def check_remove(self, n_features: int, n_kept: int, retrain: bool) -> None:
        """Raise, before anything changes, if removing down to ``n_kept`` would.

        Parameters
        ----------
        n_features : int
            Width of the stored vectors.
        n_kept : int
            Number of samples the removal leaves.
        retrain : bool
            Whether the removal retrains the index (as :meth:`remove`).
        """

    def remove(
        self,
        X_kept: np.ndarray,
        ids_kept: np.ndarray,
        ids_removed: np.ndarray,
        retrain: bool = False,
    ) -> None:
        """Forget ``ids_removed``; ``X_kept`` / ``ids_kept`` are what remains.

        Parameters
        ----------
        X_kept : ndarray of shape (n_kept, n_features)
            The pre-processed rows that remain, in the store's new order.
        ids_kept : ndarray of int64 of shape (n_kept,)
            Their sample ids.
        ids_removed : ndarray of int64
            The removed sample ids (sorted, unique).
        retrain : bool, default=False
            Retrain an approximate index's trained parts (IVF centroids, PQ/SQ
            codebooks) on what remains; otherwise they are kept and only the
            removed codes leave the index.
        """

    def set_params(self, params: dict) -> None:
        """Set search knobs by their FAISS names (``nprobe``, ``efSearch``);
        ValueError for a knob the engine does not have, with nothing changed.

        Parameters
        ----------
        params : dict
            Knob values by FAISS name (``{"nprobe": 32}``); the store keeps
            ``"refine"`` to itself.
        """

    def search(
        self, X: np.ndarray, Q: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, keys)`` of the ``k`` nearest rows of ``X`` for each row of
        ``Q``, nearest first, each of shape ``(n_queries, k)``.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_features)
            The store's pre-processed rows (an engine with its own copy or codes
            may not read them).
        Q : ndarray of float32 of shape (n_queries, n_features)
            Pre-processed queries.
        k : int
            Neighbours per query.
        """

    def state(self) -> dict[str, np.ndarray]:
        """Arrays that :meth:`load_state` needs besides the store's own."""

    def load_state(
        self, state: dict[str, np.ndarray], X: np.ndarray, ids: np.ndarray
    ) -> None:
        """Restore from :meth:`state` over the store's restored rows.

        Parameters
        ----------
        state : dict of str to ndarray
            What :meth:`state` returned when the store was saved.
        X : ndarray of shape (n_samples, n_features)
            The store's restored pre-processed rows.
        ids : ndarray of int64 of shape (n_samples,)
            Their sample ids.
        """


@runtime_checkable
@fill_doc
class Store(Protocol):
    """A searchable, editable memory of labelled embeddings, by sample id.

    It owns the pre-processing (``mean``, normalisation), the metric, the class
    labels, the ids, the reliabilities and exclusions. Every edit increments
    ``version``; ``uid`` names the store, so ``(uid, version)`` identifies one
    state of one memory (kept across save and load).

    %(protocol_parameters)s

    Examples
    --------
    :class:`~skknn.VectorStore` satisfies the protocol (it is checked at run
    time):

    >>> from skknn import Store, VectorStore
    >>> isinstance(VectorStore(2), Store)
    True
    """

    n_features: int
    metric: Metric
    preprocessing: str | None
    engine_name: str
    device: torch.device
    uid: str

    @property
    def version(self) -> int: ...

    @property
    def n_samples(self) -> int: ...

    @property
    def classes(self) -> np.ndarray: ...

    @property
    def taxonomy(self):
        """Each level's classes and each path's code per level, for labels with
        several columns (then :attr:`classes` are path codes); else None."""

    @property
    def mean(self) -> np.ndarray | None: ...

    def ids(self) -> np.ndarray: ...

    def next_ids(self, n: int) -> np.ndarray: ...

    def reading(self): ...

    def editing(self): ...

    def state(self) -> tuple[dict, dict]: ...

    def add(
        self, X, labels, ids=None, *, classes=None, sample_weight=None
    ) -> np.ndarray: ...

    def check_removable(self, ids) -> np.ndarray: ...

    def remove(self, ids, *, retrain_index: bool = False) -> None: ...

    def search(
        self,
        X,
        k: int,
        *,
        batch_size: int = ...,
        progress: bool = ...,
        prepared: bool = ...,
        index_params: dict | None = None,
    ) -> Neighbors: ...

    def search_self(
        self, ids=None, k: int = ..., *, batch_size: int = ..., progress: bool = ...
    ) -> Neighbors: ...

    def within_radius(
        self, query_ids, radii, *, X=None, ids=None, prepared: bool = False
    ) -> np.ndarray: ...

    def get(self, ids, *, prepared: bool = False): ...

    def set_reliability(self, ids, reliability) -> None: ...

    def set_excluded(self, ids, excluded) -> None: ...

    def set_index_params(self, params: dict) -> None:
        """Search knobs of the index (``nprobe``, ``efSearch``).

        Parameters
        ----------
        params : dict
            Knob values by FAISS name (``{"nprobe": 32}``), and ``"refine"``.
        """


def _documented_by(protocol, front) -> None:
    """Give the protocol's methods the front's docstrings: the methods mean
    what :class:`~skknn.memory.base.MemoryFront` does, written down once."""
    for name, member in vars(protocol).items():
        if callable(member) and member.__doc__ is None and hasattr(front, name):
            member.__doc__ = getattr(front, name).__doc__


def _documented_store() -> None:
    from skknn.memory.base import MemoryFront

    _documented_by(Store, MemoryFront)


_documented_store()


@runtime_checkable
@fill_doc
class RowBackend(Protocol):
    """Where a memory's rows live: the narrow contract under the memory front.

    :class:`~skknn.memory.base.MemoryFront` owns what the memory means (ids,
    classes, the centre, the version and lock, query blocking, the
    leave-one-out prologue, the :class:`~skknn.Neighbors` record) and holds
    one row backend (its ``backend``) for what depends on where the rows live.
    A row is addressed by a *handle* the backend chooses (a row position in
    this process, a sample id across shards): :meth:`locate` makes handles of
    ids, and every other method takes them. Backends today:
    :class:`~skknn.memory.local.LocalRows` (rows in this process, kept in RAM
    or in memory-mapped files by a :class:`RowStorage`) and
    :class:`~skknn.memory.sharded.DaskRows` (rows in Dask shards).
    ``tests/memory/test_backend_contract.py`` is the shared suite a new one
    must pass.

    The six parts of the contract (issue 24):

    - *add rows*: :meth:`add`;
    - *remove ids*: :meth:`remove`;
    - *get rows by id*: :meth:`locate`, :meth:`fetch`, :meth:`points`;
    - *search one block*: :meth:`submit` then :meth:`collect` (``in_flight``
      submitted blocks may be out at once), giving
      :class:`~skknn.memory.neighbors.Hits`: exact distances and ids, nearest
      first, equal distances by sample id, the k-th place's tie whole; the
      leave-one-out variant :meth:`self_jobs`, :meth:`submit_self`,
      :meth:`collect_self`; :meth:`within` for radii;
    - *commit*: every edit takes the front's :class:`~skknn.memory.base.Commit`,
      makes the change durable with the front's state, and calls
      ``commit.applied()`` once its new rows are in place; or it raises with
      nothing changed. A backend over several machines may not manage that
      for every failure: ``DaskRows`` names a shard lost during a removal or
      a flag change, whose part did not happen, and applies the rest;
    - *open*: a classmethod of the backend (``LocalRows.from_state``,
      ``DaskRows.opened``).

    Exact distances and ties are settled where the rows are: a shard holds its
    candidates' vectors, the client would have to fetch them
    (``docs/architecture.md``).

    %(protocol_parameters)s

    Examples
    --------
    >>> from skknn import VectorStore
    >>> from skknn.memory.protocols import RowBackend
    >>> isinstance(VectorStore(2).backend, RowBackend)
    True
    """

    n_features: int
    metric: Metric
    normalizes: bool
    storage_dtype: str
    sharded: bool
    in_flight: int
    # The index, as the front shows it (``engine`` None and ``folder`` None
    # where the backend has no single engine or no files: shards).
    engine: object
    engine_name: str
    index_params: dict
    auto: bool
    device: torch.device
    folder: object
    vector_nbytes: int

    def tuning_grid(self, n_features: int):
        """The index's knob grid, or None for an exact engine.

        Parameters
        ----------
        n_features : int
            The vectors' width.
        """

    @property
    def n_samples(self) -> int:
        """Rows held."""

    def ids(self) -> np.ndarray:
        """Every stored id, oldest first (a copy)."""

    def stored(self, ids: np.ndarray) -> np.ndarray:
        """Which of these ids are stored (the check of fresh ids).

        Parameters
        ----------
        ids : ndarray of int64
            Sample ids (checked by the front).
        """

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(handles, known)`` of checked int64 ids: each id's handle and
        whether it is stored.

        Parameters
        ----------
        ids : ndarray of int64
            Sample ids (checked by the front).
        """

    def add(self, new, commit) -> None:
        """Store a checked add (:class:`~skknn.memory.base.NewRows`): raw rows,
        labels, fresh ids, weights, the centre and the classes after it; all
        or nothing, committed.

        Parameters
        ----------
        new : NewRows
            The checked add (:class:`~skknn.memory.base.NewRows`).
        commit : Commit
            The front's side of the edit (:class:`~skknn.memory.base.Commit`).
        """

    def remove(self, ids: np.ndarray, retrain: bool, commit) -> None:
        """Delete stored ids (sorted, unique) from the rows and any index.

        Parameters
        ----------
        ids : ndarray of int64
            Sample ids (checked by the front).
        retrain : bool
            Retrain an approximate index's trained parts on what remains.
        commit : Commit
            The front's side of the edit (:class:`~skknn.memory.base.Commit`).
        """

    def set_column(self, name: str, handles: np.ndarray, values, commit) -> None:
        """Set ``"reliability"`` or ``"excluded"`` of stored rows, committed.

        Parameters
        ----------
        name : {"reliability", "excluded"}
            The column.
        handles : ndarray
            Rows as :meth:`locate` addresses them.
        values : ndarray
            One checked value per handle.
        commit : Commit
            The front's side of the edit (:class:`~skknn.memory.base.Commit`).
        """

    def set_index_params(self, params: dict, commit) -> None:
        """Set the index's knobs (ValueError for one it lacks, nothing changed).

        Parameters
        ----------
        params : dict
            Knobs by their FAISS names, and ``"refine"``.
        commit : Commit
            The front's side of the edit (:class:`~skknn.memory.base.Commit`).
        """

    def retrain_index(self, commit) -> None:
        """Build the index afresh on every stored row.

        Parameters
        ----------
        commit : Commit
            The front's side of the edit (:class:`~skknn.memory.base.Commit`).
        """

    def check_replaceable(self) -> None:
        """Raise ValueError where every vector cannot be replaced in place."""

    def replace_vectors(self, X: np.ndarray, mean, commit) -> None:
        """Every stored row's new raw vector, pre-processed around ``mean``.

        Parameters
        ----------
        X : ndarray of float32 of shape (n_samples, n_features)
            The new raw vectors, aligned with :meth:`ids`.
        mean : ndarray or None
            The centre to subtract (``"center_l2"``).
        commit : Commit
            The front's side of the edit (:class:`~skknn.memory.base.Commit`).
        """

    def destroy(self, commit) -> None:
        """Zero and delete whatever the backend keeps outside the process, and
        empty it (or raise where it keeps nothing to destroy).

        Parameters
        ----------
        commit : Commit
            The front's side of the edit (:class:`~skknn.memory.base.Commit`).
        """

    def fetch(self, handles: np.ndarray, prepared: bool):
        """A Bunch of ``X`` (pre-processed if ``prepared``, else raw less the
        centre), ``codes`` (class codes) and, unless ``prepared`` (optional
        then), ``reliability``, ``excluded``, ``sample_weight`` of these rows.

        Parameters
        ----------
        handles : ndarray
            Rows as :meth:`locate` addresses them.
        prepared : bool
            Vectors as stored and searched instead of raw.
        """

    def points(self, handles: np.ndarray) -> np.ndarray:
        """The rows' vectors in the units searches compare (as
        :meth:`in_store_units` makes queries).

        Parameters
        ----------
        handles : ndarray
            Rows as :meth:`locate` addresses them.
        """

    def in_store_units(self, Q: np.ndarray, what: str) -> np.ndarray:
        """Pre-processed float32 queries (a copy, modified) in the stored
        vectors' units; ValueError for values they cannot be compared in.

        Parameters
        ----------
        Q : ndarray of float32 of shape (n_queries, n_features)
            Pre-processed queries.
        what : str
            What the vectors are, for the error message.
        """

    def knobs(self, index_params: dict):
        """One search's knobs (``search(index_params=...)``), or ValueError.

        Parameters
        ----------
        index_params : dict
            Knobs for this search only.
        """

    def submit(self, Q: np.ndarray, k: int, exact: bool, knobs):
        """Start the search of one block of queries; a pending answer.

        Parameters
        ----------
        Q : ndarray of float32 of shape (n_queries, n_features)
            Pre-processed queries.
        k : int
            Neighbours per query.
        exact : bool
            Brute force over the stored vectors, whatever the engine.
        knobs : object or None
            What :meth:`knobs` made of a search's ``index_params``; None: the
            memory's own.
        """

    @fill_doc
    def collect(self, pending, k: int):
        """The :class:`~skknn.memory.neighbors.Hits` of a submitted block.

        %(backend_collect)s
        """

    def all_queries(self) -> np.ndarray:
        """Handles of every stored row, oldest first (leave-one-out of all)."""

    def self_jobs(self, handles: np.ndarray, batch_size: int) -> list:
        """The leave-one-out blocks of these queries (at most ``batch_size``
        each).

        Parameters
        ----------
        handles : ndarray
            Rows as :meth:`locate` addresses them.
        batch_size : int
            Queries per block at most.
        """

    def submit_self(self, handles: np.ndarray, job, k: int):
        """Start the leave-one-out search of one block.

        Parameters
        ----------
        handles : ndarray
            Rows as :meth:`locate` addresses them.
        job : object
            One of :meth:`self_jobs`'s blocks.
        k : int
            Neighbours per query.
        """

    @fill_doc
    def collect_self(self, pending, k: int):
        """``(positions or None, Hits)`` of a submitted block: the queries'
        places among ``handles`` (None: in order), their ``k`` nearest others,
        with ``query_ids`` and ``query_codes``.

        %(backend_collect)s
        """

    def within(self, handles: np.ndarray, radii: np.ndarray, P: np.ndarray):
        """Whether some point of ``P`` lies within each stored query's radius.

        Parameters
        ----------
        handles : ndarray
            Rows as :meth:`locate` addresses them.
        radii : ndarray of float32
            One radius per handle, under the memory's metric.
        P : ndarray of float32 of shape (n_points, n_features)
            Points in the stored vectors' units.
        """

    def state(self, meta: dict, arrays: dict) -> tuple[dict, dict]:
        """The memory's ``(meta, arrays)``: the front's with the rows'.

        Parameters
        ----------
        meta : dict
            The front's JSON-able state.
        arrays : dict of str to ndarray
            The front's arrays (centre, taxonomy paths).
        """

    def check_picklable(self) -> None:
        """Raise TypeError where the rows must not be pickled."""


@dataclass(frozen=True)
class RemovalSteps:
    """What :class:`~skknn.memory.local.LocalRows` does around its storage's
    removal (:meth:`RowStorage.remove`).

    The storage decides when its rows move; ``LocalRows`` owns the index and
    the rows' state. Each step is a callable bound to this one removal.

    Parameters
    ----------
    engine : SearchEngine
        The engine that will index the kept rows (the memory's, or the one
        ``engine="auto"`` switches to).
    by_rows : bool
        Whether ``engine`` keys rows by position (it searches the arrays
        themselves) rather than by sample id.
    key : object
        The state the removal starts from, for :meth:`RowStorage.order`.
    edit_index : callable
        ``edit_index(X_kept, ids_kept)``: the kept rows, in memory order, to
        the index (all or nothing).
    restore_index : callable
        ``restore_index()``: the index back on the rows as they were (a commit
        failed after :attr:`edit_index`).
    commit : callable
        ``commit(bufs, n, removed=None)``: the state after the removal to the
        storage's :meth:`RowStorage.commit` (``bufs`` None: the current arrays).
    removed : callable
        ``removed(n, bufs=None)``: the rows' state once the removal is
        committed (``bufs``: the new arrays, None when the old ones hold it).

    Examples
    --------
    >>> from skknn.memory.protocols import RemovalSteps
    >>> sorted(RemovalSteps.__dataclass_fields__)[:3]
    ['by_rows', 'commit', 'edit_index']
    """

    engine: SearchEngine
    by_rows: bool
    key: object
    edit_index: Callable
    restore_index: Callable
    commit: Callable
    removed: Callable


@runtime_checkable
class RowStorage(Protocol):
    """Where the arrays of rows searched in this process live: the storage of
    :class:`~skknn.memory.local.LocalRows`.

    ``LocalRows`` owns the engine, the pre-processing of rows, the search,
    refinement and ties; its storage only keeps the per-row arrays, in one
    order (vectors, labels, ids, reliabilities, exclusions, sample weights
    and, when the memory normalises, the raw lengths), and makes edits of
    them durable. Rows kept elsewhere but searched here (memory-mapped,
    fetched into RAM) are one file under ``skknn/memory/backends/`` that
    implements this and passes ``tests/memory/test_backend_contract.py``.

    Today's storages: :class:`~skknn.memory.backends.ram.RamRows` (numpy
    buffers) and :class:`~skknn.memory.backends.disk.DiskRows` (memory-mapped
    segment files, ``skknn/memory/segments.py``).

    Examples
    --------
    >>> from skknn.memory.backends.ram import RamRows
    >>> from skknn.memory.protocols import RowStorage
    >>> isinstance(RamRows(), RowStorage)
    True
    """

    @property
    def folder(self):
        """The folder holding the rows, or None (RAM)."""

    def room(
        self, bufs: list, n: int, cap: int, *, filled: int | None = None
    ) -> list[np.ndarray]:
        """Writable arrays holding rows ``[0, n)`` of ``bufs`` with capacity for
        ``cap``: an add writes its new, pre-processed rows straight into them,
        rows ``[n, filled)`` (a hint: fresh memory may be faulted in at once)."""

    def published(self, bufs: list) -> list[np.ndarray]:
        """The arrays the front keeps once ``bufs`` are committed."""

    def order(self, n: int, key) -> np.ndarray | None:
        """Rows ``[0, n)`` in memory order (insertion order), or None when they
        lie in it; ``key`` names the front's state (cached under it)."""

    def commit(self, describe: Callable, bufs, n: int, *, removed=None) -> None:
        """Make rows ``[0, n)`` of ``bufs`` and ``describe()``'s ``(meta,
        small arrays)`` the durable state (a no-op in RAM, which never calls
        ``describe``); with ``removed``, the deletion of those rows."""

    def remove(
        self, bufs: list, gone_rows: np.ndarray, n_old: int, steps: RemovalSteps
    ) -> None:
        """Drop rows ``gone_rows`` (sorted) of ``bufs``, all or nothing, running
        the front's ``steps`` at the points this backend's layout needs."""

    def adopt(self, X: np.ndarray, n: int) -> np.ndarray:
        """Rows ``[0, n)`` of a saved memory's vectors, kept as this backend
        keeps them (streamed into a file on disk)."""

    def check_picklable(self) -> None:
        """Raise TypeError where the rows must not be pickled."""

    def check_replaceable(self) -> None:
        """Raise ValueError where every vector cannot be replaced in place."""

    def destroy(self) -> None:
        """Zero and delete whatever the backend keeps outside the process."""
