"""What the memory front shows of its state: the read-only half of
:class:`~skknn.memory.base.MemoryFront`.

It reads the front's own fields (``_version``, ``_classes``, ``_taxonomy``,
``_mean``, ``_next_id``, ``preprocessing``, ``metric``) and asks its row
backend (``backend``) how many rows it holds and their ids.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import numpy as np

from skknn._hierarchy import Taxonomy
from skknn.memory.checks import MAX_ID
from skknn.memory.locks import GuardedState, reads


def _of_backend(name: str, doc: str) -> property:
    """A read-only property of the front that is its backend's ``name``."""
    return property(lambda self: getattr(self.backend, name), doc=doc)


class StoreView(GuardedState):
    """Read-only properties of a store and the lock that holds one state."""

    @property
    def normalizes(self) -> bool:
        """Whether vectors are L2-normalised (any pre-processing, or cosine)."""
        return self.preprocessing is not None or self.metric.name == "cosine"

    @property
    def version(self) -> int:
        return self._version

    @property
    def n_samples(self) -> int:
        return self.backend.n_samples

    @property
    def classes(self) -> np.ndarray:
        if self._classes is None:
            return np.empty(0)
        return self._classes

    @property
    def taxonomy(self) -> Taxonomy | None:
        """For multi-output labels, each level's classes and the label path of
        each class code (:attr:`classes` are then path codes 0, 1, ...); None
        for one label column."""
        return self._taxonomy

    @property
    def mean(self) -> np.ndarray | None:
        """Centre of ``"center_l2"`` (None for other pre-processing)."""
        return self._mean

    def reading(self) -> AbstractContextManager[None]:
        """Hold one state of the store across several reads.

        Every method is consistent on its own; hold this to read several things
        (a search and a :meth:`get`, say) from the same state while other threads
        edit. Edits wait until it is released.
        """
        return self._reading()

    def editing(self) -> AbstractContextManager[None]:
        """Hold the store alone across several steps (readers wait), as an
        estimator does while it changes both the memory's knobs and its own
        parameters."""
        return self._editing()

    # -- what the backend holds, read through the front --------------------------------
    engine = _of_backend(
        "engine",
        "The search engine of rows in this process (a :class:`~skknn.memory."
        "protocols.SearchEngine`); None for shards (each has its own).",
    )
    engine_name = _of_backend("engine_name", "The engine's name (``'flat'``, ...).")
    index_params = _of_backend("index_params", "The index's knobs, and ``'refine'``.")
    auto = _of_backend("auto", "Whether the memory's size chooses the engine.")
    device = _of_backend("device", "Where the engine searches.")
    storage_dtype = _of_backend("storage_dtype", "How the stored vectors are kept.")
    storage_folder = _of_backend(
        "folder", "The memory's folder, or None (RAM, shards)."
    )
    vector_nbytes = _of_backend(
        "vector_nbytes",
        "Bytes of RAM held for the stored vectors (0 when they are memory-mapped "
        "from a file; every worker's for shards).",
    )
    sharded = _of_backend("sharded", "Whether the rows are in shards on a cluster.")

    def tuning_grid(self, n_features: int | None = None):
        """The index's knob grid, as ``KNNVoter.tune_index`` walks it, or None
        for an exact engine.

        Parameters
        ----------
        n_features : int, default=None
            The vectors' width (the memory's when None).

        Returns
        -------
        grid : tuple of (list of dict, list of int) or None
            The knob settings and refine factors to try.
        """
        return self.backend.tuning_grid(
            self.n_features if n_features is None else n_features
        )

    @reads
    def ids(self) -> np.ndarray:
        """Ids of every stored sample, oldest first (a copy)."""
        return self.backend.ids()

    @reads
    def next_ids(self, n: int) -> np.ndarray:
        """The ids :meth:`add` gives ``n`` samples by default: never used before.

        Parameters
        ----------
        n : int
            Number of samples.

        Returns
        -------
        ids : ndarray of int64 of shape (n,)
            Consecutive ids above every id ever issued.
        """
        if self._next_id + n - 1 > MAX_ID:
            raise ValueError(
                f"No fresh sample ids are left above the largest ever issued "
                f"({self._next_id - 1}; ids must be <= 2**63 - 1). Pass sample_ids "
                "explicitly (unused ids below it are still free)."
            )
        return np.arange(self._next_id, self._next_id + n, dtype=np.int64)
