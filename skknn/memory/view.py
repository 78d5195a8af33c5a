"""What every store shows of its state, the same way: the base of
:class:`~skknn.VectorStore` and of the sharded store (``skknn/memory/sharded.py``).

It reads the attributes both keep under the same names: ``_version``, ``_n``,
``_classes``, ``_taxonomy``, ``_mean``, ``_ids`` (insertion order), ``_next_id``,
``preprocessing`` and ``metric``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import numpy as np

from skknn._hierarchy import Taxonomy
from skknn.memory.checks import MAX_ID
from skknn.memory.locks import GuardedState, reads


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
        return self._n

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

    def _logical_rows(self) -> np.ndarray | None:
        """The rows in memory order, or None when they lie in it."""
        return None

    @reads
    def ids(self) -> np.ndarray:
        """Ids of every stored sample, oldest first (a copy)."""
        rows = self._logical_rows()
        return self._ids[: self._n].copy() if rows is None else self._ids[rows]

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
