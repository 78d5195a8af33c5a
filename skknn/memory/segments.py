"""A store's memory on disk: memory-mapped per-row files and a manifest.

One folder per store, holding only these names (nothing else is read, written
or deleted, and nothing is followed through a link: every file is opened with
``O_NOFOLLOW`` and checked with ``lstat``, and a link in place of one of these
names makes the folder refused with :class:`~skknn.ModelFileError`):

``vectors-<g>.bin``
    The pre-processed vectors: rows of the storage dtype in C order, with spare
    capacity past the committed rows (zeros, rows of an uncommitted add, or
    copies of live rows a deletion moved, until the deletion finishes).
``labels-<g>.bin``, ``sample_ids-<g>.bin``, ``reliability-<g>.bin``,
``excluded-<g>.bin``, ``sample_weight-<g>.bin``, ``norms-<g>.bin``
    The per-row arrays ("parts"), one raw file each, laid out as the vectors.
``order-<g>.bin``
    Each row's insertion sequence number (int64, from ``next_seq``, never
    renumbered). A deletion moves rows (below), so the physical row order is
    not the memory's order; the store sorts by these numbers wherever order
    shows (``ids()``, leave-one-out, ``state()``, index builds), and a memory on
    disk answers exactly as the same memory in RAM.
``manifest.json``
    The commit record: the store's description, the committed row count ``n``,
    a commit ``generation`` (+1 per commit), ``next_seq``, for every part the
    generation ``<g>`` of its file, its dtype, width and the checksum of its
    committed bytes (rows ``[0, n)``), a deletion's ``patch`` while it is being
    applied, the small arrays (centre, taxonomy paths) and a CRC-32 of the
    record itself.
``.lock``
    flock'ed by the one live store of the folder; holds the last commit
    generation (a high-water mark: a manifest older than it was copied back
    over a newer one, and is refused).
``.manifest.json.<8 random>.tmp``
    A manifest being written (:func:`skknn._archive.replaced`).

A part's checksum is the sum (mod 2**64) of the CRC-32 of each 64 KiB block of
its committed bytes, each CRC seeded with its block's number: an edit of ``m``
rows re-reads only the blocks those rows touch, O(m) whatever ``n`` is. (A
rolling CRC-32 of the whole part cannot follow an in-place edit without the
bytes after it; a sum of per-row CRCs would cost a call per row to append.)

The commit protocol. The manifest is written to a temporary file, synced and
renamed over the old one: the rename is the commit point. Before it:

* an append (``add``) writes the new rows past the committed count into each
  part's file (the memory maps the store writes into), syncs them, and updates
  each part's checksum with the blocks the new rows touch: O(rows added),
  whatever ``n`` is. Rows the committed manifest names are never written.
* a part whose committed rows change otherwise (a new class re-encodes the
  labels; ``set_reliability``; a deletion too large for one patch, over
  ``_MAX_MOVES`` moved rows) is written whole to a new generation file, synced,
  the folder synced; the old file is untouched.
* a deletion of ``m`` rows (``remove``) writes nothing but the manifest: the new
  count ``n' = n - m``, the checksums the parts will have (computed from the
  blocks the deletion touches) and the patch: ``end = n`` and the moves
  ``dst <- src``, which put the live rows of the tail ``[n', n)`` into the
  removed rows below ``n'`` (swap-last, O(m) bytes).

After the rename the files the old manifest named and the new one does not are
zeroed (the removed rows of the vectors, the whole of a small part) and
deleted. A deletion's patch is applied in every part file (the moves, and
zeros over the removed rows in the tail), synced; a second manifest then drops
the moves (keeping ``end``); then the tail ``[n', end)`` (the moved rows' old
copies) is zeroed and synced, all before ``remove`` returns. Opening a folder
whose manifest still lists moves applies them again (the sources, past ``n'``,
are written by nothing until the second manifest: idempotent), checks the
checksums, commits the second manifest, and zeroes ``[n, end)`` (rows past the
committed count: zeroing them is always safe).

A process killed at any instant therefore leaves the old manifest with every
row it names intact, or the new one with every row it names written and synced
(or, for a deletion, recoverable from the rows it names):

* killed before the rename: the old commit; rows written past its ``n`` and new
  generation files are not named by it; a temporary manifest may remain.
  A deletion has written nothing yet.
* killed after the rename: the new commit; superseded files may remain.
* a deletion killed after its rename, before or while its patch is applied: the
  opening applies the patch (the removed rows below ``n'`` are overwritten by
  the moved ones, those in the tail zeroed), then zeroes the tail; killed after
  its second manifest, the opening zeroes the tail. Either way no removed row's
  bytes are left in any file once the folder has been opened again.

:meth:`DiskVectors.open` maps the committed parts, applies a listed patch,
checks each file's size and the checksum of its committed rows (the vectors'
too, at about 4 GB/s, unless ``verify_vectors=False``: reopening reads them all
anyway, to build the index), the manifest's own CRC and its generation against
the high-water mark, and then zeroes and deletes what the manifest does not name
(superseded or uncommitted generations, and stale temporaries no live writer
holds).

A folder of the first format (``state.npz`` holding the per-row arrays) is
converted at its first opening.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import stat
import uuid
import weakref
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from zipfile import BadZipFile

import numpy as np

from skknn._archive import clean_stale_temporaries, fsync_folder, replaced
from skknn.exceptions import ModelFileError
from skknn.memory.checks import check_state

MANIFEST = "manifest.json"
STATE = "state.npz"  # the first format's committed state
LOCK = ".lock"
FORMAT, VERSION = "skknn-store", 3
# The per-row parts, in the order of the store's buffers, then the rows'
# sequence numbers (the folder's own: the store reads them with order()).
PARTS = (
    "vectors",
    "labels",
    "sample_ids",
    "reliability",
    "excluded",
    "sample_weight",
    "norms",
    "order",
)
REQUIRED_PARTS = (*PARTS[:6], "order")
SMALL_ARRAYS = ("mean", "taxonomy_paths")
_PART_FILE = re.compile(r"(" + "|".join(PARTS) + r")-(\d{1,18})\.bin")
_DTYPES = {"|b1", "<i4", "<i8", "<f2", "<f4", "<f8"}
# Parts no store check looks at again must hold exactly what skknn writes.
_PART_DTYPES = {"vectors": {"<f4", "<f2"}, "order": {"<i8"}}
# File generations stay below what _PART_FILE matches (18 digits), so every
# file a manifest can name is one purge and destroy recognise.
_MAX_GEN = 10**17
_MAX_WIDTH = 1 << 20
_MAX_MANIFEST_BYTES = 64 << 20
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# Bytes zeroed or copied per step: bounded working memory whatever the memory size.
_CHUNK_BYTES = 64 << 20
_COPY_BYTES = 4 << 20  # a copy's step
# Bytes per checksum block (see the module doc), and the checksums' modulus.
_BLOCK = 1 << 16
_MASK64 = (1 << 64) - 1
# A deletion moving more rows than this rewrites the parts instead (its patch
# would make the manifest too large): 2**20 moves are 22 MB of manifest.
_MAX_MOVES = 1 << 20
# (pid, threads) syncing one commit's files together, made at first use
_SYNC_POOL = None


class StorageInUse(RuntimeError):
    """The folder's memory is held by another live store (this or another process).

    Examples
    --------
    >>> import tempfile, skknn
    >>> folder = tempfile.mkdtemp()
    >>> knn = skknn.KNNVoter(n_neighbors=1, index="exact", storage_path=folder)
    >>> knn = knn.fit([[0., 1.], [1., 0.]], [0, 1])
    >>> skknn.load(folder)  # knn still holds its memory
    Traceback (most recent call last):
    ...
    skknn.memory.segments.StorageInUse: The memory in '...' is in use by ...
    """


def _open_file(path: Path, flags: int, part: str | None = None) -> int:
    """``os.open`` that never follows a link (a link: ModelFileError)."""
    try:
        return os.open(path, flags | _NOFOLLOW, 0o666)
    except OSError as exc:
        if os.path.islink(path):
            raise ModelFileError(
                path, part or path.name, "is a link; skknn follows none"
            ) from exc
        raise


def _try_lock(folder: Path) -> int | None:
    """An exclusive lock on ``folder`` (its fd), or None if held elsewhere."""
    fd = _open_file(folder / LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _fsync_file(path: Path) -> None:
    """Make a file's written bytes (through a memory map too) durable."""
    fd = _open_file(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _in_parallel(func, jobs: list) -> None:
    """``func(*job)`` for each job, concurrently when several: the file system
    commits the syncs of one edit's files together (one journal commit on
    ext4, not one per file). The first error is raised after all ran."""
    global _SYNC_POOL
    if len(jobs) < 2:
        for job in jobs:
            func(*job)
        return
    # one pool per process: a forked child has none of its parent's threads
    if _SYNC_POOL is None or _SYNC_POOL[0] != os.getpid():
        pool = ThreadPoolExecutor(len(PARTS), thread_name_prefix="skknn-sync")
        _SYNC_POOL = (os.getpid(), pool)
    futures = [_SYNC_POOL[1].submit(func, *job) for job in jobs]
    for done in futures:
        done.result()


def _zero_file(path: Path, rows=None, row_bytes: int = 0) -> None:
    """Overwrite ``rows`` of a row file with zeros (all of it when None), synced."""
    fd = _open_file(path, os.O_RDWR)
    with os.fdopen(fd, "r+b") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return
        if rows is None:
            size = os.fstat(fh.fileno()).st_size
            zeros = bytes(min(size, _CHUNK_BYTES))
            for start in range(0, size, _CHUNK_BYTES):
                fh.seek(start)
                fh.write(zeros[: min(_CHUNK_BYTES, size - start)])
        else:
            zero_row = bytes(row_bytes)
            for r in np.asarray(rows, dtype=np.int64).tolist():
                fh.seek(r * row_bytes)
                fh.write(zero_row)
        fh.flush()
        os.fsync(fh.fileno())


def _write_runs(fd: int, src: np.ndarray, runs, row_bytes: int) -> None:
    """Write the ``runs`` of ``src``'s rows one after another from the start of
    ``fd``'s file. (``pwrite`` rather than a fresh memory map: no page fault
    per page.)"""
    step = max(1, _COPY_BYTES // max(row_bytes, 1))
    offset = 0
    for s, e in runs:
        for c in range(s, e, step):
            chunk = np.ascontiguousarray(src[c : min(c + step, e)])
            view = memoryview(chunk.reshape(-1).view(np.uint8))
            while view:
                done = os.pwrite(fd, view, offset)
                offset += done
                view = view[done:]


def _flat(rows: np.ndarray, n: int) -> np.ndarray:
    """The bytes of rows ``[0, n)`` (a view of a contiguous array)."""
    return np.ascontiguousarray(rows[:n]).reshape(-1).view(np.uint8)


def _row_bytes(rows: np.ndarray) -> int:
    return int(np.prod(rows.shape[1:], dtype=np.int64)) * rows.dtype.itemsize


def _block_crc(flat: np.ndarray, j: int, end: int) -> int:
    """CRC-32 of block ``j`` of ``flat`` (cut at byte ``end``), seeded by ``j``."""
    a = j * _BLOCK
    return zlib.crc32(flat[a : min(a + _BLOCK, end)], j & 0xFFFFFFFF)


def _blocksum(rows: np.ndarray, n: int) -> int:
    """The checksum of rows ``[0, n)`` (module doc): block CRCs summed."""
    return _appended_sum(0, rows, 0, n)


def _appended_sum(total: int, rows: np.ndarray, old_n: int, n: int) -> int:
    """The checksum ``total`` of rows ``[0, old_n)`` extended to rows ``[0, n)``:
    the old last block's CRC out, the blocks from it on in (O(n - old_n))."""
    old_end = old_n * _row_bytes(rows)
    flat = _flat(rows, n)
    j0 = old_end // _BLOCK
    if old_end % _BLOCK:
        total -= zlib.crc32(flat[j0 * _BLOCK : old_end], j0 & 0xFFFFFFFF)
    for j in range(j0, -(-flat.size // _BLOCK)):
        total += _block_crc(flat, j, flat.size)
    return total & _MASK64


def _moved(rows: np.ndarray, dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """Where each of ``rows`` takes its bytes from once ``dst <- src`` is applied
    (``dst`` sorted)."""
    if not dst.size:
        return rows
    pos = np.minimum(np.searchsorted(dst, rows), dst.size - 1)
    hit = dst[pos] == rows
    out = rows.copy()
    out[hit] = src[pos[hit]]
    return out


def _removed_sum(total, rows, n_old: int, n_new: int, dst, src) -> int:
    """The checksum ``total`` of rows ``[0, n_old)`` once the patch ``dst <- src``
    is applied and the rows cut to ``n_new``, computed before it is: only the
    blocks the moved rows and the tail touch are read (O(m))."""
    rb = _row_bytes(rows)
    old_end, new_end = n_old * rb, n_new * rb
    flat = _flat(rows, n_old)
    first, last = (dst * rb) // _BLOCK, (dst * rb + rb - 1) // _BLOCK
    touched = [first, last, np.arange(new_end // _BLOCK, -(-old_end // _BLOCK))]
    if rb > _BLOCK:  # a row spans blocks between its first and last
        touched += [np.arange(f, g) for f, g in zip(first.tolist(), last.tolist())]
    for j in np.unique(np.concatenate(touched).astype(np.int64)).tolist():
        a = j * _BLOCK
        if a < old_end:
            total -= _block_crc(flat, j, old_end)
        if a < new_end:
            b = min(a + _BLOCK, new_end)
            r0, r1 = a // rb, -(-b // rb)
            src_rows = _moved(np.arange(r0, r1), dst, src)
            block = np.ascontiguousarray(rows[src_rows]).reshape(-1).view(np.uint8)
            total += zlib.crc32(block[a - r0 * rb : b - r0 * rb], j & 0xFFFFFFFF)
    return total & _MASK64


def _move_rows(rows: np.ndarray, dst, src, zero) -> None:
    """A deletion's patch in one part's map: rows ``src`` copied over rows
    ``dst`` (the removed rows below the new count), rows ``zero`` zeroed."""
    rows[dst] = rows[src]
    rows[zero] = 0


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays hold the same bytes (NaN equal to itself)."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and np.array_equal(
        a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)
    )


def _b64(a) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()


def _checksum(body: dict) -> int:
    return zlib.crc32(json.dumps(body, sort_keys=True).encode())


class DiskVectors:
    """The files of one store, in its own folder (see the module doc).

    Parameters
    ----------
    folder : path-like
        The store's folder (created if missing); its lock is taken.
    n_features : int
        Width of the vectors.
    dtype : dtype
        Storage dtype of the vectors.
    """

    def __init__(self, folder: Path, n_features: int, dtype, *, gen: int = 0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        info = os.lstat(self.folder)
        if not stat.S_ISDIR(info.st_mode):
            raise ModelFileError(self.folder, "store folder", "is not a folder")
        fd = _try_lock(self.folder)
        if fd is None:
            raise StorageInUse(
                f"The memory in {str(self.folder)!r} is in use by another store "
                "(in this or another process)."
            )
        self._lock_fd = fd
        self._release = weakref.finalize(self, os.close, fd)
        self.n_features = int(n_features)
        self.dtype = np.dtype(dtype)
        self.n = 0  # committed rows
        self.generation = 0  # commits made
        self.next_seq = 0  # the sequence number of the next row added
        # A deletion's patch being applied: (end, dst, src), or (end, [], [])
        # once its moves are applied and dropped (rows [n, end) to zero).
        self._patch = None
        self.parts: dict[str, dict] = {}  # committed: gen, dtype, width, blocksum
        self._maps: dict[str, np.ndarray] = {}  # each part's file, mapped
        self._staged: dict[str, dict] = {}  # new generations for the next commit
        self._superseded: list[tuple] = []  # (part, gen, row bytes)
        self._next_gen = gen + 1
        self._initial_gen = gen

    @classmethod
    def new(cls, storage_path, n_features: int, dtype) -> DiskVectors:
        """A fresh folder for one store inside ``storage_path``."""
        return cls(Path(storage_path) / uuid.uuid4().hex, n_features, dtype)

    def close(self) -> None:
        """Let go of the folder's lock (a store that failed to open from it)."""
        self._release()

    def path(self, gen: int, part: str = "vectors") -> Path:
        return self.folder / f"{part}-{int(gen)}.bin"

    # -- mapping the parts -------------------------------------------------------
    def _map(self, part: str, gen: int, dtype, width: int, cap: int, *, new=False):
        """Rows ``[0, cap)`` of a part's file, mapped read-write and tagged with
        ``(part, gen)``; the file grows (with zeros) to hold them."""
        dtype = np.dtype(dtype)
        path = self.path(gen, part)
        flags = os.O_RDWR | os.O_CREAT | (os.O_EXCL if new else 0)
        fd = _open_file(path, flags, part)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ModelFileError(path, part, "is not a regular file")
            if info.st_size < cap * width * dtype.itemsize:
                os.ftruncate(fd, cap * width * dtype.itemsize)
            shape = (cap, width) if part == "vectors" else (cap,)
            if cap == 0:  # mmap cannot map nothing
                rows = np.zeros(shape, dtype=dtype).view(np.memmap)
            else:
                with os.fdopen(os.dup(fd), "r+b") as fh:
                    rows = np.memmap(fh, dtype=dtype, mode="r+", shape=shape)
        finally:
            os.close(fd)
        rows.skknn_part = (part, int(gen))
        return rows

    def _width(self, part: str) -> int:
        return self.n_features if part == "vectors" else 1

    def buffers(self, bufs: list, cap: int) -> list[np.ndarray]:
        """Every part's file mapped with at least ``cap`` rows, for an append.

        ``bufs`` are the store's buffers (their dtypes name a new part's). The
        committed rows are the store's own (both are the committed state), so
        the store writes its new rows into these maps.
        """
        # a deletion's patch not finished (its apply_patch raised): finished
        # first, since its sources lie past the committed rows
        self.apply_patch()
        out = []
        for part, buf in zip(PARTS, bufs):
            out.append(self._grown(part, buf.dtype, cap))
        self._grown("order", np.dtype(np.int64), cap)
        return out

    def _grown(self, part: str, dtype, cap: int) -> np.ndarray:
        """``part``'s file mapped with at least ``cap`` rows."""
        cur = self._maps.get(part)
        if cur is not None and cur.shape[0] >= cap:
            return cur
        info = self.parts.get(part)
        gen = self._initial_gen if info is None else info["gen"]
        dtype = dtype if info is None else np.dtype(info["dtype"])
        self._maps[part] = self._map(part, gen, dtype, self._width(part), cap)
        return self._maps[part]

    def order(self, n: int) -> np.ndarray:
        """The sequence numbers of committed rows ``[0, n)`` (a view)."""
        return self._maps["order"][:n]

    def mapped(self, count: int) -> list[np.ndarray]:
        """The committed parts' maps, in the store's buffer order."""
        return [self._maps[part] for part in PARTS[:count]]

    # -- new generations -----------------------------------------------------------
    def stage(self, part: str, src: np.ndarray, runs, n_new: int, cap=None):
        """A new generation file of ``part`` holding the kept ``runs`` of ``src``
        in order, for the next commit (which syncs it); the current file is
        untouched."""
        gen = self._next_gen
        self._next_gen += 1
        cap = max(n_new, 1) if cap is None else max(cap, n_new, 1)
        path = self.path(gen, part)
        fd = _open_file(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, part)
        self._staged[part] = {"gen": gen, "map": None, "blocksum": 0, "sync": path}
        try:
            _write_runs(fd, src, runs, self._width(part) * src.dtype.itemsize)
        finally:
            os.close(fd)
        dst = self._map(part, gen, src.dtype, self._width(part), cap)
        self._staged[part].update(map=dst, blocksum=_blocksum(dst, n_new))
        return dst

    def discard(self) -> None:
        """Zero and delete the generations staged for a commit that failed."""
        for part, staged in list(self._staged.items()):
            path = self.path(staged["gen"], part)
            if os.path.lexists(path):
                _zero_file(path)
                path.unlink()
        self._staged.clear()

    def retire(self, removed_rows=None) -> None:
        """Zero the ``removed_rows`` (all rows when None) of the files the last
        commit superseded, synced, and delete the files, so unlearned samples'
        bytes leave the folder (and the disk's blocks)."""
        if not self._superseded:
            return
        jobs = []
        for part, old, row_bytes in self._superseded:
            path = self.path(old, part)
            if os.path.lexists(path):
                jobs.append((path, removed_rows, row_bytes))
        self._superseded.clear()
        _in_parallel(_zero_file, jobs)
        for path, _, _ in jobs:
            path.unlink()
        fsync_folder(self.folder)

    # -- the commit ----------------------------------------------------------------
    def commit(
        self, meta: dict, arrays: dict, bufs: list, n: int, *, removed=None
    ) -> None:
        """Make ``meta``, the small ``arrays`` and rows ``[0, n)`` of ``bufs``
        (the store's buffers, in :data:`PARTS` order) the committed state; or,
        with ``removed`` (committed rows, sorted), commit their deletion by a
        patch (``bufs`` unused; :meth:`apply_patch` applies it)."""
        self.apply_patch()  # a deletion's, if its apply_patch raised
        if removed is not None:
            return self._commit_removal(meta, arrays, removed)
        removal = "vectors" in self._staged
        try:
            plan = {part: self._plan(part, b, n) for part, b in zip(PARTS, bufs)}
            plan["order"] = self._plan_order(n, bufs[0].shape[0])
            syncs = [(p["sync"],) for p in plan.values() if p["sync"]]
            _in_parallel(_fsync_file, syncs)
            if any(p.get("staged") for p in plan.values()):
                fsync_folder(self.folder)  # the new files' names, before the commit
            record = self._record(meta, arrays, plan, n)
            with replaced(self.folder / MANIFEST, "w") as fh:
                json.dump(record, fh)
        except BaseException:  # not committed: the new generations go
            self.discard()
            raise
        self._adopt(plan, n, record["generation"], removal)

    def _plan_order(self, n: int, cap: int) -> dict:
        """The sequence numbers' part for a commit of ``n`` rows: staged by a
        deletion that rewrites the parts, else the next numbers written past
        the committed rows (as any part's appended rows)."""
        staged = self._staged.get("order")
        if staged is not None:
            return {**staged, "staged": True, "next_seq": self.next_seq}
        info = self.parts.get("order")
        base_n = 0 if info is None else self.n
        if n < base_n:
            raise RuntimeError("a removal commits by commit(removed=rows)")
        cur = self._grown("order", np.dtype(np.int64), max(n, cap, 1))
        cur[base_n:n] = np.arange(self.next_seq, self.next_seq + n - base_n)
        gen = cur.skknn_part[1]
        total = _appended_sum(0 if info is None else info["blocksum"], cur, base_n, n)
        sync = self.path(gen, "order") if n > base_n or info is None else None
        seq = self.next_seq + n - base_n
        return {
            "gen": gen,
            "map": cur,
            "blocksum": total,
            "sync": sync,
            "next_seq": seq,
        }

    def _plan(self, part: str, buf: np.ndarray, n: int) -> dict:
        """How ``part`` reaches the commit: its rows appended to the committed
        file (synced, checksum extended), or a new generation file."""
        staged = self._staged.get(part)
        if staged is not None and buf is staged["map"]:
            return {**staged, "staged": True}
        cur, info = self._maps.get(part), self.parts.get(part)
        base_n = 0 if info is None else self.n
        if cur is not None and n >= base_n and n <= cur.shape[0]:
            same = getattr(buf, "skknn_part", None) == cur.skknn_part
            if not same and part != "vectors" and buf.dtype == cur.dtype:
                # a copy the store made (set_reliability): unchanged committed rows
                same = _same_bytes(buf[:base_n], cur[:base_n])
                if same:
                    cur[base_n:n] = buf[base_n:n]
            if same:
                gen = cur.skknn_part[1]
                sync = self.path(gen, part) if n > base_n or info is None else None
                base = 0 if info is None else info["blocksum"]
                total = _appended_sum(base, cur, base_n, n)
                return {"gen": gen, "map": cur, "blocksum": total, "sync": sync}
        self.stage(part, buf, [(0, n)], n, cap=buf.shape[0])
        return {**self._staged[part], "staged": True}

    # -- a deletion: rows moved in place ------------------------------------------
    def can_patch(self, gone_rows: np.ndarray) -> bool:
        """Whether deleting ``gone_rows`` (committed rows) fits one patch."""
        n_new = self.n - len(gone_rows)
        moves = int(np.count_nonzero(np.asarray(gone_rows) < n_new))
        return moves <= _MAX_MOVES and "order" in self.parts

    def _commit_removal(self, meta: dict, arrays: dict, gone_rows) -> None:
        """Commit the deletion of ``gone_rows`` (sorted, unique, committed rows)
        with ``meta`` and the small ``arrays``: only the manifest is written,
        naming the new count, the checksums the parts will have and the patch
        (module doc). :meth:`apply_patch` applies it."""
        gone = np.asarray(gone_rows, dtype=np.int64)
        n_old = self.n
        n_new = n_old - gone.size
        dst = gone[gone < n_new]
        tail = np.arange(n_new, n_old, dtype=np.int64)
        src = tail[~np.isin(tail, gone)]
        plan = {}
        for part, info in self.parts.items():
            rows = self._maps[part]
            total = _removed_sum(info["blocksum"], rows, n_old, n_new, dst, src)
            plan[part] = {"gen": info["gen"], "map": rows, "blocksum": total}
        record = self._record(meta, arrays, plan, n_new, patch=(n_old, dst, src))
        with replaced(self.folder / MANIFEST, "w") as fh:
            json.dump(record, fh)
        self._adopt(plan, n_new, record["generation"], False)
        self._patch, self._committed = (n_old, dst, src), record

    def apply_patch(self) -> None:
        """Apply the committed deletion's patch in every part file: the moves,
        zeros over the removed rows in the tail, synced; a manifest without the
        moves; zeros over the tail ``[n, end)`` (the moved rows' old copies),
        synced."""
        if self._patch is None:
            return
        end, dst, src = self._patch
        maps = [self._maps[part] for part in self.parts]
        if dst.size:
            tail = np.arange(self.n, end, dtype=np.int64)
            gone = tail[~np.isin(tail, src)]
            for rows in maps:
                _move_rows(rows, dst, src, gone)
            self._sync_parts()
            self._drop_moves(end)
        for rows in maps:
            rows[self.n : min(end, rows.shape[0])] = 0
        self._sync_parts()
        self._patch = None

    def _sync_parts(self) -> None:
        """Make the committed parts' written rows durable."""
        jobs = [(self.path(info["gen"], part),) for part, info in self.parts.items()]
        _in_parallel(_fsync_file, jobs)

    def _drop_moves(self, end: int) -> None:
        """Commit the last record again, its patch's moves applied: only the
        rows ``[n, end)`` to zero remain listed."""
        body = {k: v for k, v in self._committed.items() if k != "checksum"}
        body["generation"] = self.generation + 1
        body["patch"] = {"end": int(end), "dst": "", "src": ""}
        record = {**body, "checksum": _checksum(body)}
        with replaced(self.folder / MANIFEST, "w") as fh:
            json.dump(record, fh)
        self.generation, self._committed = record["generation"], record
        self._patch = (end, np.empty(0, np.int64), np.empty(0, np.int64))
        os.pwrite(self._lock_fd, f"{self.generation:<20d}\n".encode(), 0)

    def _record(self, meta: dict, arrays: dict, plan: dict, n: int, patch=None) -> dict:
        body = {
            "format": FORMAT,
            "version": VERSION,
            "generation": self.generation + 1,
            "n": int(n),
            "next_seq": int(plan["order"].get("next_seq", self.next_seq)),
            "store": meta,
            "parts": {
                part: {
                    "gen": int(p["gen"]),
                    "dtype": p["map"].dtype.str,
                    "width": self._width(part),
                    "blocksum": int(p["blocksum"]),
                }
                for part, p in plan.items()
            },
            "arrays": {
                name: {
                    "dtype": np.asarray(a).dtype.str,
                    "shape": list(np.shape(a)),
                    "data": _b64(a),
                }
                for name, a in arrays.items()
                if name in SMALL_ARRAYS
            },
        }
        if patch is not None:
            end, dst, src = patch
            body["patch"] = {"end": int(end), "dst": _b64(dst), "src": _b64(src)}
        return {**body, "checksum": _checksum(body)}

    def _adopt(self, plan: dict, n: int, generation: int, removal: bool) -> None:
        """After the commit: the new parts are the current ones; the superseded
        files are zeroed and deleted now, or, after a ``removal`` (a new vectors
        generation), by the store's :meth:`retire` with the removed rows."""
        old = {part: info["gen"] for part, info in self.parts.items()}
        for part, p in plan.items():
            self.parts[part] = {
                "gen": int(p["gen"]),
                "dtype": p["map"].dtype.str,
                "width": self._width(part),
                "blocksum": int(p["blocksum"]),
            }
            self._maps[part] = p["map"]
            self._staged.pop(part, None)
            if part in old and old[part] != p["gen"]:
                row_bytes = self._width(part) * p["map"].dtype.itemsize
                self._superseded.append((part, old[part], row_bytes))
        self.n, self.generation = int(n), int(generation)
        self.next_seq = int(plan["order"].get("next_seq", self.next_seq))
        self._patch = None
        os.pwrite(self._lock_fd, f"{generation:<20d}\n".encode(), 0)
        if removal:
            return  # the store's remove retires them, rows known
        try:  # done or not, the commit stands; open() purges what is left
            self.retire()
        except OSError:
            pass

    # -- opening -------------------------------------------------------------------
    @classmethod
    def open(
        cls, folder, *, verify_vectors: bool = True
    ) -> tuple[DiskVectors, dict, dict, np.ndarray, int]:
        """``(disk, meta, arrays, rows, n)`` of a folder's committed state.

        ``arrays`` holds the per-row parts (rows ``[0, n)``, mapped) and the small
        arrays; ``rows`` maps the vectors with their capacity. Every part's size
        and checksum is checked (the vectors' unless ``verify_vectors=False``),
        after a deletion's listed patch is applied again, then
        files the manifest does not name are zeroed and deleted.

        Raises
        ------
        FileNotFoundError
            No committed memory in ``folder``.
        ModelFileError
            A damaged, truncated, linked or out-of-date part or manifest.
        StorageInUse
            Another live store holds the folder.
        """
        folder = Path(folder)
        info = _lstat(folder)
        if info is None or not stat.S_ISDIR(info.st_mode):
            if info is not None and stat.S_ISLNK(info.st_mode):
                raise ModelFileError(folder, "store folder", "is a link")
            raise FileNotFoundError(f"No committed memory in {str(folder)!r}.")
        if _lstat(folder / MANIFEST) is None and _lstat(folder / STATE) is None:
            raise FileNotFoundError(f"No committed memory in {str(folder)!r}.")
        dtype = np.float32
        disk = cls(folder, 1, dtype)
        try:
            meta, arrays = disk._load(verify_vectors)
            disk.purge()
        except BaseException:
            disk._release()
            raise
        rows = disk._maps["vectors"]
        return disk, meta, arrays, rows, disk.n

    def _load(self, verify_vectors: bool) -> tuple[dict, dict]:
        """Read, check and map the committed state (converting a first-format
        folder); ``(meta, arrays)``."""
        if _lstat(self.folder / MANIFEST) is None:
            return self._convert_legacy()
        record = self._read_manifest()
        meta = record["store"]
        self.n_features = int(meta["n_features"])
        self.dtype = np.dtype(record["parts"]["vectors"]["dtype"])
        self.n, self.generation = record["n"], record["generation"]
        self.next_seq = record["next_seq"]
        self._check_high_water()
        end, dst, src = _patch_of(self.folder / MANIFEST, record)
        arrays = {}
        for part, info in record["parts"].items():
            rows = self._map_committed(part, info, end if dst.size else self.n)
            if dst.size:  # a deletion's moves, applied again (idempotent)
                _move_rows(rows, dst, src, [])
            if part != "vectors" or verify_vectors:
                self._verify(part, info, rows)
            if part != "vectors":
                arrays[part] = rows[: self.n]
        if end > self.n:  # finish the deletion: moves dropped, the tail zeroed
            self._patch, self._committed = (end, dst, src), record
            if dst.size:
                self._sync_parts()
                self._drop_moves(end)
            self.apply_patch()
        for name, spec in record["arrays"].items():
            arrays[name] = _small_array(self.folder / MANIFEST, name, spec)
        self._next_gen = max(i["gen"] for i in self.parts.values()) + 1
        return meta, arrays

    def _map_committed(self, part: str, info: dict, need: int):
        """Map a committed part, refusing a missing or short file (``need``
        rows at least)."""
        path = self.path(info["gen"], part)
        st = _lstat(path)
        if st is None or not stat.S_ISREG(st.st_mode):
            what = "is missing" if st is None else "is not a regular file"
            raise ModelFileError(path, part, f"{what} (named by {MANIFEST})")
        dtype = np.dtype(info["dtype"])
        row_bytes = info["width"] * dtype.itemsize
        if st.st_size < need * row_bytes or st.st_size % row_bytes:
            raise ModelFileError(
                path,
                part,
                f"{st.st_size} bytes cannot hold the {need} committed rows of "
                f"{row_bytes} bytes (truncated)",
            )
        cap = max(st.st_size // row_bytes, self.n)
        rows = self._map(part, info["gen"], dtype, info["width"], cap)
        self.parts[part] = dict(info)
        self._maps[part] = rows
        return rows

    def _verify(self, part: str, info: dict, rows: np.ndarray) -> None:
        """Refuse a part whose committed rows do not match their checksum."""
        if _blocksum(rows, self.n) != info["blocksum"]:
            raise ModelFileError(
                self.path(info["gen"], part),
                part,
                "its committed rows do not match the manifest's checksum",
            )

    def _read_manifest(self) -> dict:
        """The manifest, checked field by field before anything uses it."""
        path = self.folder / MANIFEST
        fd = _open_file(path, os.O_RDONLY, MANIFEST)
        try:
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    raise ModelFileError(path, MANIFEST, "is not a regular file")
                raw = fh.read(_MAX_MANIFEST_BYTES + 1)
            if len(raw) > _MAX_MANIFEST_BYTES:
                raise ModelFileError(path, MANIFEST, "too large")
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelFileError(path, MANIFEST, f"unreadable ({exc})") from exc
        return _checked_record(path, record)

    def _check_high_water(self) -> None:
        """Refuse a manifest older than the last commit the lock file records."""
        try:
            mark = int(os.pread(self._lock_fd, 32, 0).decode() or 0)
        except (ValueError, UnicodeDecodeError):
            mark = 0
        if self.generation < mark:
            raise ModelFileError(
                self.folder / MANIFEST,
                f"{MANIFEST}: generation",
                f"commit {self.generation} is older than the folder's last commit "
                f"({mark}): an older manifest was put back over a newer one",
            )

    def _convert_legacy(self) -> tuple[dict, dict]:
        """A first-format folder (``state.npz``): its parts written out and
        committed in this format."""
        path = self.folder / STATE
        fd = _open_file(path, os.O_RDONLY, STATE)
        try:
            with os.fdopen(fd, "rb") as fh, np.load(fh, allow_pickle=False) as data:
                record = json.loads(str(data["__meta__"]))
                arrays = {k: data[k] for k in data.files if k != "__meta__"}
            meta = record["store"]
            gen, n = record["vectors"]["gen"], record["vectors"]["n"]
            width = meta["n_features"]
            dtype = {"float32": "<f4", "float16": "<f2"}[
                meta.get("storage_dtype", "float32")
            ]
        except (ValueError, KeyError, TypeError, OSError, EOFError, BadZipFile) as exc:
            raise ModelFileError(path, STATE, f"unreadable ({exc!r})") from exc
        for field, value, limit in (
            ("vectors.gen", gen, _MAX_GEN),
            ("vectors.n", n, 1 << 62),
            ("store.n_features", width, _MAX_WIDTH),
        ):
            if not _is_count(value, limit) or (
                field == "store.n_features" and not value
            ):
                raise ModelFileError(path, f"{STATE}: {field}", f"invalid ({value!r})")
        self.n_features, self.dtype = width, np.dtype(dtype)
        info = {"gen": gen, "dtype": self.dtype.str, "width": self.n_features}
        self.n = 0
        # the file must hold the n rows the state names (never grown into zeros)
        rows = self._map_committed("vectors", {**info, "blocksum": 0}, n)
        self.parts.pop("vectors")
        self._initial_gen, self._next_gen = gen, gen + 1
        bufs = [rows] + [arrays[p] for p in PARTS[1:] if p in arrays]
        for b in bufs[1:]:
            if b.shape[0] != n:
                raise ModelFileError(path, STATE, "per-row arrays of unequal lengths")
        try:  # the whole state checked before the first-format file goes
            check_state(meta, {**arrays, "embeddings": rows[:n]})
        except ValueError as exc:
            raise ModelFileError(path, STATE, str(exc)) from exc
        self.commit(meta, arrays, bufs, n)
        _zero_file(path)
        path.unlink()
        out = {p: self._maps[p][:n] for p in PARTS[1 : len(bufs)]}
        out.update({k: v for k, v in arrays.items() if k in SMALL_ARRAYS})
        return meta, out

    def purge(self) -> None:
        """Zero and delete our files the committed manifest does not name, and
        stale temporaries; refuse a link in place of one of our names."""
        keep = {self.path(i["gen"], p).name for p, i in self.parts.items()}
        keep |= {MANIFEST, LOCK}
        clean_stale_temporaries(self.folder / MANIFEST)
        clean_stale_temporaries(self.folder / STATE)
        for entry in os.scandir(self.folder):
            ours = entry.name in keep or _PART_FILE.fullmatch(entry.name)
            if not ours and entry.name != STATE:
                continue  # not skknn's: never touched
            if not entry.is_file(follow_symlinks=False):
                raise ModelFileError(
                    entry.path, entry.name, "is a link or not a regular file"
                )
            if entry.name not in keep:
                _zero_file(Path(entry.path))
                os.unlink(entry.path)
        fsync_folder(self.folder)

    def destroy(self) -> None:
        """Zero and delete every file of this store and its folder (never
        through a link; what is not skknn's is left)."""
        names = {MANIFEST, STATE}
        clean_stale_temporaries(self.folder / MANIFEST)
        for entry in os.scandir(self.folder):
            if entry.name != LOCK and entry.is_file(follow_symlinks=False):
                if entry.name in names or _PART_FILE.fullmatch(entry.name):
                    _zero_file(Path(entry.path))
                    os.unlink(entry.path)
        self._maps.clear()
        self._release()
        lock = self.folder / LOCK
        if _lstat(lock) is not None and not os.path.islink(lock):
            lock.unlink()
        try:
            self.folder.rmdir()
        except OSError:
            pass


def _lstat(path):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _is_count(value, limit: int = 1 << 62) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < limit


def _checked_record(path: Path, record) -> dict:
    """``record`` if it is a whole, self-consistent manifest; else ModelFileError."""

    def need(ok: bool, field: str, reason: str) -> None:
        if not ok:
            raise ModelFileError(path, f"{MANIFEST}: {field}", reason)

    need(isinstance(record, dict), "(record)", "not a JSON object")
    need(record.get("format") == FORMAT, "format", "not a skknn store manifest")
    need(record.get("version") == VERSION, "version", "an unknown format version")
    body = {k: v for k, v in record.items() if k != "checksum"}
    need(record.get("checksum") == _checksum(body), "checksum", "does not match")
    for field in ("generation", "n", "next_seq"):
        need(_is_count(record.get(field)), field, "must be an int >= 0")
    need(isinstance(record.get("store"), dict), "store", "must be an object")
    width = record["store"].get("n_features")
    need(_is_count(width, _MAX_WIDTH) and width >= 1, "store", "n_features")
    parts = record.get("parts")
    need(isinstance(parts, dict), "parts", "must be an object")
    need(set(REQUIRED_PARTS) <= set(parts) <= set(PARTS), "parts", "unexpected names")
    for part, info in parts.items():
        width = record["store"]["n_features"] if part == "vectors" else 1
        need(isinstance(info, dict), f"parts.{part}", "must be an object")
        need(
            _is_count(info.get("gen"), _MAX_GEN),
            f"parts.{part}.gen",
            f"must be an int in [0, {_MAX_GEN})",
        )
        allowed = _PART_DTYPES.get(part, _DTYPES)
        need(info.get("dtype") in allowed, f"parts.{part}.dtype", "not allowed")
        need(info.get("width") == width, f"parts.{part}.width", f"must be {width}")
        need(
            _is_count(info.get("blocksum"), 1 << 64),
            f"parts.{part}.blocksum",
            "not a checksum",
        )
    arrays = record.get("arrays")
    need(isinstance(arrays, dict), "arrays", "must be an object")
    need(set(arrays) <= set(SMALL_ARRAYS), "arrays", "unexpected names")
    return record


def _patch_of(path: Path, record: dict):
    """``(end, dst, src)`` of a manifest's deletion patch, checked: the moves
    take live rows of the tail ``[n, end)`` into rows below ``n``, each once
    (``end = n`` and no moves without one)."""
    n = record["n"]
    none = np.empty(0, np.int64)
    patch = record.get("patch")
    if patch is None:
        return n, none, none
    field = f"{MANIFEST}: patch"
    try:
        end = patch["end"]
        dst, src = (
            np.frombuffer(base64.b64decode(patch[k], validate=True), dtype="<i8")
            for k in ("dst", "src")
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(path, field, f"unreadable ({exc!r})") from exc
    ok = (
        _is_count(end)
        and end >= n
        and dst.shape == src.shape
        and dst.size <= end - n
        and bool(np.all((dst >= 0) & (dst < n)))
        and bool(np.all((src >= n) & (src < end)))
        and np.unique(dst).size == dst.size
        and np.unique(src).size == src.size
    )
    if not ok:
        raise ModelFileError(path, field, "moves out of range")
    return (
        int(end),
        np.sort(dst).astype(np.int64),
        src[np.argsort(dst)].astype(np.int64),
    )


def _small_array(path: Path, name: str, spec) -> np.ndarray:
    """A small array of the manifest, decoded and checked."""
    field = f"{MANIFEST}: arrays.{name}"
    try:
        dtype = np.dtype(spec["dtype"]) if spec["dtype"] in _DTYPES else None
        shape = tuple(spec["shape"])
        data = base64.b64decode(spec["data"], validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(path, field, f"unreadable ({exc!r})") from exc
    if dtype is None or not all(_is_count(s) for s in shape):
        raise ModelFileError(path, field, "bad dtype or shape")
    if len(data) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        raise ModelFileError(path, field, "its bytes do not match its shape")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def remove_store_folder(folder: Path) -> None:
    """Zero and delete an orphaned store folder (chosen by
    ``skknn/memory/folder.py``'s purge: no live store holds it)."""
    disk = DiskVectors(folder, 1, np.float32)
    disk.destroy()
