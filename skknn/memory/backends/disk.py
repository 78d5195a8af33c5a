"""The on-disk row backend: the memory's per-row arrays as memory-mapped files.

Every per-row array is a segment file of its own, mapped with the vectors'
capacity; the manifest names the committed state, and every edit is committed
crash-safely by :class:`~skknn.memory.segments.DiskVectors`, which owns the
files. An add writes past the committed rows; a deletion moves the last live
rows into the removed ones (a patch, O(removed rows) bytes) and their sequence
numbers keep the memory order; one too large for a patch writes new
generation files.
"""

from __future__ import annotations

import numpy as np

from skknn.memory.engines import engine_rows
from skknn.memory.rows import compact_inplace, kept_runs
from skknn.memory.segments import DiskVectors


class DiskRows:
    """Per-row arrays in memory-mapped files (:class:`~skknn.memory.protocols.
    RowStorage`).

    Parameters
    ----------
    disk : DiskVectors
        The memory's folder of segment files, opened or new.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from skknn.memory.backends.disk import DiskRows
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     rows = DiskRows.new(tmp, 2, np.float32)
    ...     bufs = rows.room([np.zeros((0, 2), np.float32)], 0, 4)
    ...     print(bufs[0].shape, rows.folder.parent == __import__("pathlib").Path(tmp))
    ...     rows.destroy()
    (4, 2) True
    """

    def __init__(self, disk: DiskVectors):
        self.disk = disk
        self._order = None  # (key, the rows in memory order or None)

    @classmethod
    def new(cls, storage_path, n_features: int, dtype) -> DiskRows:
        """A fresh folder for one memory inside ``storage_path``."""
        return cls(DiskVectors.new(storage_path, n_features, dtype))

    @classmethod
    def open(cls, folder, *, verify_vectors: bool = True):
        """``(rows, meta, arrays, n)``: the last commit of a memory's folder,
        each per-row array its file's map (``DiskVectors.open``)."""
        disk, meta, arrays, vectors, n = DiskVectors.open(
            folder, verify_vectors=verify_vectors
        )
        arrays["embeddings"] = vectors[:n]
        arrays.pop("order", None)
        return cls(disk), meta, arrays, n

    @property
    def folder(self):
        """The memory's own sub-folder."""
        return self.disk.folder

    @property
    def n_parts(self) -> int:
        """How many per-row parts the folder's manifest names."""
        return len(self.disk.parts)

    def sequence(self, n: int) -> np.ndarray:
        """Each committed row's sequence number (a view): their memory order."""
        return self.disk.order(n)

    def room(
        self, bufs: list, n: int, cap: int, *, filled: int | None = None
    ) -> list[np.ndarray]:
        """Every part's file mapped with room for ``cap`` rows (in place, grown
        alike): an add writes its rows past the committed ones (``filled``:
        unused, the page cache holds the files)."""
        return self.disk.buffers(bufs, cap)

    def published(self, bufs: list) -> list[np.ndarray]:
        """The committed files' maps (re-encoded labels too)."""
        return self.disk.mapped(len(bufs))

    def order(self, n: int, key) -> np.ndarray | None:
        """The rows in memory order, or None while they lie in it (until a
        deletion moves rows: their sequence numbers say the order)."""
        if n < 2 or "order" not in self.disk.parts:
            return None
        if self._order is None or self._order[0] != (key, n):
            seq = self.disk.order(n)
            rows = None
            if not bool(np.all(seq[1:] > seq[:-1])):
                rows = np.argsort(seq, kind="stable")
            self._order = ((key, n), rows)
        return self._order[1]

    def commit(self, describe, bufs, n: int, *, removed=None) -> None:
        """The per-row ``bufs`` to their files (appended rows only, where the
        committed ones are unchanged) and ``describe()`` to the manifest; with
        ``removed``, the manifest only (the rows move afterwards)."""
        meta, small = describe()
        if removed is None:
            self.disk.commit(meta, small, bufs, n)
        else:
            self.disk.commit(meta, small, None, n, removed=removed)

    def remove(self, bufs: list, gone_rows, n_old: int, steps) -> None:
        """Remove by moving rows: the last live rows move into the removed ones
        below the new count, so a deletion writes O(removed rows) bytes whatever
        the memory's size. An index that keys by row searches the moved rows
        once they are moved; one that keys by id is edited first, on the kept
        rows in memory order, as in RAM. A deletion too large for one patch
        rewrites the files."""
        disk = self.disk
        if not disk.can_patch(gone_rows):
            return self._rewrite(bufs, gone_rows, n_old, steps)
        n_new = n_old - gone_rows.size
        if not steps.by_rows:  # before the commit: a failure changes nothing
            rows = self.order(n_old, steps.key)
            rows = np.arange(n_old) if rows is None else rows
            kept = rows[~np.isin(rows, gone_rows)]
            steps.edit_index(bufs[0][kept], bufs[2][kept])
        try:
            steps.commit(None, n_new, removed=gone_rows)
        except BaseException:
            if disk.n == n_old:  # not committed: the index takes them back
                if not steps.by_rows:
                    steps.restore_index()
                raise
            steps.removed(n_new)  # committed: the rows are gone
            raise
        steps.removed(n_new)
        disk.apply_patch()
        if steps.by_rows:  # rows moved: a GPU copy follows them
            steps.edit_index(bufs[0][:n_new], bufs[2][:n_new])

    def _rewrite(self, bufs: list, gone_rows, n_old: int, steps) -> None:
        """Remove with versioned files: the kept rows go to new generation files
        (the vectors', each per-row part's and the sequence numbers'), the
        commit switches to them, and only then are the removed rows zeroed in
        the old files and the files deleted."""
        disk = self.disk
        n_new = n_old - gone_rows.size
        runs = kept_runs(gone_rows, n_old)
        small = [compact_inplace(np.array(b[:n_old]), runs) for b in bufs[1:]]
        try:
            X_new = disk.stage("vectors", bufs[0], runs, n_new)
            seq = disk.stage("order", disk.order(n_old), runs, n_new)[:n_new]
            new = [X_new, *small]
            order = None if np.all(seq[1:] > seq[:-1]) else np.argsort(seq)
            steps.edit_index(*engine_rows(steps.engine, X_new, small[1], n_new, order))
        except BaseException:
            disk.discard()
            raise
        try:
            steps.commit(new, n_new)
        except BaseException:  # not committed: the index takes the old rows back
            steps.restore_index()
            disk.discard()
            raise
        steps.removed(n_new, disk.mapped(len(bufs)))
        disk.retire(removed_rows=gone_rows)

    def adopt(self, X: np.ndarray, n: int) -> np.ndarray:
        """``X`` streamed into a new vectors file (never whole in RAM)."""
        return self.disk.stage("vectors", X, [(0, n)], n)

    def check_picklable(self) -> None:
        """A memory on disk is not pickled."""
        raise TypeError(
            "A memory kept on disk (storage_path) is not pickled: the pickle "
            "would copy every vector through RAM, and two copies would share "
            "one folder. Save it with est.save(path) (streamed from the file) "
            "and read it with skknn.load(path, mmap=True), or reopen its "
            "folder with skknn.load(storage_path)."
        )

    def check_replaceable(self) -> None:
        """A memory on disk is rebuilt by fitting again."""
        raise ValueError(
            "replace_vectors works on a memory in RAM; a memory on disk "
            "(storage_path) is rebuilt by fitting again."
        )

    def destroy(self) -> None:
        """Zero and delete the memory's files."""
        self.disk.destroy()

    def close(self) -> None:
        """Let go of the folder's lock (a memory that failed to open)."""
        self.disk.close()
