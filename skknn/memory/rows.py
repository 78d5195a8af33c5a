"""Row buffers edited in place: amortised growth, order-keeping compaction and
its exact undo, and a Ctrl-C guard for edits that must not stop half-way.

The store's arrays are the one copy of the memory; these helpers move their rows
without a second full-size array (a fresh 1.5 GB array costs more in page faults
than the copy itself).
"""

from __future__ import annotations

import mmap
import signal
import threading
from contextlib import contextmanager

import numpy as np

# Rows per step when moving rows in place: bounds NumPy's overlap buffer (~6 MB).
_MOVE_CHUNK = 4096


def kept_runs(removed_rows: np.ndarray, n: int) -> list[tuple[int, int]]:
    """Maximal ``[start, stop)`` row ranges that survive a removal."""
    starts = np.concatenate([[0], removed_rows + 1])
    stops = np.concatenate([removed_rows, [n]])
    return [(int(a), int(b)) for a, b in zip(starts, stops) if b > a]


def compact_inplace(a: np.ndarray, runs: list[tuple[int, int]]) -> np.ndarray:
    """Move the kept runs down to the front of ``a``, in order, in place.

    Copies go front to back in bounded chunks, so an overlapping move never makes
    NumPy buffer more than one chunk.
    """
    pos = 0
    for s, b in runs:
        if s != pos:
            for c in range(s, b, _MOVE_CHUNK):
                e = min(c + _MOVE_CHUNK, b)
                a[pos + c - s : pos + e - s] = a[c:e]
        pos += b - s
    return a


def expand_inplace(a: np.ndarray, runs: list[tuple[int, int]]) -> np.ndarray:
    """Undo :func:`compact_inplace`: move each run back up, last run first and
    back to front, so no move overwrites rows still to be moved."""
    dests = np.cumsum([0] + [b - s for s, b in runs[:-1]])
    for (s, b), pos in zip(reversed(runs), reversed(dests.tolist())):
        if s != pos:
            for e in range(b, s, -_MOVE_CHUNK):
                c = max(e - _MOVE_CHUNK, s)
                a[c:e] = a[pos + c - s : pos + e - s]
    return a


@contextmanager
def uninterrupted():
    """Hold Ctrl-C back until the block ends, so an edit of the memory is never
    left half-done by a KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *sig: received.append(sig))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(*received[0])
            elif previous != signal.SIG_IGN:
                # The default action, or a handler installed outside Python
                # (getsignal gives None): Python's own answer to Ctrl-C is
                # KeyboardInterrupt, so the held interrupt is not lost.
                raise KeyboardInterrupt


def grow(buf: np.ndarray, n: int, cap: int, filled: int | None = None) -> np.ndarray:
    """``buf``'s first ``n`` rows in a zero array of ``cap`` rows; rows
    ``[0, filled)`` (default all) are about to be written (:func:`zeroed`)."""
    new = zeroed((cap, *buf.shape[1:]), buf.dtype, cap if filled is None else filled)
    new[:n] = buf[:n]
    return new


# From this size on an array gets a mapping of its own, its written rows
# faulted in at once; below it calloc's lazily zeroed pages cost less.
POPULATE_BYTES = 1 << 26
# Linux >= 5.14 (value 23); not every Python's mmap module names it.
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def zeroed(shape: tuple, dtype, filled: int) -> np.ndarray:
    """A zero array whose first ``filled`` rows are about to be written.

    A large one is a private anonymous mapping of small (4 KiB) pages whose
    written rows are faulted in by one ``madvise(MADV_POPULATE_WRITE)`` rather
    than page by page as the write reaches them. Small pages, because on a
    virtual machine the first touch of a huge page costs what the host charges
    to back 2 MiB, which swings with what ran before: writing a 100,000 x 384
    memory after a FAISS search took 0.013-1.6 s in huge pages (NumPy's own
    heap arrays too), 0.06-0.07 s in small pages populated at once, and FAISS's
    own ``add`` 0.09-0.10 s (``benchmarks/bench_fresh_memory.py``). The rows past
    ``filled`` stay unfaulted, so headroom costs no RAM until used; where
    ``madvise`` is missing or refused, pages fault in on first write.
    """
    dtype = np.dtype(dtype)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    nbytes = int(shape[0]) * row_bytes
    if nbytes < POPULATE_BYTES or not hasattr(mmap, "MADV_NOHUGEPAGE"):  # not Linux
        return np.zeros(shape, dtype=dtype)
    # Private: a forked child that edits its copy of a memory must not edit ours.
    try:
        region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError as error:  # out of address space: what np.zeros would raise
        raise MemoryError(
            f"Unable to allocate {nbytes:,} bytes for rows of shape {shape}."
        ) from error
    try:
        region.madvise(mmap.MADV_NOHUGEPAGE)
        if filled > 0:
            region.madvise(_MADV_POPULATE_WRITE, 0, min(nbytes, filled * row_bytes))
    except OSError:
        pass
    return np.frombuffer(region, dtype=dtype).reshape(shape)


class RowBuffer:
    """Rows kept exactly as given, in order, with amortised appends.

    An estimator that must retrain on what it was given (not on the memory's
    pre-processed copy) keeps its rows here. Removal compacts in place and zeroes
    the freed tail, so a removed row's bytes stay in no spare capacity; pickling
    keeps only the live rows.
    """

    def __init__(self, X: np.ndarray):
        self._buf = np.array(X, dtype=np.float32, order="C", copy=True)
        self._n = self._buf.shape[0]

    def __len__(self) -> int:
        return self._n

    @property
    def rows(self) -> np.ndarray:
        """The live rows (a view: read only by convention)."""
        return self._buf[: self._n]

    def append(self, X: np.ndarray) -> None:
        n, m = self._n, X.shape[0]
        if n + m > self._buf.shape[0]:
            self._buf = grow(self._buf, n, max(n + m, 2 * n), n + m)
        self._buf[n : n + m] = X
        self._n = n + m

    def truncate(self, n: int) -> None:
        """Forget every row from ``n`` on (undoes appends)."""
        self._buf[n : self._n] = 0
        self._n = min(self._n, n)

    def keep(self, mask: np.ndarray) -> None:
        """Keep the rows where ``mask`` is true, in order; the rest are zeroed."""
        old = self._n
        compact_inplace(self._buf, kept_runs(np.flatnonzero(~mask), old))
        self._n = int(np.count_nonzero(mask))
        self._buf[self._n : old] = 0

    def __getstate__(self):
        return {"rows": self.rows.copy()}

    def __setstate__(self, state):
        self._buf = np.ascontiguousarray(state["rows"], dtype=np.float32)
        self._n = self._buf.shape[0]
