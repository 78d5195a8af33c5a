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


def has_one_dtype(values) -> bool:
    """Whether ``values`` carry a numpy/pandas dtype other than object: one kind
    of label, with no need to look at each value."""
    dtype = getattr(values, "dtype", None)
    return dtype is not None and dtype != np.dtype(object)


def mixed_pair(values) -> tuple | None:
    """A string and a number found among raw label ``values``, or None.

    Looks at the values as the user gave them: ``np.asarray(["a", 1])`` would
    already have turned ``1`` into ``"1"``, hiding the mix. None (a missing
    label) is left to the check that names it.
    """
    if has_one_dtype(values):
        return None
    text = number = None
    for value in np.asarray(values, dtype=object).ravel().tolist():
        if value is None:
            continue
        if isinstance(value, str):
            text = value if text is None else text
        elif number is None:
            number = value
        if text is not None and number is not None:
            return text, number
    return None


def mixed_message(owner: str, what: str, pair: tuple) -> str:
    """sklearn's words for labels mixing strings and numbers, and the way out."""
    text, number = pair
    hint = "Give every label one type: all strings or all numbers."
    if isinstance(number, float) and number != number:  # pandas' missing value
        hint = "A NaN among string labels is usually a missing label. " + hint
    return (
        f"The {what} given to {owner} mix strings and numbers (e.g. {text!r} and "
        f"{number!r}): Mix of label input types (string and number). {hint}"
    )


def refuse_mixed(values, owner: str, what: str = "labels y") -> None:
    """TypeError if the raw label ``values`` mix strings and numbers."""
    pair = mixed_pair(values)
    if pair is not None:
        raise TypeError(mixed_message(owner, what, pair))


def check_label_kind(
    y: np.ndarray,
    classes: np.ndarray | None,
    owner: str,
    what: str = "labels",
    reference: str = "its classes",
) -> None:
    """Refuse labels that mix strings and numbers, within ``y`` or across calls.

    ``classes`` are the labels ``y`` must match in kind (the fitted classes, or
    ``y`` itself for the ``classes=`` of a first call), named by ``reference``.
    """
    new = _kind(y)
    if new == "mixed":
        pair = mixed_pair(y)
        if pair is not None:
            raise TypeError(mixed_message(owner, what, pair))
        types = sorted({type(v).__name__ for v in y.ravel().tolist()})
        raise TypeError(
            f"The {what} given to {owner} mix types ({', '.join(types)}). Labels "
            "must have one type: all strings or all numbers."
        )
    if classes is not None and len(classes) and len(y):
        old = _kind(classes)
        if old != new:
            raise TypeError(
                f"{owner} got {what} of type {new!r} (e.g. "
                f"{np.unique(y)[:3].tolist()}) but {reference} are of type "
                f"{old!r} (e.g. {np.unique(classes)[:3].tolist()}): Mix of label "
                "input types (string and number). Labels must keep one type "
                "across fit and partial_fit calls (classes= included); convert "
                "them (e.g. with astype(str)) or fit anew."
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
    if _is_range(classes) and y.dtype.kind in "iu":
        return y.astype(np.int64)  # labels 0 .. C - 1 are their own codes
    return np.searchsorted(classes, y).astype(np.int64)


def _is_range(classes: np.ndarray) -> bool:
    """Sorted unique ints that are exactly ``0 .. len - 1``."""
    return (
        classes.dtype.kind in "iu"
        and classes.size > 0
        and classes[0] == 0
        and classes[-1] == classes.size - 1
    )


def grown_classes(known, labels: np.ndarray, classes, owner: str):
    """``merge_classes`` of the known classes with ``labels`` and the extra
    ``classes`` to know before their samples arrive, each checked for its type."""
    check_label_kind(labels, known, owner)
    y_all = labels
    if classes is not None:
        # The store's name means little to whoever passed classes=: name the call.
        refuse_mixed(classes, "partial_fit", "classes")  # before "1" hides 1
        classes = np.asarray(classes)
        if known is not None and len(known):
            memory = "the memory's classes"
            check_label_kind(classes, known, "partial_fit", "classes", memory)
        else:  # classes=["z"] with y=[0, 1] would turn every label into a string
            check_label_kind(classes, labels, "partial_fit", "classes", "the labels y")
        if classes.size:
            y_all = np.concatenate([np.unique(classes), labels])
    return merge_classes(known, y_all)
