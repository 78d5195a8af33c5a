"""The written contracts between the estimators, the store and the engines.

The estimators speak only :class:`Store`: raw vectors and sample ids in,
:class:`~skknn.Neighbors` records out. A store keeps its vectors wherever it
likes (RAM today; on disk or in shards next) and searches them through a
:class:`SearchEngine`. A capability that an implementation lacks is a declared
attribute, never an ``AttributeError`` caught later.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from skknn._metric import Metric
from skknn._neighbors import Neighbors


@runtime_checkable
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
    """

    metric: Metric
    device: torch.device
    keys_are_ids: bool
    ready: bool

    def build(self, X: np.ndarray, ids: np.ndarray) -> None:
        """Index ``X`` (rows with sample ``ids``) from scratch."""

    def add(self, X_new: np.ndarray, ids_new: np.ndarray) -> None:
        """Index rows appended to the store's array."""

    def check_remove(self, n_features: int, n_kept: int, retrain: bool) -> None:
        """Raise, before anything changes, if removing down to ``n_kept`` would."""

    def remove(
        self,
        X_kept: np.ndarray,
        ids_kept: np.ndarray,
        ids_removed: np.ndarray,
        retrain: bool = False,
    ) -> None:
        """Forget ``ids_removed``; ``X_kept`` / ``ids_kept`` are what remains."""

    def set_params(self, params: dict) -> None:
        """Set search knobs by their FAISS names (``nprobe``, ``efSearch``);
        ValueError for a knob the engine does not have, with nothing changed."""

    def search(
        self, X: np.ndarray, Q: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, keys)`` of the ``k`` nearest rows of ``X`` for each row of
        ``Q``, nearest first, each of shape ``(n_queries, k)``."""

    def state(self) -> dict[str, np.ndarray]:
        """Arrays that :meth:`load_state` needs besides the store's own."""

    def load_state(
        self, state: dict[str, np.ndarray], X: np.ndarray, ids: np.ndarray
    ) -> None:
        """Restore from :meth:`state` over the store's restored rows."""


@runtime_checkable
class Store(Protocol):
    """A searchable, editable memory of labelled embeddings, by sample id.

    It owns the pre-processing (``mean``, normalisation), the metric, the class
    labels, the ids, the reliabilities and exclusions. Every edit increments
    ``version``; ``uid`` names the store, so ``(uid, version)`` identifies one
    state of one memory (kept across save and load).
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

    def ids(self) -> np.ndarray:
        """Sample ids of every stored sample (a copy), oldest first."""

    def next_ids(self, n: int) -> np.ndarray:
        """Ids :meth:`add` would give ``n`` samples: never used before."""

    def reading(self):
        """A context holding one state of the store across several reads."""

    def state(self) -> tuple[dict, dict]:
        """``(meta, arrays)`` describing the store, for files."""

    def add(
        self, X, labels, ids=None, *, classes=None, sample_weight=None
    ) -> np.ndarray:
        """Store raw vectors with their labels (one column, or one per level)
        and vote weights; returns ids."""

    def check_removable(self, ids) -> np.ndarray:
        """Validate ids to remove without changing anything; sorted copy."""

    def remove(self, ids, *, retrain_index: bool = False) -> None:
        """Delete these samples everywhere (all must be stored)."""

    def search(self, X, k: int, *, batch_size: int = ..., progress=None) -> Neighbors:
        """Neighbours of raw query vectors."""

    def search_self(
        self, ids=None, k: int = ..., *, batch_size: int = ..., progress=None
    ) -> Neighbors:
        """Leave-one-out neighbours of stored samples (all when ``ids`` is None)."""

    def within_radius(self, query_ids, radii, *, X=None, ids=None) -> np.ndarray:
        """Which stored queries have a point of ``X`` (raw) or of the stored
        samples ``ids`` within their radius."""

    def get(self, ids):
        """Raw vectors, labels, reliabilities and exclusions of stored samples."""

    def set_reliability(self, ids, reliability) -> None:
        """Voting weights of stored samples (finite, > 0)."""

    def set_excluded(self, ids, excluded) -> None:
        """Hard-pruning flags of stored samples."""

    def set_index_params(self, params: dict) -> None:
        """Search knobs of the index (``nprobe``, ``efSearch``)."""
