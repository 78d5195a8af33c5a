"""What a memory holds, as one hash, and the hash-chained log of its edits.

The digest (:func:`memory_digest`) is a two-level hash: each sample's leaf
(SHAKE-128 of its id, weight, stored vector bytes, raw vector and label, read as
1,024 uint16 lanes) is summed lane by lane modulo 2**16 over the memory (LtHash16,
a homomorphic multiset hash), and the root is BLAKE2b-256 of a header (the
memory's shape and pre-processing, its centre, its size) and the lanes. The sum
makes it independent of the order rows were added or moved in, and lets an edit
update it in O(rows changed) (:func:`row_lanes`); hashing what the store gives
back through its public ``get`` makes it the same for a memory in RAM, on disk or
in Dask shards. What it covers, and when ``fit(A + B)`` then ``unlearn(B)`` equals
``fit(A)``, is in docs/user_guide/certificates.rst.

The log (:class:`EditLog`) is append-only: every entry names the hash of the
one before it (``prev``), so changing, dropping or reordering an entry breaks
the chain after it (:func:`chain_problems`). It is hashed lazily: an edit that
adds rows is recorded without their leaves, which are hashed when the entries
are next needed, from the rows as they are then (unchanged: whatever removes or
replaces a row hashes it first, :meth:`EditLog.removing`, :func:`rows_change`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime
import hashlib
import json
import os
import stat
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from skknn._docstrings import fill_doc

SCHEME = "skknn-memory-digest/2"
# ``before`` of the edit that built a memory where there was none.
NO_MEMORY = "0" * 64
# ``prev`` of the first entry.
GENESIS = "0" * 64
# Samples read from the store at a time while hashing: bounded RAM (about
# 80 MB of rows and leaves at 384 dimensions).
_BLOCK = 16384
# Threads that hash leaves, and the fewest rows worth a thread of their own.
_WORKERS = min(8, os.cpu_count() or 1)
_MIN_ROWS_PER_THREAD = 2048
# LtHash16: a sample's leaf is 1,024 uint16 lanes; a memory is their sum.
LANES = 1024
_LEAF = b"skknn-leaf/1\0"
ENTRY_KEYS = ("op", "count", "ids_digest", "before", "after", "time", "prev")
_HEX_KEYS = ("ids_digest", "before", "after", "prev")
LOG_FILE = "edit_log.jsonl"
# A log file larger than this is not read (a file is data: checked first).
MAX_LOG_BYTES = 256 << 20


@fill_doc
def ids_digest(ids) -> str:
    """BLAKE2b-256 of a set of sample ids (sorted, unique, int64 little-endian).

    Parameters
    ----------
    ids : array-like of int
        Sample ids; their order and repeats do not matter.

    %(returns_digest)s

    Examples
    --------
    >>> from skknn.memory.digest import ids_digest
    >>> ids_digest([3, 1, 2]) == ids_digest([1, 2, 3, 3])
    True
    """
    return _unique_ids_digest(_sorted_unique(ids))


def _sorted_unique(ids) -> np.ndarray:
    """``np.unique`` of int ids by a sort (NumPy 2's hashing ``unique`` takes
    several times a sort's time, inside every fit)."""
    ids = np.sort(np.asarray(ids, dtype=np.int64).ravel())
    if ids.shape[0] > 1:
        repeat = ids[1:] == ids[:-1]
        if repeat.any():
            ids = ids[np.concatenate(([True], ~repeat))]
    return ids


def _unique_ids_digest(ids: np.ndarray) -> str:
    return hashlib.blake2b(ids.astype("<i8").tobytes(), digest_size=32).hexdigest()


def memory_digest(store) -> str:
    """The content digest of a store (a ``VectorStore`` or a sharded store).

    Parameters
    ----------
    store : Store
        The memory; read in one state (its readers' lock held), in blocks of
        16,384 samples.

    Returns
    -------
    digest : str
        64 hex digits; equal for two memories that hold the same samples (id,
        label, weight, stored vector bytes, raw vector) with the same
        pre-processing, centre and storage dtype, whatever their order or
        backend.

    Examples
    --------
    >>> from skknn import VectorStore
    >>> from skknn.memory.digest import memory_digest
    >>> a = VectorStore(2, engine="exact")
    >>> _ = a.add([[1., 0.], [0., 2.]], ["x", "y"], ids=[0, 1])
    >>> b = VectorStore(2, engine="exact")
    >>> _ = b.add([[0., 2.]], ["y"], ids=[1])
    >>> _ = b.add([[1., 0.]], ["x"], ids=[0])
    >>> memory_digest(a) == memory_digest(b)
    True
    """
    with store.reading():
        return root_digest(store, memory_lanes(store))


def memory_lanes(store) -> np.ndarray:
    """The multiset hash of every sample in ``store`` (:func:`row_lanes` of all)."""
    with store.reading():
        return row_lanes(store, store.ids())


def row_lanes(store, ids) -> np.ndarray:
    """The sum, lane by lane modulo 2**16, of the samples ``ids``' leaf hashes.

    A sample's leaf is SHAKE-128 (2,048 bytes, read as 1,024 little-endian
    uint16 lanes) of its id, weight, stored vector bytes (the storage dtype),
    raw vector (float32) and label (canonical JSON): LtHash16 (Lewi et al.,
    "Securing Update Propagation with Homomorphic Hashing", 2019). Sums
    commute, so the order of samples does not matter, and an edit adds its new
    samples' leaves or subtracts its removed ones'.
    """
    total = np.zeros(LANES, dtype=np.uint16)
    for _, leaves in leaf_blocks(store, ids):
        total += lane_sum(leaves)
    return total


def leaf_blocks(store, ids):
    """``(ids, leaves)`` of ``ids`` in blocks of 16,384 samples: each sample's
    leaf as a row of :data:`LANES` uint16 (bounded RAM)."""
    ids = np.asarray(ids, dtype=np.int64).ravel()
    for s in range(0, ids.shape[0], _BLOCK):
        block = ids[s : s + _BLOCK]
        yield block, _leaves(store, block)


def lane_sum(leaves: np.ndarray) -> np.ndarray:
    """Leaves (rows of uint16 lanes) summed lane by lane modulo 2**16."""
    return (leaves.sum(axis=0, dtype=np.uint64) % (1 << 16)).astype(np.uint16)


def _leaves(store, ids: np.ndarray) -> np.ndarray:
    """The leaves of ``ids`` (at most one block): shape (len(ids), LANES)."""
    m = ids.shape[0]
    if not m:
        return np.zeros((0, LANES), dtype=np.uint16)
    stored = store.get(ids, prepared=True)
    raw = _raw(store, ids)
    dtype = np.dtype(store.storage_dtype).newbyteorder("<")
    columns = [ids.astype("<i8", copy=False), stored.X.astype(dtype, copy=False)]
    if raw is not None:  # files of skknn 0.1 kept no lengths: no raw vectors
        columns.append(np.asarray(raw.sample_weight).astype("<f4", copy=False))
        columns.append(np.asarray(raw.X).astype("<f4", copy=False))
    return _hash_rows(_row_bytes(columns, m), _label_lines(stored.labels))


def _row_bytes(columns, m: int) -> np.ndarray:
    """The columns' bytes side by side, a row per sample: one copy, into one
    buffer (each row is then one input of at least 2 KB to the hash)."""
    views = [np.ascontiguousarray(c).view(np.uint8).reshape(m, -1) for c in columns]
    rows = np.empty((m, sum(v.shape[1] for v in views)), dtype=np.uint8)
    at = 0
    for view in views:
        rows[:, at : at + view.shape[1]] = view
        at += view.shape[1]
    return rows


def _hash_rows(rows: np.ndarray, labels: list[bytes]) -> np.ndarray:
    """SHAKE-128 leaves of ``rows`` (each followed by its label line), into
    one preallocated buffer; hashed in threads, since hashlib lets go of the
    GIL while it absorbs inputs over 2 KB."""
    m = rows.shape[0]
    out = np.empty((m, 2 * LANES), dtype=np.uint8)
    workers = max(1, min(_WORKERS, m // _MIN_ROWS_PER_THREAD))
    step = -(-m // workers)
    spans = [(s, min(m, s + step)) for s in range(0, m, step)]
    if workers == 1:
        _hash_span(rows, labels, out, *spans[0])
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda span: _hash_span(rows, labels, out, *span), spans))
    return out.view("<u2").astype(np.uint16, copy=False)


def _hash_span(rows, labels, out, lo: int, hi: int) -> None:
    prefix = hashlib.shake_128(_LEAF)
    flat = memoryview(out.reshape(-1))
    width = 2 * LANES
    for i in range(lo, hi):
        leaf = prefix.copy()
        leaf.update(rows[i])
        leaf.update(labels[i])
        flat[i * width : (i + 1) * width] = leaf.digest(width)


def store_header(store) -> dict:
    """What the root covers besides the lanes: scheme, width, metric,
    pre-processing, storage dtype, sample count and centre of ``store`` now."""
    return {
        "scheme": SCHEME,
        "n_features": int(store.n_features),
        "metric": store.metric.name,
        "preprocessing": store.preprocessing,
        "storage_dtype": store.storage_dtype,
        "n_samples": int(store.n_samples),
        "center": None
        if store.mean is None
        else np.asarray(store.mean, dtype="<f4").tobytes().hex(),
    }


def root_digest(store, lanes: np.ndarray) -> str:
    """The digest of ``store`` whose samples hash to ``lanes``: BLAKE2b-256 of
    its header (:func:`store_header`) and the lanes."""
    return root_of(store_header(store), lanes)


def root_of(header: dict, lanes: np.ndarray) -> str:
    """BLAKE2b-256 of a header (:func:`store_header`) and lanes."""
    root = hashlib.blake2b(_canonical(header), digest_size=32)
    root.update(np.asarray(lanes, dtype="<u2").tobytes())
    return root.hexdigest()


def _raw(store, ids):
    """The raw vectors and weights of ``ids``; None where the memory cannot
    rebuild raw vectors (a file of skknn 0.1: unit rows without lengths)."""
    try:
        return store.get(ids)
    except ValueError:
        return None


def _label_lines(labels) -> list[bytes]:
    """One canonical JSON line per label (a row of levels for multi-output);
    each distinct value is encoded once."""
    labels = np.asarray(labels)
    try:
        values, codes = np.unique(
            labels, return_inverse=True, axis=0 if labels.ndim == 2 else None
        )
    except TypeError:  # objects that do not sort: one at a time
        values, codes = labels, np.arange(labels.shape[0])
    lines = [
        (json.dumps(v, sort_keys=True, default=str) + "\n").encode()
        for v in values.tolist()
    ]
    return [lines[c] for c in codes.ravel().tolist()]


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def entry_hash(entry: dict) -> str:
    """BLAKE2b-256 of an entry's canonical JSON (what the next ``prev`` names)."""
    return hashlib.blake2b(_canonical(entry), digest_size=32).hexdigest()


def chain_problems(entries) -> list[str]:
    """What is wrong with a log: malformed entries, a broken ``prev`` chain,
    an edit whose ``before`` is not the previous ``after`` (the memory changed
    outside the log). Empty when the chain is valid.

    Parameters
    ----------
    entries : list of dict
        The log, oldest first.

    Returns
    -------
    problems : list of str
        Each names the entry (0-based) and what is wrong with it.

    Examples
    --------
    >>> from skknn.memory.digest import EditLog, chain_problems
    >>> log = EditLog()
    >>> _ = log.append("fit", count=2, ids_digest="a" * 64, before="0" * 64,
    ...                after="b" * 64)
    >>> _ = log.append("unlearn", count=1, ids_digest="c" * 64, before="b" * 64,
    ...                after="d" * 64)
    >>> chain_problems(log.entries())
    []
    >>> entries = log.entries()
    >>> entries[0]["count"] = 1  # tampered
    >>> chain_problems(entries)  # doctest: +NORMALIZE_WHITESPACE
    ['entry 1: prev does not match the hash of entry 0 (entry 0 was changed,
      or one was removed or reordered)']
    """
    if not isinstance(entries, list):
        return ["the log is not a list of entries"]
    problems = []
    prev, after = GENESIS, None
    for i, entry in enumerate(entries):
        bad = _malformed(entry)
        if bad:
            problems.append(f"entry {i}: {bad}")
            return problems  # nothing after a malformed entry can be checked
        if entry["prev"] != prev:
            which = "the log's start" if i == 0 else f"the hash of entry {i - 1}"
            problems.append(
                f"entry {i}: prev does not match {which}"
                + ("" if i == 0 else f" (entry {i - 1} was changed, or one was")
                + ("" if i == 0 else " removed or reordered)")
            )
        if after is not None and entry["before"] != after:
            problems.append(
                f"entry {i} ({entry['op']}): before is not entry {i - 1}'s after "
                "(the memory changed outside the log)"
            )
        prev, after = entry_hash(entry), entry["after"]
    return problems


def _malformed(entry) -> str | None:
    if not isinstance(entry, dict):
        return "not an object"
    missing = [k for k in ENTRY_KEYS if k not in entry]
    if missing:
        return f"missing {missing}"
    if not isinstance(entry["op"], str) or not isinstance(entry["time"], str):
        return "op and time must be strings"
    count = entry["count"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        return f"count must be an int >= 0; got {count!r}"
    for key in _HEX_KEYS:
        value = entry[key]
        if not (isinstance(value, str) and len(value) == 64 and _is_hex(value)):
            return f"{key} must be 64 hex digits"
    return None


def _is_hex(value: str) -> bool:
    return all(c in "0123456789abcdef" for c in value)


class EditLog:
    """An append-only, hash-chained list of a memory's edits, hashed lazily.

    Each entry is a dict: ``op`` (``"fit"``, ``"partial_fit"``, ``"unlearn"``,
    ``"refresh"``, ``"rollback"``, ``"head"``), ``count`` (samples concerned),
    ``ids_digest`` (:func:`ids_digest` of their ids), ``before`` and ``after``
    (:func:`memory_digest` around the edit), ``time`` (UTC, ISO 8601), ``prev``
    (:func:`entry_hash` of the entry before), and ``memory`` / ``version`` (the
    store's uid and version after the edit, which let the next edit reuse
    ``after`` as its ``before``).

    An edit is recorded without hashing the rows it added (:meth:`record`):
    they are hashed when the entries are next asked for (:meth:`entries`,
    :meth:`digest_of`, a pickle, an attached file), from the rows as stored
    then, which are the rows as added: a later logged edit that removes one
    hashes it first and credits its leaf to the edit that added it, and a
    change made on the store directly calls :func:`rows_change` first.

    With :meth:`attach`, every entry is also appended to a file
    (``edit_log.jsonl``, one JSON line each, synced) as it is recorded, so a
    storage folder carries the chain its reopened estimator extends.

    Examples
    --------
    >>> from skknn.memory.digest import EditLog
    >>> log = EditLog()
    >>> entry = log.append("fit", count=3, ids_digest="a" * 64,
    ...                    before="0" * 64, after="b" * 64)
    >>> entry["prev"] == "0" * 64, log.last["after"] == "b" * 64
    (True, True)
    """

    def __init__(self, entries=None):
        self._entries = [dict(e) for e in entries or ()]
        self._file = None
        self._file_count = 0  # entries the attached file is known to hold
        self._pending: list[_Pending] = []
        self._store = None  # the memory the pending edits' rows are read from
        # ((uid, version), lanes) after the last finished entry: the next
        # edit starts from these lanes instead of hashing the whole memory
        self._base = None
        # Taken after the store's own lock, never before it.
        self._lock = threading.RLock()

    # -- the chain ----------------------------------------------------------------
    @property
    def last(self) -> dict | None:
        self.settle()
        return self._entries[-1] if self._entries else None

    def entries(self) -> list[dict]:
        """A copy of the entries, oldest first (pending ones hashed first)."""
        self.settle()
        with self._lock:
            return [dict(e) for e in self._entries]

    def __len__(self) -> int:
        return len(self._entries) + len(self._pending)

    def append(self, op: str, *, count, ids_digest, before, after, **extra) -> dict:
        """Add one finished entry (chained to the last) and return a copy."""
        self.settle()
        with self._lock:
            entry = _entry(self._entries, op, count, ids_digest, before, after, _now())
            entry.update(extra)
            self._entries.append(entry)
            self._base = None  # lanes unknown: the next edit hashes the memory
            if self._file is not None:
                self._write(self._file)
            return dict(entry)

    # -- recording edits ----------------------------------------------------------
    def before(self, store, *, replacing: bool = False) -> tuple:
        """``(digest, lanes)`` of ``store`` before an edit; ``(None, None)``
        when it is the state the last entry ends in (known without hashing).
        ``replacing``: the edit replaces ``store``, so its pending rows are
        hashed now. For no store, the state the chain last described."""
        if store is None:
            with self._lock:
                empty = not self._entries and not self._pending
            return (NO_MEMORY if empty else None), None
        self._settle_other(store)
        with store.reading(), self._lock:
            digest = lanes = None
            if _key(store) != self._tail_key():
                # Changed outside the log, or a memory this log has not hashed
                # (loaded, moved): hashed whole, as it is now.
                lanes = self.removing(store, store.ids())
                digest = root_digest(store, lanes)
            if replacing:
                self._absorb(store)
                self._finish()
            return digest, lanes

    def record(
        self,
        op: str,
        ids,
        before: tuple,
        store,
        *,
        added=None,
        removed=None,
        fresh: bool = False,
        whole: bool = False,
        **extra,
    ) -> None:
        """Log the edit just made to ``store`` from ``before``
        (:meth:`before`): rows ``added`` (hashed later), lanes ``removed``
        (:meth:`removing`, hashed before they went); ``fresh``: a new memory;
        ``whole``: rows changed in place, so the memory is hashed whole now."""
        # Copies (the caller's arrays may change); sorting waits for the end.
        own = np.array(ids, dtype=np.int64).ravel()
        if added is not None:
            added = own if added is ids else np.array(added, dtype=np.int64).ravel()
        time = _now()
        self._settle_other(store)
        with store.reading(), self._lock:
            digest, lanes = before
            if whole:
                lanes = self.removing(store, store.ids())
            elif fresh:
                lanes = np.zeros(LANES, dtype=np.uint16)
            delta = np.zeros(LANES, dtype=np.uint16)
            if removed is not None:
                delta -= removed
            pending = _EMPTY if added is None else added
            extra = {"memory": store.uid, "version": int(store.version), **extra}
            header = store_header(store)
            self._pending.append(
                _Pending(op, time, own, extra, header, digest, lanes, delta, pending)
            )
            self._store = store
            if pending.size:
                _watch(self, store)
        if self._file is not None:  # a folder's log is written as it edits
            self.settle()

    def removing(self, store, ids) -> np.ndarray:
        """The lanes of rows ``ids`` of ``store`` (read now, before they go or
        change); a row a pending edit added has its leaf credited to it."""
        total = np.zeros(LANES, dtype=np.uint16)
        with store.reading(), self._lock:
            mine = self._store is store
            for block, leaves in leaf_blocks(store, ids):
                total += lane_sum(leaves)
                for p in self._pending if mine else ():
                    hit, p.pending = _taken(p.sorted_pending(), block)
                    if hit.any():
                        p.delta += lane_sum(leaves[hit])
        return total

    def rows_changing(self, store, ids=None) -> None:
        """``store`` is about to change or remove rows ``ids`` (None: all):
        the pending edits' leaves among them are hashed now."""
        with self._lock:
            if self._store is store:
                self._absorb(store, ids)

    # -- hashing what is pending ----------------------------------------------------
    def digest_of(self, store) -> str:
        """:func:`memory_digest` of ``store``, from the log's lanes when they
        describe it (no hashing beyond the pending rows)."""
        self._settle_other(store)
        with store.reading(), self._lock:
            if _key(store) == self._tail_key():
                self._absorb(store)
                self._finish()
                return root_digest(store, self._base[1])
            return root_digest(store, memory_lanes(store))

    def settle(self) -> None:
        """Hash the pending edits' rows and finish their entries."""
        while True:
            store = self._store
            if store is None:
                with self._lock:
                    if self._store is None:
                        self._finish()
                        return
                continue
            with store.reading(), self._lock:
                if self._store is store:
                    self._absorb(store)
                    self._finish()
                    return

    def _settle_other(self, store) -> None:
        if self._store is not None and self._store is not store:
            self.settle()

    def _tail_key(self):
        if self._pending:
            return self._pending[-1].extra["memory"], self._pending[-1].extra["version"]
        return None if self._base is None else self._base[0]

    def _absorb(self, store, ids=None) -> None:
        """Credit each pending edit with the leaves of its rows among ``ids``
        (None: all of them), read from ``store`` now."""
        if ids is not None:
            ids = np.asarray(ids, dtype=np.int64).ravel()
        for p in self._pending:
            if ids is None:
                take, p.pending = p.pending, _EMPTY
            else:
                hit, p.pending = _taken(p.sorted_pending(), ids)
                take = ids[hit]
            if take.size:
                p.delta += row_lanes(store, take)
        if not any(p.pending.size for p in self._pending):
            _unwatch(self, store)

    def _finish(self) -> None:
        """Turn the pending edits (their rows all hashed) into entries."""
        if not self._pending:
            return
        lanes = None if self._base is None else self._base[1]
        for p in self._pending:
            start = lanes if p.start is None else p.start
            if start is None or p.pending.size:  # a bug, never a state to log
                raise RuntimeError("an edit's lanes are not known; the log is broken")
            lanes = start + p.delta
            before = p.before
            if before is None:
                before = self._entries[-1]["after"] if self._entries else NO_MEMORY
            unique = _sorted_unique(p.ids)
            entry = _entry(
                self._entries,
                p.op,
                unique.shape[0],
                _unique_ids_digest(unique),
                before,
                root_of(p.header, lanes),
                p.time,
            )
            entry.update(p.extra)
            self._entries.append(entry)
        last = self._pending[-1].extra
        self._base = ((last["memory"], last["version"]), lanes)
        self._pending = []
        if self._store is not None:
            _unwatch(self, self._store)
        self._store = None
        if self._file is not None:
            self._write(self._file)

    # -- the file -----------------------------------------------------------------
    def attach(self, path) -> None:
        """Keep the entries in the file ``path`` too (written now in full if it
        does not hold them yet, then one appended line per entry)."""
        self.settle()
        with self._lock:
            self._file = Path(path)
            self._file_count = 0
            self._write(self._file)

    @property
    def file(self) -> Path | None:
        """The file the entries are also kept in (a storage folder's log), or None."""
        return self._file

    def attached_to(self, path) -> None:
        """Keep appending to ``path``, read by :func:`read_log_file` (it holds
        every entry already)."""
        self._file = Path(path)
        self._file_count = len(self._entries)

    def _write(self, path: Path) -> None:
        from skknn._archive import replaced

        if self._file_count == 0 or self._file_count > len(self._entries):
            with replaced(path, "w") as fh:
                fh.writelines(_line(e) for e in self._entries)
        elif self._file_count < len(self._entries):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "w") as fh:
                fh.writelines(_line(e) for e in self._entries[self._file_count :])
                fh.flush()
                os.fsync(fh.fileno())
        self._file_count = len(self._entries)

    def __getstate__(self):
        # A file belongs to one process, and so do the rows pending edits
        # read: hashed now. The lanes are found again if needed.
        return {"entries": self.entries()}

    def __setstate__(self, state):
        self.__init__(state["entries"])


@dataclasses.dataclass
class _Pending:
    """An edit whose ``after`` waits for the leaves of rows it added."""

    op: str
    time: str
    ids: np.ndarray  # its ids (a copy): count and ids_digest come at the end
    extra: dict  # the store's uid and version after it, and the caller's fields
    header: dict  # store_header after the edit
    before: str | None  # None: the ``after`` of the entry before
    start: np.ndarray | None  # lanes it started from; None: the entry before's
    delta: np.ndarray  # leaves added minus leaves removed, as hashed so far
    pending: np.ndarray  # ids whose leaves are still to add
    is_sorted: bool = False  # pending sorted (at the first lookup, not in fit)

    def sorted_pending(self) -> np.ndarray:
        if not self.is_sorted:
            self.pending, self.is_sorted = np.sort(self.pending), True
        return self.pending


_EMPTY = np.zeros(0, dtype=np.int64)


def _taken(pending: np.ndarray, ids) -> tuple[np.ndarray, np.ndarray]:
    """Which of ``ids`` (unique) are in ``pending`` (sorted, unique), and
    ``pending`` without them: O(len(ids) log len(pending)) to find them."""
    ids = np.asarray(ids, dtype=np.int64).ravel()
    if not pending.size or not ids.size:
        return np.zeros(ids.shape[0], dtype=bool), pending
    at = np.minimum(np.searchsorted(pending, ids), pending.shape[0] - 1)
    hit = pending[at] == ids
    return hit, (np.delete(pending, at[hit]) if hit.any() else pending)


def _key(store) -> tuple:
    return store.uid, int(store.version)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


def _entry(entries, op, count, ids_digest, before, after, time) -> dict:
    """An entry chained to the last of ``entries``."""
    return {
        "op": op,
        "count": int(count),
        "ids_digest": ids_digest,
        "before": before,
        "after": after,
        "time": time,
        "prev": GENESIS if not entries else entry_hash(entries[-1]),
    }


# Logs with edits pending on a store, by store: told before the store changes
# or removes rows (rows_change), whoever makes the change. Weak keys: an entry
# goes with its store, so discarded estimators leave nothing behind.
_WATCHING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _watch(log: EditLog, store) -> None:
    _WATCHING.setdefault(store, weakref.WeakSet()).add(log)


def _unwatch(log: EditLog, store) -> None:
    logs = _WATCHING.get(store)
    if logs is not None:
        logs.discard(log)
        if not logs:
            _WATCHING.pop(store, None)


def rows_change(store, ids=None) -> None:
    """Called by a store before it changes or removes rows ``ids`` (None: all):
    an edit log whose pending edits added some of them hashes them first, as
    they were added (an edit made on the store directly, outside the log,
    then shows as a chain break, not as a wrong digest)."""
    logs = _WATCHING.get(store)
    if logs:
        for log in list(logs):
            log.rows_changing(store, ids)


def _line(entry: dict) -> str:
    return json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"


def checked_entries(entries, where: str = "edit_log") -> list[dict]:
    """A log read from a file, its shape checked (the chain itself is the
    audit's to judge): a list of objects with JSON scalar values."""
    if not isinstance(entries, list):
        raise ValueError(f"{where} must be a list of entries")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not all(
            isinstance(k, str) and (v is None or isinstance(v, (str, int, float, bool)))
            for k, v in entry.items()
        ):
            raise ValueError(f"{where} entry {i} is not an object of plain values")
    return [dict(e) for e in entries]


def read_log_file(path) -> list[dict]:
    """The entries of an ``edit_log.jsonl`` (never through a link; size checked
    before reading). A missing file is an empty log.

    Raises
    ------
    skknn.ModelFileError
        A link, not a regular file, too large, or not JSON lines.
    """
    from skknn.exceptions import ModelFileError

    path = Path(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return []
    if not stat.S_ISREG(info.st_mode):
        raise ModelFileError(path.parent, path.name, "is a link or not a regular file")
    if info.st_size > MAX_LOG_BYTES:
        raise ModelFileError(path.parent, path.name, f"{info.st_size} bytes; too large")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as fh:
        text = fh.read(MAX_LOG_BYTES + 1)
    try:
        entries = [json.loads(line) for line in text.decode().splitlines() if line]
        return checked_entries(entries, path.name)
    except ValueError as exc:
        raise ModelFileError(path.parent, path.name, f"unreadable ({exc})") from exc


# -- recording from the estimators ---------------------------------------------------
# An estimator that makes one edit out of several (JOINT's unlearn with retrain,
# which refits its voter) names the edit its voter records.
_NAMED = contextvars.ContextVar("skknn_named_edit", default=None)


@contextlib.contextmanager
def named_edit(op: str, ids, **extra):
    """Within the block, the voter's next recorded edit is logged as ``op`` of
    ``ids`` (with ``extra`` fields) instead of what the voter did to get there."""
    token = _NAMED.set({"op": op, "ids": np.asarray(ids), "extra": extra})
    try:
        yield
    finally:
        _NAMED.reset(token)


def record(log: EditLog, op: str, ids, before: tuple, store, **kwargs) -> None:
    """:meth:`EditLog.record`, as the enclosing :func:`named_edit` names it."""
    named = _NAMED.get()
    if named is not None:
        op, ids = named["op"], named["ids"]
        kwargs = {**kwargs, **named["extra"]}
        _NAMED.set(None)  # one edit only
    log.record(op, ids, before, store, **kwargs)
