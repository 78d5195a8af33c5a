"""Multi-output labels: one column per level of a taxonomy (FORMULAS.md 7).

The memory keeps one class code per sample. For a multi-output ``y`` that code
is the sample's *path*: the combination of its labels at every level, numbered
in order of first appearance. A :class:`Taxonomy` maps each path to its class at
each level, so one retrieval serves every level: a level votes with the
neighbours' paths replaced by their labels at that level ([VM] 3.6).

Levels need not form a tree (any multi-output ``y`` works, as in sklearn's
``KNeighborsClassifier``); in a tree the path is the finest label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from skknn._labels import check_label_kind, encode, merge_classes


def natural(column: np.ndarray) -> np.ndarray:
    """An object column as the numpy dtype of its values (int, float, str), so
    each level keeps its own type when levels of different types share one
    object array (a pandas DataFrame)."""
    if column.dtype != object:
        return column
    values = np.asarray(column.tolist())
    return values if values.dtype.kind in "biufU" else column


def stack_levels(columns: list[np.ndarray]) -> np.ndarray:
    """Per-level label arrays stacked on a last axis: their common dtype when
    they share a kind (all numbers, all strings), else object."""
    kinds = {c.dtype.kind for c in columns}
    if kinds <= set("biuf") or kinds == {"U"}:
        dtype = np.result_type(*columns)
    else:
        dtype = object
    return np.stack([c.astype(dtype, copy=False) for c in columns], axis=-1)


@dataclass(frozen=True)
class Taxonomy:
    """The label paths of a multi-output memory.

    Attributes
    ----------
    classes : tuple of ndarray
        Sorted labels of each level, coarse to fine as the user ordered them.
    paths : ndarray of int64, shape (n_paths, n_levels)
        ``paths[p, l]`` is path ``p``'s class code at level ``l`` (an index into
        ``classes[l]``). Paths are never forgotten (as classes are not).
    """

    classes: tuple
    paths: np.ndarray

    @property
    def n_levels(self) -> int:
        return len(self.classes)

    @property
    def n_paths(self) -> int:
        return self.paths.shape[0]

    @classmethod
    def empty(cls, n_levels: int) -> Taxonomy:
        return cls(
            classes=tuple(np.empty(0) for _ in range(n_levels)),
            paths=np.empty((0, n_levels), np.int64),
        )

    def values(self, path_codes: np.ndarray) -> list[np.ndarray]:
        """The labels at each level of the paths ``path_codes`` (any shape)."""
        return [c[self.paths[path_codes, i]] for i, c in enumerate(self.classes)]

    def rows(self, path_codes: np.ndarray) -> np.ndarray:
        """Labels of the paths ``path_codes`` with the levels as a last axis."""
        return stack_levels(self.values(path_codes))

    def grown(self, Y: np.ndarray, classes, owner: str) -> tuple[Taxonomy, np.ndarray]:
        """The taxonomy that also holds the rows of ``Y``, and their path codes.

        ``classes`` (one array-like per level, or None) are labels to know before
        their samples arrive. Nothing is modified: the caller commits the result.
        """
        L = self.n_levels
        if Y.ndim != 2 or Y.shape[1] != L:
            got = "1-D y" if Y.ndim == 1 else f"y with {Y.shape[1]} columns"
            raise ValueError(
                f"This memory holds {L} label levels (columns of y); got {got}."
            )
        if classes is not None and len(classes) != L:
            raise ValueError(
                f"classes must hold one array of labels per level ({L}); "
                f"got {len(classes)}."
            )
        level_classes, codes, paths = [], np.empty(Y.shape, np.int64), self.paths.copy()
        for level in range(L):
            column = natural(Y[:, level])
            known = self.classes[level]
            where = f"{owner} (level {level})"
            check_label_kind(column, known, where)
            extra = column
            if classes is not None and classes[level] is not None:
                wanted = natural(np.asarray(classes[level]))
                check_label_kind(wanted, known, where)
                if wanted.size:
                    extra = np.concatenate([np.unique(wanted), column])
            merged, old_to_new = merge_classes(known, extra)
            if old_to_new is not None:
                paths[:, level] = old_to_new[paths[:, level]]
            level_classes.append(merged)
            codes[:, level] = encode(merged, column)
        rows, inverse = np.unique(codes, axis=0, return_inverse=True)
        index = {tuple(p): i for i, p in enumerate(paths.tolist())}
        new = [r for r in map(tuple, rows.tolist()) if r not in index]
        for r in new:
            index[r] = len(index)
        if new:
            paths = np.concatenate([paths, np.asarray(new, np.int64).reshape(-1, L)])
        row_paths = np.fromiter((index[tuple(r)] for r in rows.tolist()), np.int64)
        return Taxonomy(tuple(level_classes), paths), row_paths[inverse.reshape(-1)]
