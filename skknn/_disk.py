"""A store's memory on disk: memory-mapped per-row files and a manifest.

One folder per store, holding only these names (nothing else is read, written
or deleted, and nothing is followed through a link: every file is opened with
``O_NOFOLLOW`` and checked with ``lstat``, and a link in place of one of these
names makes the folder refused with :class:`~skknn.ModelFileError`):

``vectors-<g>.bin``
    The pre-processed vectors: rows of the storage dtype in C order, with spare
    capacity past the committed rows (zeros, or rows of an uncommitted add).
``labels-<g>.bin``, ``sample_ids-<g>.bin``, ``reliability-<g>.bin``,
``excluded-<g>.bin``, ``sample_weight-<g>.bin``, ``norms-<g>.bin``
    The per-row arrays ("parts"), one raw file each, laid out as the vectors.
``manifest.json``
    The commit record: the store's description, the committed row count ``n``,
    a commit ``generation`` (+1 per commit), for every part the generation
    ``<g>`` of its file, its dtype, width and the CRC-32 of its committed bytes
    (rows ``[0, n)``), the small arrays (centre, taxonomy paths) and a CRC-32
    of the record itself.
``.lock``
    flock'ed by the one live store of the folder; holds the last commit
    generation (a high-water mark: a manifest older than it was copied back
    over a newer one, and is refused).
``.manifest.json.<8 random>.tmp``
    A manifest being written (:func:`skknn._atomic.replaced`).

The commit protocol. The manifest is written to a temporary file, synced and
renamed over the old one: the rename is the commit point. Before it:

* an append (``add``) writes the new rows past the committed count into each
  part's file (the memory maps the store writes into), syncs them, and extends
  each part's CRC by the new rows' bytes: O(rows added), whatever ``n`` is.
  Rows the committed manifest names are never written.
* a part whose committed rows change (``remove`` compacts every part; a new
  class re-encodes the labels; ``set_reliability``) is written whole to a new
  generation file, synced, the folder synced; the old file is untouched.

After the rename the files the old manifest named and the new one does not are
zeroed (the removed rows of the vectors, the whole of a small part) and deleted.

A process killed at any instant therefore leaves the old manifest with every
row it names intact, or the new one with every row it names written and synced:

* killed before the rename: the old commit; rows written past its ``n`` and new
  generation files are not named by it; a temporary manifest may remain.
* killed after the rename: the new commit; superseded files may remain.

:meth:`DiskVectors.open` maps the committed parts, checks each file's size and
the CRC of its committed rows (the vectors' too, at about 4 GB/s, unless
``verify_vectors=False``: reopening reads them all anyway, to build the index),
the manifest's own CRC and its generation against the high-water mark, and then
zeroes and deletes what the manifest does not name (superseded or uncommitted
generations, and stale temporaries no live writer holds).

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

from skknn._atomic import clean_stale_temporaries, fsync_folder, replaced
from skknn.exceptions import ModelFileError

MANIFEST = "manifest.json"
STATE = "state.npz"  # the first format's committed state
LOCK = ".lock"
FORMAT, VERSION = "skknn-store", 2
# The per-row parts, in the order of the store's buffers.
PARTS = (
    "vectors",
    "labels",
    "sample_ids",
    "reliability",
    "excluded",
    "sample_weight",
    "norms",
)
REQUIRED_PARTS = PARTS[:6]
SMALL_ARRAYS = ("mean", "taxonomy_paths")
_PART_FILE = re.compile(r"(" + "|".join(PARTS) + r")-(\d{1,18})\.bin")
_DTYPES = {"|b1", "<i4", "<i8", "<f2", "<f4", "<f8"}
_MAX_MANIFEST_BYTES = 64 << 20
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# Bytes zeroed or copied per step: bounded working memory whatever the memory size.
_CHUNK_BYTES = 64 << 20
_COPY_BYTES = 4 << 20  # a copy's step: its CRC reads it from the cache
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
    skknn._disk.StorageInUse: The memory in '...' is in use by another store ...
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


def _write_runs(fd: int, src: np.ndarray, runs, row_bytes: int) -> int:
    """Write the ``runs`` of ``src``'s rows one after another from the start of
    ``fd``'s file; their CRC-32, taken on each chunk while it is in the cache.
    (``pwrite`` rather than a fresh memory map: no page fault per page.)"""
    step = max(1, _COPY_BYTES // max(row_bytes, 1))
    offset, crc = 0, 0
    for s, e in runs:
        for c in range(s, e, step):
            chunk = np.ascontiguousarray(src[c : min(c + step, e)])
            view = memoryview(chunk.reshape(-1).view(np.uint8))
            crc = zlib.crc32(view, crc)
            while view:
                done = os.pwrite(fd, view, offset)
                offset += done
                view = view[done:]
    return crc


def _crc(rows: np.ndarray, crc: int = 0) -> int:
    """CRC-32 of ``rows``' bytes, continuing ``crc`` (in bounded chunks)."""
    flat = np.ascontiguousarray(rows).reshape(-1).view(np.uint8)
    for s in range(0, flat.size, _CHUNK_BYTES):
        crc = zlib.crc32(flat[s : s + _CHUNK_BYTES], crc)
    return crc


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
        self.parts: dict[str, dict] = {}  # committed: gen, dtype, width, crc32
        self._maps: dict[str, np.ndarray] = {}  # each part's file, mapped
        self._staged: dict[str, dict] = {}  # new generations for the next commit
        self._superseded: list[tuple] = []  # (part, gen, row bytes)
        self._next_gen = gen + 1
        self._initial_gen = gen

    @classmethod
    def new(cls, storage_path, n_features: int, dtype) -> DiskVectors:
        """A fresh folder for one store inside ``storage_path``."""
        return cls(Path(storage_path) / uuid.uuid4().hex, n_features, dtype)

    @property
    def row_bytes(self) -> int:
        return self.n_features * self.dtype.itemsize

    @property
    def gen(self) -> int:
        """The generation of the vectors' file."""
        info = self.parts.get("vectors")
        return self._initial_gen if info is None else info["gen"]

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
        rows._skknn_part = (part, int(gen))
        return rows

    def _width(self, part: str) -> int:
        return self.n_features if part == "vectors" else 1

    def buffers(self, bufs: list, cap: int) -> list[np.ndarray]:
        """Every part's file mapped with at least ``cap`` rows, for an append.

        ``bufs`` are the store's buffers (their dtypes name a new part's). The
        committed rows are the store's own (both are the committed state), so
        the store writes its new rows into these maps.
        """
        out = []
        for part, buf in zip(PARTS, bufs):
            cur = self._maps.get(part)
            if cur is not None and cur.shape[0] >= cap:
                out.append(cur)
                continue
            info = self.parts.get(part)
            gen = self._initial_gen if info is None else info["gen"]
            dtype = buf.dtype if info is None else np.dtype(info["dtype"])
            self._maps[part] = self._map(part, gen, dtype, self._width(part), cap)
            out.append(self._maps[part])
        return out

    def mapped(self, count: int) -> list[np.ndarray]:
        """The committed parts' maps, in the store's buffer order."""
        return [self._maps[part] for part in PARTS[:count]]

    def sync(self, rows: np.ndarray) -> None:
        """Flush written rows to the disk (msync)."""
        if isinstance(rows, np.memmap) and rows.shape[0]:
            rows.flush()

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
        self._staged[part] = {"gen": gen, "map": None, "crc32": 0, "sync": path}
        try:
            crc = _write_runs(fd, src, runs, self._width(part) * src.dtype.itemsize)
        finally:
            os.close(fd)
        dst = self._map(part, gen, src.dtype, self._width(part), cap)
        self._staged[part].update(map=dst, crc32=crc)
        return dst

    def write_generation(self, src: np.ndarray, runs, n_new: int):
        """``(gen, rows)``: a new generation of the vectors holding the kept
        ``runs`` of ``src``, synced, for the next commit."""
        rows = self.stage("vectors", src, runs, n_new)
        return self._staged["vectors"]["gen"], rows

    def discard(self, gen: int | None = None) -> None:
        """Zero and delete the generations staged for a commit that failed."""
        for part, staged in list(self._staged.items()):
            path = self.path(staged["gen"], part)
            if os.path.lexists(path):
                _zero_file(path)
                path.unlink()
        self._staged.clear()

    def retire(self, gen: int | None = None, removed_rows=None) -> None:
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
    def commit(self, meta: dict, arrays: dict, bufs: list, n: int) -> None:
        """Make ``meta``, the small ``arrays`` and rows ``[0, n)`` of ``bufs``
        (the store's buffers, in :data:`PARTS` order) the committed state."""
        removal = "vectors" in self._staged
        try:
            plan = {part: self._plan(part, b, n) for part, b in zip(PARTS, bufs)}
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

    def _plan(self, part: str, buf: np.ndarray, n: int) -> dict:
        """How ``part`` reaches the commit: its rows appended to the committed
        file (synced, CRC extended), or a new generation file."""
        staged = self._staged.get(part)
        if staged is not None and buf is staged["map"]:
            return {**staged, "staged": True}
        cur, info = self._maps.get(part), self.parts.get(part)
        base_n = 0 if info is None else self.n
        if cur is not None and n >= base_n and n <= cur.shape[0]:
            same = getattr(buf, "_skknn_part", None) == cur._skknn_part
            if not same and part != "vectors" and buf.dtype == cur.dtype:
                # a copy the store made (set_reliability): unchanged committed rows
                same = _same_bytes(buf[:base_n], cur[:base_n])
                if same:
                    cur[base_n:n] = buf[base_n:n]
            if same:
                gen = cur._skknn_part[1]
                sync = self.path(gen, part) if n > base_n or info is None else None
                crc = _crc(cur[base_n:n], 0 if info is None else info["crc32"])
                return {"gen": gen, "map": cur, "crc32": crc, "sync": sync}
        self.stage(part, buf, [(0, n)], n, cap=buf.shape[0])
        return {**self._staged[part], "staged": True}

    def _record(self, meta: dict, arrays: dict, plan: dict, n: int) -> dict:
        body = {
            "format": FORMAT,
            "version": VERSION,
            "generation": self.generation + 1,
            "n": int(n),
            "store": meta,
            "parts": {
                part: {
                    "gen": int(p["gen"]),
                    "dtype": p["map"].dtype.str,
                    "width": self._width(part),
                    "crc32": int(p["crc32"]),
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
                "crc32": int(p["crc32"]),
            }
            self._maps[part] = p["map"]
            self._staged.pop(part, None)
            if part in old and old[part] != p["gen"]:
                row_bytes = self._width(part) * p["map"].dtype.itemsize
                self._superseded.append((part, old[part], row_bytes))
        self.n, self.generation = int(n), int(generation)
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
        and CRC is checked (the vectors' unless ``verify_vectors=False``), then
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
        self._check_high_water()
        arrays = {}
        for part, info in record["parts"].items():
            rows = self._map_committed(part, info, verify_vectors)
            if part != "vectors":
                arrays[part] = rows[: self.n]
        for name, spec in record["arrays"].items():
            arrays[name] = _small_array(self.folder / MANIFEST, name, spec)
        self._next_gen = max(i["gen"] for i in self.parts.values()) + 1
        return meta, arrays

    def _map_committed(self, part: str, info: dict, verify_vectors: bool):
        """Map a committed part, refusing a missing, short or corrupt file."""
        path = self.path(info["gen"], part)
        st = _lstat(path)
        if st is None or not stat.S_ISREG(st.st_mode):
            what = "is missing" if st is None else "is not a regular file"
            raise ModelFileError(path, part, f"{what} (named by {MANIFEST})")
        dtype = np.dtype(info["dtype"])
        row_bytes = info["width"] * dtype.itemsize
        if st.st_size < self.n * row_bytes or st.st_size % row_bytes:
            raise ModelFileError(
                path,
                part,
                f"{st.st_size} bytes cannot hold the {self.n} committed rows of "
                f"{row_bytes} bytes (truncated)",
            )
        cap = max(st.st_size // row_bytes, self.n)
        rows = self._map(part, info["gen"], dtype, info["width"], cap)
        if (part != "vectors" or verify_vectors) and _crc(rows[: self.n]) != info[
            "crc32"
        ]:
            raise ModelFileError(
                path, part, "its committed rows do not match the manifest's CRC-32"
            )
        self.parts[part] = dict(info)
        self._maps[part] = rows
        return rows

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
            gen, n = int(record["vectors"]["gen"]), int(record["vectors"]["n"])
            self.n_features = int(meta["n_features"])
            self.dtype = np.dtype(meta.get("storage_dtype", "float32"))
        except (ValueError, KeyError, TypeError, OSError, EOFError, BadZipFile) as exc:
            raise ModelFileError(path, STATE, f"unreadable ({exc!r})") from exc
        info = {"gen": gen, "dtype": self.dtype.str, "width": self.n_features}
        self.n = 0
        rows = self._map_committed("vectors", {**info, "crc32": _crc([])}, False)
        self.parts.pop("vectors")
        self._initial_gen, self._next_gen = gen, gen + 1
        bufs = [rows] + [arrays[p] for p in PARTS[1:] if p in arrays]
        for b in bufs[1:]:
            if b.shape[0] != n:
                raise ModelFileError(path, STATE, "per-row arrays of unequal lengths")
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
    for field in ("generation", "n"):
        need(_is_count(record.get(field)), field, "must be an int >= 0")
    need(isinstance(record.get("store"), dict), "store", "must be an object")
    need(_is_count(record["store"].get("n_features"), 1 << 20), "store", "n_features")
    parts = record.get("parts")
    need(isinstance(parts, dict), "parts", "must be an object")
    need(set(REQUIRED_PARTS) <= set(parts) <= set(PARTS), "parts", "unexpected names")
    for part, info in parts.items():
        width = record["store"]["n_features"] if part == "vectors" else 1
        need(isinstance(info, dict), f"parts.{part}", "must be an object")
        need(_is_count(info.get("gen")), f"parts.{part}.gen", "must be an int >= 0")
        need(info.get("dtype") in _DTYPES, f"parts.{part}.dtype", "not allowed")
        need(info.get("width") == width, f"parts.{part}.width", f"must be {width}")
        need(_is_count(info.get("crc32"), 1 << 32), f"parts.{part}.crc32", "not a CRC")
    arrays = record.get("arrays")
    need(isinstance(arrays, dict), "arrays", "must be an object")
    need(set(arrays) <= set(SMALL_ARRAYS), "arrays", "unexpected names")
    return record


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


def orphans(storage_path, keep: set[str]):
    """Store folders under ``storage_path`` that no live store holds and that are
    not in ``keep``: left by stores that were replaced or garbage-collected.
    Links are never followed."""
    root = Path(storage_path)
    if not root.is_dir():
        return []
    out = []
    for entry in os.scandir(root):
        folder = Path(entry.path)
        if not entry.is_dir(follow_symlinks=False) or entry.name in keep:
            continue
        lock = _lstat(folder / LOCK)
        if lock is None or not stat.S_ISREG(lock.st_mode):
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
