"""A store's vectors on disk: memory-mapped row files and a committed state.

One folder per store. ``vectors-<gen>.bin`` holds rows of the storage dtype (C
order, capacity rows); ``state.npz`` is the last committed state: the store's
description and per-row arrays (ids, labels, reliabilities, ...) and which
generation of the vectors, with how many rows, it describes. The RAM holds the
index and the per-row arrays; the vectors stay in the file (the OS caches pages).

Crash safety by versioned files. A commit writes ``state.npz`` to a temporary
file, syncs it and renames it over the old one: the rename is the commit point.

* ``add`` writes rows past the committed count (growing the file), syncs them,
  then commits: rows the committed state names are never written.
* ``remove`` writes the kept rows to a new generation file, syncs it, commits,
  and only then zeroes the removed rows in the old file and deletes it.

A process killed at any instant therefore leaves a committed state whose rows
are intact; :meth:`DiskVectors.open` maps it and deletes (zeroed) files no
committed state names.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
import weakref
from pathlib import Path

import numpy as np

from skknn._atomic import fsync_folder, replaced

STATE = "state.npz"
LOCK = ".lock"
# Bytes zeroed or copied per step: bounded working memory whatever the memory size.
_CHUNK_BYTES = 64 << 20


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
    skknn._disk.StorageInUse: The memory in '...' is in use by another store ...
    """


def _try_lock(folder: Path) -> int | None:
    """An exclusive lock on ``folder`` (its fd), or None if held elsewhere."""
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _zero_file(path: Path, rows=None, row_bytes: int = 0) -> None:
    """Overwrite ``rows`` of a row file with zeros (all of it when None), synced."""
    with open(path, "r+b") as fh:
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


class DiskVectors:
    """The vector files of one store, in its own folder (see the module doc)."""

    def __init__(self, folder: Path, n_features: int, dtype, *, gen: int = 0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
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
        self.gen = gen

    @classmethod
    def new(cls, storage_path, n_features: int, dtype) -> DiskVectors:
        """A fresh folder for one store inside ``storage_path``."""
        return cls(Path(storage_path) / uuid.uuid4().hex, n_features, dtype)

    @property
    def row_bytes(self) -> int:
        return self.n_features * self.dtype.itemsize

    def path(self, gen: int) -> Path:
        return self.folder / f"vectors-{gen}.bin"

    # -- rows -------------------------------------------------------------------
    def buffer(self, cap: int, gen: int | None = None) -> np.ndarray:
        """Rows ``[0, cap)`` of a generation's file, memory-mapped read-write; the
        file grows (with zeros) to hold them, existing rows unchanged."""
        gen = self.gen if gen is None else gen
        path = self.path(gen)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if os.fstat(fd).st_size < cap * self.row_bytes:
                os.ftruncate(fd, cap * self.row_bytes)
        finally:
            os.close(fd)
        if cap == 0:
            return np.empty((0, self.n_features), dtype=self.dtype)
        return np.memmap(
            path, dtype=self.dtype, mode="r+", shape=(cap, self.n_features)
        )

    def sync(self, rows: np.ndarray) -> None:
        """Flush written rows to the disk (msync)."""
        if isinstance(rows, np.memmap):
            rows.flush()

    def write_generation(self, src: np.ndarray, runs, n_new: int):
        """``(gen, rows)``: a new generation file holding the kept ``runs`` of
        ``src``, in order, synced; the current file is not touched."""
        gen = self.gen + 1
        dst = self.buffer(max(n_new, 1), gen)
        step = max(1, _CHUNK_BYTES // max(self.row_bytes, 1))
        pos = 0
        for s, e in runs:
            for c in range(s, e, step):
                stop = min(c + step, e)
                dst[pos : pos + stop - c] = src[c:stop]
                pos += stop - c
        self.sync(dst)
        return gen, dst

    def discard(self, gen: int) -> None:
        """Delete a generation no committed state names (after a failed edit)."""
        path = self.path(gen)
        if path.exists():
            _zero_file(path)
            path.unlink()

    def retire(self, gen: int, removed_rows) -> None:
        """Zero the removed rows of a superseded generation, then delete it, so
        unlearned vectors' bytes leave the folder."""
        path = self.path(gen)
        if path.exists():
            _zero_file(path, removed_rows, self.row_bytes)
            path.unlink()
        fsync_folder(self.folder)

    # -- the committed state --------------------------------------------------------
    def commit(self, meta: dict, arrays: dict, gen: int, n: int) -> None:
        """Make ``(meta, arrays)`` with rows ``[0, n)`` of generation ``gen`` the
        committed state: written aside, synced, renamed over the old one."""
        record = {"store": meta, "vectors": {"gen": int(gen), "n": int(n)}}
        with replaced(self.folder / STATE) as fh:
            np.savez(fh, __meta__=np.array(json.dumps(record)), **arrays)

    @classmethod
    def open(cls, folder) -> tuple[DiskVectors, dict, dict, np.ndarray, int]:
        """``(disk, meta, arrays, rows, n)`` of a folder's committed state; files
        it does not name (an edit cut short) are zeroed and deleted."""
        folder = Path(folder)
        state = folder / STATE
        if not state.is_file():
            raise FileNotFoundError(f"No committed memory in {str(folder)!r}.")
        with np.load(state, allow_pickle=False) as data:
            record = json.loads(str(data["__meta__"]))
            arrays = {k: data[k] for k in data.files if k != "__meta__"}
        meta = record["store"]
        gen, n = int(record["vectors"]["gen"]), int(record["vectors"]["n"])
        dtype = {"float32": np.float32, "float16": np.float16}[
            meta.get("storage_dtype", "float32")
        ]
        disk = cls(folder, meta["n_features"], dtype, gen=gen)
        size = disk.path(gen).stat().st_size if disk.path(gen).exists() else -1
        if size < n * disk.row_bytes:
            raise ValueError(
                f"{str(disk.path(gen))!r} holds fewer than the {n} committed rows."
            )
        disk.purge()
        rows = disk.buffer(max(size // disk.row_bytes, n))
        return disk, meta, arrays, rows, n

    def purge(self) -> None:
        """Zero and delete what the committed state does not name."""
        keep = {self.path(self.gen).name, STATE, LOCK}
        for path in self.folder.iterdir():
            if path.name in keep:
                continue
            if path.name.startswith("vectors-"):
                _zero_file(path)
            path.unlink()

    def destroy(self) -> None:
        """Zero and delete every file of this store and its folder."""
        for path in self.folder.iterdir():
            if path.name.startswith("vectors-"):
                _zero_file(path)
            if path.name != LOCK:
                path.unlink()
        self._release()
        (self.folder / LOCK).unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass


def orphans(storage_path, keep: set[str]):
    """Store folders under ``storage_path`` that no live store holds and that are
    not in ``keep``: left by stores that were replaced or garbage-collected."""
    root = Path(storage_path)
    if not root.is_dir():
        return []
    out = []
    for folder in root.iterdir():
        if not folder.is_dir() or folder.name in keep or not (folder / LOCK).exists():
            continue
        fd = _try_lock(folder)
        if fd is not None:
            os.close(fd)
            out.append(folder)
    return out


def remove_store_folder(folder: Path) -> None:
    """Zero and delete an orphaned store folder (see :func:`orphans`)."""
    disk = DiskVectors(folder, 1, np.float32)
    disk.destroy()
