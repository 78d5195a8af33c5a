"""What a store takes from outside, checked before anything changes: sample
ids, sample weights, and a saved state field by field.

A model file is data from outside: a hand-edited or damaged one must be refused
with one clear message, never turned into a memory whose ids collide, whose
labels point past its classes, or whose arrays disagree in length.
"""

from __future__ import annotations

import numpy as np

from skknn._hierarchy import Taxonomy
from skknn.memory.metric import METRICS
from skknn.memory.preprocessing import PREPROCESSING

# Sample ids are 0 <= id <= MAX_ID (int64): -1 marks an empty neighbour slot, and
# no value a user can give may collide with it.
MAX_ID = np.iinfo(np.int64).max

# How a store may keep its pre-processed vectors.
STORAGE_DTYPES = {"float32": np.float32, "float16": np.float16}


class InvalidState(ValueError):
    """A saved state that cannot describe a memory."""


def _need(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidState(message)


def _array(arrays: dict, name: str, dtype, shape: tuple) -> np.ndarray:
    _need(name in arrays, f"array {name!r} is missing")
    value = arrays[name]
    _need(
        isinstance(value, np.ndarray) and value.dtype == dtype,
        f"array {name!r} must be {np.dtype(dtype)}; got "
        f"{getattr(value, 'dtype', type(value).__name__)}",
    )
    _need(
        value.shape == shape,
        f"array {name!r} must have shape {shape}; got {value.shape}",
    )
    return value


def check_state(meta: dict, arrays: dict) -> None:
    """Raise :class:`InvalidState` unless ``(meta, arrays)`` is a consistent store."""
    _need(isinstance(meta, dict), "the memory's description is not a JSON object")
    d = meta.get("n_features")
    _need(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1,
        f"n_features must be a positive int; got {d!r}",
    )
    _need(meta.get("metric") in METRICS, f"unknown metric {meta.get('metric')!r}")
    pre = meta.get("preprocessing")
    _need(pre is None or pre in PREPROCESSING, f"unknown preprocessing {pre!r}")
    engine = meta.get("engine")
    _need(isinstance(engine, str) and engine, f"engine must be a str; got {engine!r}")
    _need(isinstance(meta.get("index_params", {}), dict), "index_params must be a dict")
    _need(isinstance(meta.get("uid"), str), "uid must be a str")
    version = meta.get("version")
    _need(
        isinstance(version, int) and not isinstance(version, bool) and version >= 0,
        f"version must be an int >= 0; got {version!r}",
    )
    X = arrays.get("embeddings")
    _need(isinstance(X, np.ndarray) and X.ndim == 2, "embeddings must be a 2-d array")
    n = X.shape[0]
    storage = meta.get("storage_dtype", "float32")
    _need(storage in STORAGE_DTYPES, f"unknown storage_dtype {storage!r}")
    _array(arrays, "embeddings", STORAGE_DTYPES[storage], (n, d))
    _need(_all_finite(X), "embeddings hold NaN or infinite values")
    ids = _array(arrays, "sample_ids", np.int64, (n,))
    _need(n == 0 or bool(ids.min() >= 0), "sample ids must be >= 0")
    _need(np.unique(ids).size == n, "sample ids are not unique")
    next_id = meta.get("next_id")
    _need(
        isinstance(next_id, int) and not isinstance(next_id, bool),
        f"next_id must be an int; got {next_id!r}",
    )
    largest = int(ids.max()) if n else -1
    _need(
        next_id > largest,
        f"next_id {next_id} is not above every stored id (largest {largest}): "
        "fresh ids would collide",
    )
    _need(next_id <= MAX_ID + 1, "next_id is beyond the id range")
    codes = _array(arrays, "labels", np.int64, (n,))
    classes = meta.get("classes")
    n_classes = 0
    if classes is not None:
        _need(
            isinstance(classes, dict) and isinstance(classes.get("values"), list),
            "classes must be a JSON object with a list of values",
        )
        values = np.asarray(classes["values"])
        _need(values.ndim == 1, "classes must be a flat list")
        _need(
            values.size == np.unique(values).size
            and bool(np.all(np.unique(values) == values)),
            "classes must be sorted and unique",
        )
        n_classes = values.size
    _need(
        n == 0 or (bool(codes.min() >= 0) and int(codes.max()) < n_classes),
        f"label codes must index the {n_classes} classes",
    )
    if meta.get("taxonomy") is not None:
        _need(
            classes is not None and classes["values"] == list(range(n_classes)),
            "with a taxonomy the classes must be the path codes 0 .. n - 1",
        )
        _check_taxonomy(meta["taxonomy"], arrays, n_classes)
    rel = _array(arrays, "reliability", np.float32, (n,))
    _need(bool(np.isfinite(rel).all() and (rel > 0).all()), "reliability must be > 0")
    _array(arrays, "excluded", np.bool_, (n,))
    if "sample_weight" in arrays:
        w = _array(arrays, "sample_weight", np.float32, (n,))
        _need(bool(np.isfinite(w).all() and (w > 0).all()), "sample_weight must be > 0")
    if "norms" in arrays:
        norms = _array(arrays, "norms", np.float32, (n,))
        _need(not bool((norms < 0).any()), "vector lengths must be >= 0")
    if "mean" in arrays:
        mean = _array(arrays, "mean", np.float32, (d,))
        _need(bool(np.isfinite(mean).all()), "the centre holds NaN or infinite values")
    _need(
        pre != "center_l2" or n == 0 or "mean" in arrays,
        "center_l2 memory without its centre",
    )


def _all_finite(X: np.ndarray, rows: int = 65536) -> bool:
    """``np.isfinite(X).all()`` a block of rows at a time: a memory-mapped
    memory is checked without a mask of its size."""
    return all(
        bool(np.isfinite(X[s : s + rows]).all()) for s in range(0, X.shape[0], rows)
    )


def _check_taxonomy(levels, arrays: dict, n_classes: int) -> None:
    """Multi-output labels: classes are path codes 0 .. P-1, each path a row of
    level codes that index sorted level classes."""
    _need(
        isinstance(levels, list) and levels,
        "taxonomy must be a non-empty list of levels",
    )
    paths = _array(arrays, "taxonomy_paths", np.int64, (n_classes, len(levels)))
    for level, classes in enumerate(levels):
        _need(
            isinstance(classes, dict) and isinstance(classes.get("values"), list),
            f"the classes of level {level} must be a JSON object with a list",
        )
        values = np.asarray(classes["values"])
        _need(values.ndim == 1, f"the classes of level {level} must be a flat list")
        _need(
            values.size == np.unique(values).size
            and bool(np.all(np.unique(values) == values)),
            f"the classes of level {level} must be sorted and unique",
        )
        col = paths[:, level]
        _need(
            col.size == 0 or (bool(col.min() >= 0) and int(col.max()) < values.size),
            f"the label paths must index the {values.size} classes of level {level}",
        )


def checked_weights(sample_weight, n: int) -> np.ndarray:
    if sample_weight is None:
        return np.ones(n, dtype=np.float32)
    weights = np.asarray(sample_weight, dtype=np.float64)
    if weights.shape != (n,):
        raise ValueError(
            f"sample_weight must have shape ({n},), one per sample; got "
            f"{weights.shape}."
        )
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError("sample_weight must be finite and >= 0.")
    if np.any(weights == 0):
        raise ValueError(
            f"sample_weight is zero for {int(np.sum(weights == 0))} samples: a "
            "zero weight would keep a sample in every neighbour list with no vote, "
            "and can leave a class without any. Leave those samples out of fit, "
            "or unlearn them."
        )
    return weights.astype(np.float32)


def checked_ids(ids: np.ndarray) -> np.ndarray:
    """Ids as int64, all in ``[0, 2**63 - 1]``; clear errors otherwise (uint64
    above 2**63 would wrap to negatives, Python ints beyond int64 overflow)."""
    if ids.size and ids.dtype == object:
        values = ids.tolist()
        if not all(isinstance(v, (int, np.integer)) for v in values):
            raise TypeError("sample_ids must be integers; got non-integer values.")
        bad = [v for v in values if not 0 <= v <= MAX_ID]
    elif ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"sample_ids must be integers; got dtype {ids.dtype}.")
    elif ids.size and ids.dtype.kind == "u":
        bad = ids[ids > MAX_ID].tolist()
    else:
        bad = ids[ids < 0].tolist() if ids.size else []
    if bad:
        raise ValueError(
            f"sample_ids must be in [0, 2**63 - 1]; got {sorted(bad)[:10]}."
        )
    return ids.astype(np.int64)


def checked_rows(X, labels, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Vectors (float32) and labels to add: shapes that agree, finite values."""
    X = np.asarray(X, dtype=np.float32)
    labels = np.asarray(labels)
    m = X.shape[0]
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ValueError(f"X must have shape (n_samples, {n_features}); got {X.shape}.")
    if not all_finite(X):
        raise ValueError("X holds NaN or infinite values; the memory takes none.")
    if labels.ndim not in (1, 2) or labels.shape[0] != m:
        raise ValueError(
            f"labels must have shape ({m},) or ({m}, n_levels), one row per row "
            f"of X; got {labels.shape}."
        )
    return X, labels


def all_finite(X: np.ndarray) -> bool:
    """Whether every value of a float array is finite. NaN and infinities carry
    into a sum, so a finite sum settles it in one pass without a temporary
    (scikit-learn's test too); a sum that overflowed on large finite values
    is checked value by value."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(X.sum()):
            return True
    return bool(np.isfinite(X).all())


def checked_reliability(reliability, shape: tuple) -> np.ndarray:
    """Voting weights for stored samples: one per id, finite, > 0."""
    values = np.asarray(reliability, dtype=np.float32)
    if values.shape != shape:
        raise ValueError(
            f"reliability must have shape {shape}, one per id; got {values.shape}."
        )
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError("reliability weights must be finite and > 0.")
    return values


def checked_excluded(excluded, shape: tuple) -> np.ndarray:
    """Hard-pruning flags for stored samples: one bool per id."""
    values = np.asarray(excluded)
    if values.shape != shape or values.dtype != bool:
        raise ValueError(
            f"excluded must be a bool array of shape {shape}, one per id; got "
            f"{values.dtype} {values.shape}."
        )
    return values


def checked_new_ids(ids, n: int, stored) -> np.ndarray:
    """Ids for ``n`` new samples: 1-d, in range, unique, none of them stored
    (``stored(ids)`` says which are)."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.shape[0] != n:
        raise ValueError(
            f"sample_ids must be a 1-d array of {n} ids (one per sample); got "
            f"shape {ids.shape}."
        )
    ids = checked_ids(ids)
    refuse_duplicates(ids, "sample_ids")
    clash = ids[stored(ids)]
    if clash.size:
        raise ValueError(
            f"sample_ids already in memory: {np.sort(clash)[:10].tolist()}."
        )
    return ids


def refuse_duplicates(ids: np.ndarray, what: str) -> np.ndarray:
    """The sorted unique ids; ValueError naming any given twice."""
    uniq, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(
            f"{what} must be unique; duplicated: {uniq[counts > 1][:10].tolist()}."
        )
    return uniq


def label_paths(taxonomy, known: bool, labels: np.ndarray, classes, owner: str):
    """``(taxonomy, labels)``: for multi-output labels, the grown taxonomy and
    each row's path code; otherwise ``(None, labels)``. ``taxonomy`` is the
    memory's (None for one label column); ``known``, whether it holds classes."""
    multi = labels.ndim == 2
    if known and multi != (taxonomy is not None):
        had = (
            "one label column"
            if taxonomy is None
            else f"{taxonomy.n_levels} label levels"
        )
        got = f"labels of shape {labels.shape}"
        raise ValueError(
            f"This memory holds {had}; got {got}. Every add must give labels "
            "of the shape the first one had."
        )
    if not multi:
        return None, labels
    if labels.shape[1] < 1:
        raise ValueError("Multi-output labels need at least one level (column).")
    taxonomy = taxonomy or Taxonomy.empty(labels.shape[1])
    return taxonomy.grown(labels, classes, owner)


def refuse_rescaled(folder, storage_dtype: str, what: str = "This memory's data"):
    """Refuse a scale other than 1 where the vectors are kept in a file
    (``folder`` not None) or as float16: both hold them as pre-processed."""
    if folder is None and storage_dtype == "float32":
        return
    where = "storage_path" if folder is not None else "float16 storage"
    raise ValueError(
        f"{what} is kept rescaled by a power of two (its squares leave "
        f"float32's range), which a memory with {where} does not do. Rescale "
        "the data (e.g. divide it by a power of ten), or keep the memory in "
        "RAM as float32."
    )
