"""Input checks with scikit-learn's wording, shared by every estimator.

Estimator parameters are checked against each estimator's table
(``_parameter_constraints``, see :mod:`skknn._param_validation`);
:func:`check_int`, :func:`check_float` and :func:`check_option` remain for
method arguments (``kneighbors(n_neighbors=...)``, ``block_size``) in the
same words.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import scipy.sparse as sp
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d, validate_data

from skknn._labels import check_label_kind, has_one_dtype, refuse_mixed
from skknn._param_validation import InvalidParameterError


def _owner(est) -> str:
    return type(est).__name__


def check_int(est, name: str, value, *, low: int | None = None, allow_none=False):
    """An integer parameter ``>= low`` (``None`` allowed when ``allow_none``)."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or (low is not None and value < low):
        rng = f" in the range [{low}, inf)" if low is not None else ""
        none = " or None" if allow_none else ""
        # sklearn's error (a ValueError and a TypeError), as the fit-time table
        # raises: a value loaded from a file is refused the same way.
        raise InvalidParameterError(
            f"The '{name}' parameter of {_owner(est)} must be an int{rng}{none}. "
            f"Got {value!r} instead."
        )
    return int(value)


def check_float(
    est,
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
):
    """A real parameter within ``[low, high]`` (open ends as requested)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    in_range = ok and np.isfinite(value)
    if in_range and low is not None:
        in_range = value >= low if low_inclusive else value > low
    if in_range and high is not None:
        in_range = value <= high if high_inclusive else value < high
    if not in_range:
        parts = []
        if low is not None:
            parts.append(f"{'>=' if low_inclusive else '>'} {low}")
        if high is not None:
            parts.append(f"{'<=' if high_inclusive else '<'} {high}")
        cond = (" " + " and ".join(parts)) if parts else ""
        raise InvalidParameterError(
            f"The '{name}' parameter of {_owner(est)} must be a float{cond}. "
            f"Got {value!r} instead."
        )
    return float(value)


def check_option(est, name: str, value, options: Iterable):
    """One of a fixed set of string options."""
    options = list(options)
    if not isinstance(value, str) or value not in options:
        raise ValueError(
            f"The '{name}' parameter of {_owner(est)} must be a str among "
            f"{options}. Got {value!r} instead."
        )
    return value


_ABSENT = object()


@contextmanager
def restore_attributes_on_error(est, names: Iterable[str]) -> Iterator[None]:
    """Put these attributes back as they were (or absent) if the block raises.

    ``validate_data(reset=True)`` sets ``n_features_in_`` before later checks
    (ids, labels) can fail; a failed ``fit`` must leave the estimator unchanged.
    """
    saved = {name: est.__dict__.get(name, _ABSENT) for name in names}
    try:
        yield
    except BaseException:
        for name, value in saved.items():
            if value is _ABSENT:
                est.__dict__.pop(name, None)
            else:
                est.__dict__[name] = value
        raise


class DefaultNestedMixin:
    """``set_params`` for an estimator whose nested estimator parameter defaults
    to None: ``_default_nested = (name, factory)`` names it and builds its
    default. ``<name>__<param>`` needs ``name`` to hold an estimator, so the
    default is made explicit first (grid searches over ``knn__n_neighbors`` then
    work without spelling the default out)."""

    _default_nested: tuple[str, Callable[[], object]]

    def set_params(self, **params):
        """Set parameters; ``<name>__<param>`` works with a nested estimator left
        at its default None too (the default is then made explicit first).

        Parameters
        ----------
        **params : dict
            Estimator parameters, nested ones as ``knn__n_neighbors``.

        Returns
        -------
        self : estimator
            The estimator.
        """
        name, default = self._default_nested
        nested = any(key.startswith(name + "__") for key in params)
        if nested and name not in params and getattr(self, name) is None:
            setattr(self, name, default())
        return super().set_params(**params)


def validate_xy(est, X, y, *, reset: bool, levels: bool = False, accept_sparse=False):
    """``(X, y)`` validated as scikit-learn does, embeddings as float32.

    ``y`` is one label column or, where ``levels`` (KNNVoter), one column per
    level of hierarchical labels. A column vector counts as one column, with
    scikit-learn's DataConversionWarning; an estimator without levels refuses
    several columns with a message that names the way out. ``accept_sparse``
    as for ``validate_data`` (a sparse ``X`` is then returned sparse).
    """
    _refuse_ragged(y)
    shape = getattr(y, "shape", None)  # array-likes only: np.ndim would convert
    if shape is not None and len(shape) == 2 and shape[1] == 0:
        raise ValueError("y has no columns; give one label column per level.")
    _refuse_mixed_labels(est, y)
    X, y = validate_data(
        est,
        X,
        y,
        reset=reset,
        dtype=np.float32,
        multi_output=True,
        accept_sparse=accept_sparse,
    )
    if y.dtype == object:
        missing = np.array([v is None for v in y.ravel().tolist()]).reshape(y.shape)
        if missing.any():
            where = np.argwhere(missing)[0]
            at = f" (sample {where[0]}, level {where[1]})" if y.ndim == 2 else ""
            raise ValueError(
                f"y holds {int(missing.sum())} missing labels (None){at}; every "
                "sample needs a label at every level."
            )
    if sp.issparse(y):
        raise TypeError(f"{_owner(est)} takes dense labels y; got a sparse matrix.")
    if y.ndim == 2 and y.shape[1] > 1 and not levels:
        raise ValueError(
            f"{_owner(est)} takes one label column; got y of shape {y.shape}. "
            "Hierarchical (multi-output) labels are voted level by level by "
            "KNNVoter (KNNVoter().fit(X, Y)); fit this estimator on one column."
        )
    if y.ndim == 2 and y.shape[1] == 1:
        y = column_or_1d(y, warn=True)
    if y.ndim == 2:  # level by level: levels may hold different types
        from skknn._hierarchy import natural

        for level in range(y.shape[1]):
            check_classification_targets(natural(y[:, level]))
    else:
        check_classification_targets(y)
    if not reset:
        _check_kind_kept(est, y)
    return X, y


def _refuse_mixed_labels(est, y) -> None:
    """A clear error for labels mixing strings and numbers, on ``y`` as given:
    numpy turns ``["a", 1]`` into ``["a", "1"]`` silently and sorts an object
    array of both with a raw ``'<' not supported`` TypeError."""
    if has_one_dtype(y) or sp.issparse(y):
        return
    columns = np.asarray(y, dtype=object)
    if columns.ndim == 1:
        refuse_mixed(columns, _owner(est))
    elif columns.ndim == 2:  # hierarchical: each level may have its own type
        for level in range(columns.shape[1]):
            refuse_mixed(columns[:, level], _owner(est), f"labels y (level {level})")


def check_first_classes(est, classes, y) -> None:
    """The ``classes=`` of a first ``partial_fit``: one kind of label, the kind
    of ``y`` (validated), before anything sorts or concatenates them."""
    if classes is None:
        return
    where = f"{_owner(est)}.partial_fit"
    refuse_mixed(classes, where, "classes")
    check_label_kind(np.asarray(classes), y, where, "classes", "the labels y")


def _check_kind_kept(est, y) -> None:
    """Labels of a later partial_fit keep the type of the memory's classes,
    checked here so that the message names the estimator, not its memory."""
    try:
        known = est.classes_
    except (AttributeError, ValueError):  # not fitted yet, or no memory
        return
    if y.ndim == 1 and isinstance(known, np.ndarray):
        check_label_kind(y, known, _owner(est))
    elif y.ndim == 2 and isinstance(known, list) and len(known) == y.shape[1]:
        from skknn._hierarchy import natural

        for level, classes in enumerate(known):
            column = natural(y[:, level])
            check_label_kind(column, classes, _owner(est), f"labels (level {level})")


def _refuse_ragged(y) -> None:
    """A clear error for label rows of different lengths (numpy's own speaks of
    an "inhomogeneous shape")."""
    if isinstance(y, np.ndarray) or not isinstance(y, (list, tuple)):
        return
    rows = [r for r in y if isinstance(r, (list, tuple, np.ndarray))]
    if not rows:
        return
    lengths = {len(r) if isinstance(r, (list, tuple, np.ndarray)) else 1 for r in y}
    if len(lengths) > 1:
        raise ValueError(
            f"The rows of y have different lengths ({sorted(lengths)[:5]} labels); "
            "every sample needs a label at every level (one column per level)."
        )


# -- sklearn's input conventions ---------------------------------------------------
# Engines that search every stored row exactly: a sparse X is densified for them,
# a block of rows at a time. "auto" is flat FAISS below a million samples and
# takes densified rows from then on too.
SPARSE_INDEXES = ("auto", "exact", "flat")


def refuse_fitted_neighbors(est, X) -> None:
    """sklearn's neighbours estimators take a fitted ``NearestNeighbors``,
    ``BallTree`` or ``KDTree`` as ``X`` and reuse its private data
    (``_fit_X``); a memory is built from embeddings, so say which to pass
    rather than let numpy fail on ``float(NearestNeighbors())``."""
    from sklearn.neighbors import BallTree, KDTree

    tree = isinstance(X, (BallTree, KDTree))
    if tree or (hasattr(X, "kneighbors") and hasattr(X, "get_params")):
        raise TypeError(
            f"{_owner(est)}.fit takes the embeddings themselves, not a fitted "
            f"{type(X).__name__}: pass the array it was fitted on (X of its fit). "
            "Its private copy (_fit_X) is not read: the memory keeps its own "
            "pre-processed rows, ids and labels."
        )


def check_sparse_engine(est, X, index) -> None:
    """A sparse ``X`` only where the search engine is exact (see
    :data:`SPARSE_INDEXES`); approximate FAISS indexes are trained on and
    search dense float32 vectors, so the caller decides how to make them."""
    if sp.issparse(X) and index not in SPARSE_INDEXES:
        raise TypeError(
            f"{_owner(est)}(index={index!r}) searches an approximate FAISS index "
            "of dense float32 vectors, and a sparse X would be densified whole "
            "to train and fill it. Pass dense rows (X.toarray()), reduce the "
            "sparse features first (e.g. sklearn.decomposition.TruncatedSVD), "
            "or use index='exact' or 'flat', which take sparse X and densify "
            "it a block of rows at a time."
        )


def validate_rows(est, X, *, densify: bool = True):
    """Queries validated as float32 against the fitted width: dense, or CSR
    (left sparse unless ``densify``) after :func:`check_sparse_engine`."""
    X = validate_data(est, X, reset=False, dtype=np.float32, accept_sparse="csr")
    return dense(X) if densify else X


def dense(X) -> np.ndarray:
    """``X`` as a dense C-contiguous float32 array (a no-op on dense input)."""
    if sp.issparse(X):
        return np.ascontiguousarray(X.toarray(), dtype=np.float32)
    return X


def drop_absent_samples(est, X, y, sample_ids, sample_weight, classes, first_call):
    """sklearn's convention: a zero ``sample_weight`` means the sample is absent.

    ``BaggingClassifier`` passes bootstrap counts as weights, 0 for the rows it
    left out; those rows must be nobody's neighbour (a zero-weight neighbour
    would still take a place among the k), so they are dropped before anything
    is stored. Their labels join ``classes`` (sklearn estimators take
    ``classes_`` from the whole ``y``). Returns ``(X, y, sample_ids,
    sample_weight, classes)`` without them; negative or non-finite weights are
    refused.
    """
    if sample_weight is None:
        return X, y, sample_ids, None, classes
    weights = np.asarray(sample_weight, dtype=np.float64)
    if weights.shape != (y.shape[0],):
        raise ValueError(
            f"sample_weight must have shape ({y.shape[0]},), one per sample; got "
            f"{weights.shape}."
        )
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(
            "sample_weight must be finite and >= 0 (0 leaves a sample out)."
        )
    keep = weights > 0
    if keep.all():
        return X, y, sample_ids, weights, classes
    if first_call and not keep.any():
        raise ValueError(
            f"sample_weight is zero for all {y.shape[0]} samples: {_owner(est)} "
            "would have an empty memory. Give some sample a positive weight."
        )
    if sample_ids is not None and np.shape(sample_ids) == keep.shape:
        sample_ids = np.asarray(sample_ids)[keep]
    return X[keep], y[keep], sample_ids, weights[keep], _with_absent(classes, y[~keep])


def _with_absent(classes, absent: np.ndarray):
    """``classes`` (None, or one array-like per level for 2-D labels) grown by
    the labels of absent samples."""
    if absent.ndim == 1:
        return _union(classes, absent)
    levels = [None] * absent.shape[1] if classes is None else list(classes)
    return [_union(c, absent[:, level]) for level, c in enumerate(levels)]


def _union(known, labels: np.ndarray) -> np.ndarray:
    if known is None:
        return np.unique(labels)
    return np.unique(np.concatenate([np.asarray(known).ravel(), labels]))


def check_retrainable(est, kept_ids: np.ndarray, removed: np.ndarray) -> None:
    """Refuse, before anything changes, an ``unlearn(retrain=True)`` that would
    retrain on no samples (a fresh fit on nothing would fail deep inside with an
    obscure message)."""
    if kept_ids.size:
        return
    raise ValueError(
        f"{_owner(est)}.unlearn was given every sample in memory "
        f"({removed.size} ids): nothing would be left to retrain on, and the "
        "memory cannot be emptied with retrain=True. To start over, fit anew "
        "(est.fit(X, y) replaces the memory and the head); to empty only the "
        "memory and keep the head, pass retrain=False."
    )


def check_classes_left(est, labels: np.ndarray) -> None:
    """Refuse an ``unlearn(retrain=True)`` that would retrain on one class,
    with the reason in unlearn's words."""
    left = np.unique(labels)
    if left.size >= 2:
        return
    raise ValueError(
        f"{_owner(est)}.unlearn would leave samples of one class only "
        f"({left.tolist()[0]!r}); retrain=True refits the head, which needs "
        "at least 2 classes. Unlearn fewer samples, pass retrain=False (only "
        "the memory forgets), or fit anew."
    )
