"""Class labels that can grow: merging new labels into ``classes_`` safely."""

from __future__ import annotations

import numpy as np


def _kind(values: np.ndarray) -> str:
    if values.dtype.kind in "OUS":
        kinds = {type(v) for v in values.ravel().tolist()}
        if all(issubclass(t, str) for t in kinds):
            return "str"
        if all(issubclass(t, (int, float, np.integer, np.floating)) for t in kinds):
            return "number"
        return "mixed"
    if values.dtype.kind in "biuf":
        return "number"
    return values.dtype.kind


def check_label_kind(y: np.ndarray, classes: np.ndarray | None, owner: str) -> None:
    """Refuse labels that mix strings and numbers, within ``y`` or across calls."""
    new = _kind(y)
    if new == "mixed":
        raise TypeError(
            f"{owner} got labels that mix types (e.g. str and int); use one type."
        )
    if classes is not None and len(classes) and len(y):
        old = _kind(classes)
        if old != new:
            raise TypeError(
                f"{owner} was fitted with labels of type {old!r} "
                f"({classes[:3].tolist()}...) but got labels of type {new!r} "
                f"({np.unique(y)[:3].tolist()}...). Labels must keep one type across "
                "partial_fit calls."
            )


def merge_classes(
    classes: np.ndarray | None, new_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Sorted union of known and new labels, and where each old class moved.

    Returns ``(classes, old_to_new)``; ``old_to_new`` is None when nothing moved.
    """
    if classes is None or len(classes) == 0:
        return np.unique(new_labels), None
    merged = np.unique(np.concatenate([classes, new_labels]))
    if merged.shape == classes.shape and np.array_equal(merged, classes):
        return classes, None
    return merged, np.searchsorted(merged, classes).astype(np.int64)


def encode(classes: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Class indices of labels known to be in ``classes``."""
    return np.searchsorted(classes, y).astype(np.int64)


def grown_classes(known, labels: np.ndarray, classes, owner: str):
    """``merge_classes`` of the known classes with ``labels`` and the extra
    ``classes`` to know before their samples arrive, each checked for its type."""
    check_label_kind(labels, known, owner)
    y_all = labels
    if classes is not None:
        classes = np.asarray(classes)
        check_label_kind(classes, known, owner)
        if classes.size:
            y_all = np.concatenate([np.unique(classes), labels])
    return merge_classes(known, y_all)
