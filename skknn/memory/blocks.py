"""Reading a memory's samples block by block: generators of arrays, or files."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import numpy as np


def iter_blocks(source: Iterable, block_size: int) -> Iterator[tuple]:
    """``(X, y, sample_ids or None)`` for each block of ``source`` (see
    :meth:`skknn.KNNVoter.partial_fit_from`)."""
    if isinstance(source, (str, os.PathLike, np.ndarray)):
        raise TypeError(
            "source must be an iterable of blocks or of files, not one "
            f"{type(source).__name__}: wrap a single file in a list."
        )
    for item in source:
        if isinstance(item, (str, os.PathLike)) or _is_path_pair(item):
            yield from _file_blocks(item, block_size)
        elif isinstance(item, tuple) and len(item) in (2, 3):
            yield item[0], item[1], item[2] if len(item) == 3 else None
        else:
            raise TypeError(
                "Each block must be (X, y), (X, y, sample_ids), a file path or a "
                f"(X.npy, y.npy) pair; got {type(item).__name__}."
            )


def _is_path_pair(item) -> bool:
    return (
        isinstance(item, tuple)
        and len(item) == 2
        and all(isinstance(p, (str, os.PathLike)) for p in item)
    )


def _file_blocks(item, block_size: int):
    if _is_path_pair(item):
        x_path, y_path = item
    elif "," in os.fspath(item):
        x_path, y_path = os.fspath(item).split(",", 1)
    else:
        x_path, y_path = os.fspath(item), None
    if y_path is None:
        if not str(x_path).endswith(".npz"):
            raise ValueError(
                f"{str(x_path)!r}: give .npz files with X and y, or 'X.npy,y.npy' "
                "pairs."
            )
        with np.load(x_path, allow_pickle=False) as data:
            X, y = data["X"], data["y"]
    else:
        X = np.load(x_path, mmap_mode="r", allow_pickle=False)
        y = np.load(y_path, allow_pickle=False)
    if len(X) != len(y):
        raise ValueError(f"{str(x_path)!r}: {len(X)} embeddings but {len(y)} labels.")
    for start in range(0, len(X), block_size):
        yield (
            np.asarray(X[start : start + block_size]),
            y[start : start + block_size],
            None,
        )
