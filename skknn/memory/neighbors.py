"""The neighbour record: what every search of a store returns.

One object with named ``(n_queries, k)`` fields instead of ``(D, I)`` pairs
that every caller must keep aligned and resolve against the store's rows.
Voting, explanation, pruning counts, JOINT's ``p_kNN``, evaluation and the CLI
all read it; none of them touches the store's arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from skknn._hierarchy import Taxonomy

# The id of an empty slot (an approximate index found fewer than k). Ids users
# give are >= 0, so it can never be confused with a sample.
MISSING = -1


class Hits(NamedTuple):
    """A row backend's answer for one block of queries: what the memory front
    makes a :class:`Neighbors` record of (adding the classes it owns).

    Every field but the ``query_*`` ones has shape ``(n_queries, k)``, nearest
    first, equal distances by sample id; the first five are what
    :func:`~skknn.memory.merge.merge_top` merges.

    Examples
    --------
    >>> import numpy as np
    >>> from skknn.memory.neighbors import Hits
    >>> Hits(*(np.zeros((1, 1)),) * 5)._fields[:3]
    ('distances', 'ids', 'codes')
    """

    distances: np.ndarray
    ids: np.ndarray
    codes: np.ndarray  # class codes, indices into the front's classes
    reliability: np.ndarray
    excluded: np.ndarray
    query_ids: np.ndarray | None = None
    query_codes: np.ndarray | None = None


@dataclass(frozen=True)
class Neighbors:
    """Retrieved neighbours of a batch of queries, nearest first.

    Every field but ``classes`` and the ``query_*`` fields has shape
    ``(n_queries, k)``. The fields are the constructor's parameters and the
    record's attributes (the record is frozen).

    Parameters
    ----------
    distances : ndarray of float32
        Distance to each neighbour under the store's metric; ``inf`` in empty
        slots.
    ids : ndarray of int64
        Sample ids; ``-1`` in empty slots.
    labels : ndarray of int64
        Class codes, indices into ``classes``; 0 in empty slots (mask them with
        :attr:`present`).
    reliability : ndarray of float32
        Voting weight of each neighbour: its pruning reliability (1.0 unless
        pruned softly) times its sample weight (1.0 unless one was given).
    excluded : ndarray of bool
        Hard-pruned neighbours (retrieved, but they do not vote).
    classes : ndarray
        The store's class labels when the search ran.
    query_ids : ndarray of int64 or None
        For a leave-one-out search of the store's own samples, their ids.
    query_labels : ndarray of int64 or None
        For a leave-one-out search, the queries' own class codes.
    directionless : ndarray of bool or None
        Queries that are zero vectors (after centring) under a normalising
        pre-processing: every memory sample is equally far from them, so their
        neighbours carry no information (voting answers uniformly).
    taxonomy : Taxonomy or None
        For multi-output labels, the store's levels when the search ran:
        ``labels`` and ``classes`` are then label-path codes, and
        ``taxonomy.paths[:, l]`` maps them to classes of level ``l``.

    Examples
    --------
    >>> import numpy as np
    >>> from skknn import KNNVoter
    >>> X = np.array([[0., 2.], [1., 1.], [2., 0.], [2., 1.]])
    >>> y = np.array(["low", "mid", "high", "high"])
    >>> knn = KNNVoter(3, metric="euclidean", preprocessing=None, index="exact")
    >>> nb = knn.fit(X, y).neighbors([[2., .4]])
    >>> nb.ids, nb.distances.round(2)
    (array([[2, 3, 1]]), array([[0.4 , 0.6 , 1.17]], dtype=float32))
    >>> nb.label_values()
    array([['high', 'high', 'mid']], dtype='<U4')
    >>> nb.first(1).ids
    array([[2]])
    """

    distances: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    reliability: np.ndarray
    excluded: np.ndarray
    classes: np.ndarray
    query_ids: np.ndarray | None = None
    query_labels: np.ndarray | None = None
    directionless: np.ndarray | None = None
    taxonomy: Taxonomy | None = None

    @property
    def n_queries(self) -> int:
        return self.ids.shape[0]

    @property
    def k(self) -> int:
        return self.ids.shape[1]

    @property
    def present(self) -> np.ndarray:
        """Slots that hold a retrieved sample."""
        return self.ids != MISSING

    @property
    def ranks(self) -> np.ndarray:
        """0-based rank of each slot, ``(n_queries, k)`` (a broadcast view)."""
        return np.broadcast_to(np.arange(self.k), self.ids.shape)

    def farthest(self) -> np.ndarray:
        """Distance to each query's last neighbour found: ``d_k`` (the k-th), or
        the farthest found where an approximate index found fewer.

        Returns
        -------
        distances : ndarray of float32 of shape (n_queries,)
            ``-inf`` for a query with no neighbour found.
        """
        return np.where(self.present, self.distances, -np.inf).max(axis=1)

    def label_values(self) -> np.ndarray:
        """The neighbours' labels as class values (not codes): ``(n_queries, k)``,
        or ``(n_queries, k, n_levels)`` for multi-output labels.

        Returns
        -------
        values : ndarray
            Values of ``classes`` (of each level's classes for multi-output
            labels); empty slots hold the value of code 0 (mask them with
            :attr:`present`).
        """
        if self.taxonomy is not None:
            return self.taxonomy.rows(self.labels)
        return self.classes[self.labels]

    def level(self, level: int) -> Neighbors:
        """The record at one level of multi-output labels: the neighbours' label
        paths replaced by their labels at ``level`` (FORMULAS.md 7), as if the
        memory held that one column. Voting it votes that level.

        Parameters
        ----------
        level : int
            Index of the level (column of the labels); negative counts from the
            last.

        Returns
        -------
        neighbors : Neighbors
            With one label column: ``labels`` and ``query_labels`` are codes of
            ``classes``, the level's classes, and ``taxonomy`` is None.
        """
        if self.taxonomy is None:
            raise ValueError("This record holds one label column; it has no levels.")
        tax = self.taxonomy
        if not -tax.n_levels <= level < tax.n_levels:
            raise IndexError(f"level {level} out of range for {tax.n_levels} levels")
        codes = tax.paths[:, level]
        query_labels = None if self.query_labels is None else codes[self.query_labels]
        return replace(
            self,
            labels=codes[self.labels],
            classes=tax.classes[level],
            query_labels=query_labels,
            taxonomy=None,
        )

    def first(self, k: int) -> Neighbors:
        """The ``k`` nearest of each query's neighbours (records are sorted).

        Parameters
        ----------
        k : int
            Neighbours kept per query (all of them if ``k`` is at least the
            record's ``k``).

        Returns
        -------
        neighbors : Neighbors
            Every ``(n_queries, k)`` field cut to its first ``k`` columns.
        """
        out = {f: getattr(self, f)[:, :k] for f in _GRID_FIELDS}
        return replace(self, **out)

    def take(self, queries: np.ndarray) -> Neighbors:
        """The records of some queries, in the order given.

        Parameters
        ----------
        queries : array-like of int
            Query positions (rows of every ``(n_queries, k)`` field).

        Returns
        -------
        neighbors : Neighbors
            The same record restricted to (and ordered as) ``queries``.
        """
        queries = np.asarray(queries)
        out = {f: getattr(self, f)[queries] for f in _GRID_FIELDS}
        for f in _QUERY_FIELDS:
            value = getattr(self, f)
            out[f] = None if value is None else value[queries]
        return replace(self, **out)

    @classmethod
    def concatenate(cls, parts: list[Neighbors]) -> Neighbors:
        """Stack the records of consecutive query blocks (same ``k``).

        Parameters
        ----------
        parts : list of Neighbors
            Records of consecutive query blocks, in order; ``classes`` and
            ``taxonomy`` are taken from the last.

        Returns
        -------
        neighbors : Neighbors
            One record of every part's queries, in order.
        """
        if len(parts) == 1:
            return parts[0]
        out = {f: np.concatenate([getattr(p, f) for p in parts]) for f in _GRID_FIELDS}
        for f in _QUERY_FIELDS:
            values = [getattr(p, f) for p in parts]
            out[f] = None if values[0] is None else np.concatenate(values)
        last = parts[-1]
        return cls(classes=last.classes, taxonomy=last.taxonomy, **out)

    @classmethod
    def empty(cls, k: int, classes: np.ndarray, taxonomy=None) -> Neighbors:
        shape = (0, k)
        return cls(
            distances=np.empty(shape, np.float32),
            ids=np.empty(shape, np.int64),
            labels=np.empty(shape, np.int64),
            reliability=np.empty(shape, np.float32),
            excluded=np.empty(shape, bool),
            classes=classes,
            taxonomy=taxonomy,
        )


_GRID_FIELDS = ("distances", "ids", "labels", "reliability", "excluded")
_QUERY_FIELDS = ("query_ids", "query_labels", "directionless")
