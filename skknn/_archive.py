"""The model file's container: a zip of ``skknn.json`` and ``.npy`` members.

The lowest floor of skknn's files: it imports nothing of skknn's, so every
layer above (stores, shards, storage folders, estimators, ``io``) can use it
without a circle. It holds the one error for a bad file
(:class:`~skknn.exceptions.ModelFileError`, public in :mod:`skknn.exceptions`),
files replaced atomically, and the archive's members, headers and limits.
Everything read here is checked before memory is allocated for it: a file is
data from outside, possibly crafted.

* Only the members a version writes are accepted: ``skknn.json`` and
  ``arrays/<key>.npy`` with a plain key, each at most once, stored (never
  compressed: skknn writes none, so a compressed member can only be a bomb).
* A member's ``.npy`` header is read first (a few hundred bytes) and must
  describe exactly the bytes the member holds: a header claiming a huge shape
  is refused without allocating it.
* The JSON member is capped in size before it is read.
* A file is written aside, synced, renamed over the target and the rename made
  durable: a crash leaves the old file or the new one, never half of one
  (:func:`replaced`; also used by a disk memory's commits and a storage folder's
  record).
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no flock, and no stale temporaries are cleaned
    fcntl = None


# -- the error -------------------------------------------------------------------
class ModelFileError(ValueError):
    """A model file or storage folder that skknn refuses to read or write.

    Raised for damaged, hostile, swapped or out-of-date files and folders, for
    links and recorded paths that leave the folder, and for members or headers
    that claim more than the file can hold. A subclass of ``ValueError``, so code
    that caught ``ValueError`` keeps working.

    Parameters
    ----------
    path : str or path-like
        The file or folder at fault.
    part : str
        The part of it at fault: an archive member (``"arrays/memory/labels.npy"``),
        a field (``"estimator.json: memory"``), a folder entry.
    reason : str
        What is wrong, in words.

    Attributes
    ----------
    path : str
        The file or folder at fault.
    part : str
        The part of it at fault.

    Examples
    --------
    >>> import os, tempfile, skknn
    >>> path = os.path.join(tempfile.mkdtemp(), "not-a-model.skknn")
    >>> with open(path, "w") as fh:
    ...     _ = fh.write("hello")
    >>> try:
    ...     skknn.load(path)
    ... except skknn.ModelFileError as exc:
    ...     print(exc.part)
    zip archive
    """

    # Public as skknn.exceptions.ModelFileError (and skknn.ModelFileError): its
    # name in tracebacks and pickles, as before it was defined here.
    __module__ = "skknn.exceptions"

    def __init__(self, path, part: str, reason: str):
        self.path = os.fspath(path) if path is not None else None
        self.part = part
        self.reason = reason
        super().__init__(f"{self.path!r}, {part}: {reason}")

    def __reduce__(self):
        return type(self), (self.path, self.part, self.reason)


# -- files replaced atomically --------------------------------------------------
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


@contextmanager
def replaced(path, mode: str = "wb"):
    """A handle whose content replaces ``path`` when the block ends without an
    error (nothing changes otherwise).

    The file gets the permissions any new file of this process would get
    (``0o666`` less the umask, as joblib's), not mkstemp's private 0600. The
    temporary (``.<name>.<8 random>.tmp``) is flock'ed while it is written, so
    :func:`clean_stale_temporaries`, run first, deletes only those that writers
    killed mid-write left behind, never a live writer's.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    clean_stale_temporaries(path)
    fd, tmp = _locked_temporary(path, folder)
    try:
        os.chmod(tmp, 0o666 & ~umask())
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            if fcntl is not None:  # still locked: no cleaner takes it first
                os.replace(tmp, path)
        if fcntl is None:  # Windows renames no open file
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_folder(folder)


def _locked_temporary(path: Path, folder: Path) -> tuple[int, str]:
    """A fresh temporary for ``path``, flock'ed; retried if a cleaner deleted it
    between its creation and the lock (the cleaner locks before it deletes)."""
    for _ in range(16):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        if fcntl is None:
            return fd, tmp
        fcntl.flock(fd, fcntl.LOCK_EX)  # a cleaner holds it for an unlink at most
        try:
            if os.path.samestat(os.fstat(fd), os.lstat(tmp)):
                return fd, tmp
        except FileNotFoundError:
            pass
        os.close(fd)
    raise OSError(f"Could not create a temporary file beside {str(path)!r}.")


def temporary_pattern(name: str) -> re.Pattern:
    """The names :func:`replaced` gives the temporaries of a target ``name``."""
    return re.compile(r"\." + re.escape(name) + r"\.[a-z0-9_]{8}\.tmp")


def clean_stale_temporaries(path) -> list[str]:
    """Delete the temporaries of ``path`` that killed writers left; their names.

    Only names :func:`replaced` gives (:func:`temporary_pattern`), only regular
    files (never through a link), and only those whose lock can be taken: a
    live writer, in this process or another, holds the lock of its own.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if fcntl is None:
        return []
    pattern = temporary_pattern(path.name)
    try:
        names = [e.name for e in os.scandir(folder) if pattern.fullmatch(e.name)]
    except OSError:
        return []
    return [name for name in names if _delete_if_stale(folder / name)]


def _delete_if_stale(tmp: Path) -> bool:
    """Unlink ``tmp`` if it is a regular file no live writer holds."""
    try:
        info = os.lstat(tmp)
        if not stat.S_ISREG(info.st_mode):
            return False
        fd = os.open(tmp, os.O_RDONLY | _NOFOLLOW)
    except OSError:
        return False
    try:
        if not os.path.samestat(info, os.fstat(fd)):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # a live writer's
        if not os.path.samestat(info, os.lstat(tmp)):
            return False
        os.unlink(tmp)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def umask() -> int:
    """This process's umask, read without changing it where the OS allows
    (``os.umask`` can only be read by setting it, which races other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_folder(folder) -> None:
    """Make a rename or deletion in ``folder`` durable (POSIX; a no-op where
    folders cannot be opened, as on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- the archive -----------------------------------------------------------------
FORMAT = "skknn"
# 2: the memory is a self-contained store (classes, centre, vector lengths in it).
# 1 (skknn 0.1) still loads.
VERSION = 2
META = "skknn.json"

# Limits on what a file may claim, checked before anything is allocated.
MAX_META_BYTES = 64 << 20
MAX_MEMBERS = 4096
# Each segment starts with a letter, digit or underscore: "." and ".." never
# appear, and torch's dotted parameter names ("conv1.weight") do.
_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$")
# Array dtypes a file may hold: booleans, numbers and fixed-width strings.
_KINDS = set("biufcU")
_READ_CHUNK = 16 << 20


def labels_to_json(classes: np.ndarray) -> dict:
    """Class labels (numbers or strings) as JSON, with their dtype."""
    return {"values": classes.tolist(), "dtype": classes.dtype.str}


def labels_from_json(data: dict) -> np.ndarray:
    dtype = np.dtype(data["dtype"])
    if dtype.kind == "O":
        return np.asarray(data["values"], dtype=object)
    if dtype.kind not in _KINDS:
        raise ValueError(f"labels of dtype {dtype} cannot be read from a file")
    return np.asarray(data["values"], dtype=dtype)


def subtree(arrays: dict, prefix: str) -> dict:
    """The arrays under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


# -- writing ----------------------------------------------------------------------
class RowsInOrder:
    """The rows of a 2-d array taken in ``order``, gathered a block at a time
    when written: a memory on disk whose rows were moved by a removal is saved
    in memory order without copying every vector through RAM.

    Anything that needs an array gets one (``np.asarray`` gathers it whole).
    """

    # Bytes gathered per block while writing.
    BLOCK_BYTES = 16 << 20

    def __init__(self, base: np.ndarray, order: np.ndarray):
        self.base = base
        self.order = np.asarray(order, dtype=np.int64)

    @property
    def shape(self) -> tuple:
        return (self.order.size, *self.base.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    @property
    def ndim(self) -> int:
        return self.base.ndim

    def __len__(self) -> int:
        return self.order.size

    def __array__(self, dtype=None, copy=None):
        out = self.base[self.order]
        return out if dtype is None else out.astype(dtype)

    def spans(self):
        """``(start, stop)`` of the blocks the rows are gathered in."""
        row_bytes = max(1, self.base[:1].nbytes)
        step = max(1, self.BLOCK_BYTES // row_bytes)
        for start in range(0, self.order.size, step):
            yield start, min(start + step, self.order.size)

    def gather(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(self.base[self.order[start:stop]])


def _write_member(member, array) -> None:
    if isinstance(array, RowsInOrder):
        header = {
            "descr": np.lib.format.dtype_to_descr(array.dtype),
            "fortran_order": False,
            "shape": array.shape,
        }
        np.lib.format.write_array_header_1_0(member, header)
        for start, stop in array.spans():
            # one block alive at a time, written without a bytes copy
            member.write(memoryview(array.gather(start, stop)).cast("B"))
        return
    np.lib.format.write_array(member, array, allow_pickle=False)


def write_archive(path, meta: dict, arrays: dict) -> None:
    """Write ``meta`` and ``arrays`` to ``path`` atomically.

    The file gets the permissions any new file of this process would get
    (``0o666`` less the umask), and the rename is made durable
    (:func:`replaced`).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"Cannot save to {str(path)!r}: it is a folder. Give a file path, "
            f"e.g. {str(path / 'model.skknn')!r}."
        )
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Cannot save to {str(path)!r}: folder {str(folder)!r} does not exist."
        )
    for name in arrays:
        if not _KEY.match(name):
            raise ValueError(f"array name {name!r} cannot be stored")
    with replaced(path) as fh:
        with zipfile.ZipFile(
            fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True
        ) as zf:
            zf.writestr(META, json.dumps(meta, indent=1, sort_keys=True))
            for name, array in arrays.items():
                if not isinstance(array, RowsInOrder):
                    array = np.asarray(array)
                if array.dtype.kind == "O":
                    raise TypeError(
                        f"array {name!r} has object dtype; not storable safely."
                    )
                with zf.open(f"arrays/{name}.npy", "w", force_zip64=True) as member:
                    _write_member(member, array)


# -- reading ----------------------------------------------------------------------
def read_archive(path, mmap: bool = False) -> tuple[dict, dict]:
    """``(meta, arrays)`` of an archive written by :func:`write_archive`.

    No pickle anywhere; every member checked before it is read (see the module
    doc). With ``mmap``, the embeddings are memory-mapped read-only in place.
    Raises :class:`~skknn.exceptions.ModelFileError` for anything that is not a
    well-formed skknn file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No skknn model file at {str(path)!r}.")
    size = path.stat().st_size
    try:
        zf = zipfile.ZipFile(path)
    # NotImplementedError: a central directory naming a zip version zipfile
    # does not read ("zip file version 8.4", found by test_file_fuzz)
    except (
        zipfile.BadZipFile,
        OSError,
        ValueError,
        EOFError,
        NotImplementedError,
    ) as exc:
        raise ModelFileError(
            path, "zip archive", f"not a skknn model file (not a zip: {exc})"
        ) from exc
    with zf:
        infos = _checked_members(path, zf, size)
        meta = _read_meta(path, zf, infos.pop(META))
        arrays = {}
        for key, info in infos.items():
            if mmap and key.endswith("embeddings"):
                arrays[key] = _mapped_member(path, info)
            else:
                arrays[key] = _read_member(path, zf, info)
    return meta, arrays


def _checked_members(path: Path, zf: zipfile.ZipFile, size: int) -> dict:
    """``{META: info, key: info, ...}``, each member allowed and plausible."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise ModelFileError(path, "zip archive", f"{len(infos)} members; too many")
    out: dict = {}
    for info in infos:
        name = info.filename
        if name == META:
            key = META
        elif name.startswith("arrays/") and name.endswith(".npy"):
            key = name[len("arrays/") : -len(".npy")]
            if not _KEY.match(key):
                raise ModelFileError(path, name, "not a member skknn writes")
        else:
            raise ModelFileError(path, name, "not a member skknn writes")
        if key in out:
            raise ModelFileError(path, name, "appears twice in the archive")
        if info.compress_type != zipfile.ZIP_STORED:
            raise ModelFileError(
                path, name, "is compressed; skknn writes stored members only"
            )
        if info.file_size != info.compress_size or info.file_size > size:
            raise ModelFileError(
                path, name, f"claims {info.file_size} bytes in a {size}-byte file"
            )
        out[key] = info
    if META not in out:
        raise ModelFileError(path, META, "missing: not a skknn model file")
    return out


def _read_meta(path: Path, zf: zipfile.ZipFile, info) -> dict:
    if info.file_size > MAX_META_BYTES:
        raise ModelFileError(path, META, f"{info.file_size} bytes; too large")
    try:
        meta = json.loads(zf.read(info))
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
        raise ModelFileError(path, META, f"unreadable ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(path, META, "not a skknn model file")
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(path, META, f"invalid format version {version!r}")
    if version > VERSION:
        raise ModelFileError(
            path,
            META,
            f"written by a newer skknn (format version {version}); upgrade "
            "skknn to read it",
        )
    return meta


def _header(path: Path, name: str, fh, data_bytes: int, origin: int = 0):
    """``(shape, fortran, dtype, header_bytes)`` of a ``.npy`` stream whose
    member holds ``data_bytes`` bytes; refused unless they match exactly."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"npy format version {version}")
        header = fh.tell() - origin
    except (ValueError, EOFError, OSError, SyntaxError, TypeError) as exc:
        raise ModelFileError(path, name, f"not a .npy array ({exc})") from exc
    if dtype.hasobject or dtype.kind not in _KINDS:
        raise ModelFileError(path, name, f"dtype {dtype} is not stored by skknn")
    if any(s < 0 for s in shape):
        raise ModelFileError(path, name, f"invalid shape {shape}")
    count = 1
    for s in shape:
        count *= int(s)
    if header + count * dtype.itemsize != data_bytes:
        raise ModelFileError(
            path,
            name,
            f"header claims shape {shape} of {dtype} "
            f"({count * dtype.itemsize} bytes) but the member holds "
            f"{data_bytes - header} bytes of data",
        )
    return shape, fortran, dtype, header


def _read_member(path: Path, zf: zipfile.ZipFile, info) -> np.ndarray:
    name = info.filename
    try:
        with zf.open(info) as fh:
            shape, fortran, dtype, _ = _header(path, name, fh, info.file_size)
            # Read straight into the array (its size is now known to match the
            # member), never through an intermediate bytes copy.
            array = np.empty(shape[::-1] if fortran else shape, dtype=dtype)
            raw = array.reshape(-1).view(np.uint8)
            pos = 0
            while pos < raw.size:
                got = fh.readinto(raw[pos : pos + _READ_CHUNK])
                if not got:
                    raise EOFError(f"member ends after {pos} of {raw.size} bytes")
                pos += got
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelFileError(path, name, f"unreadable ({exc})") from exc
    return array.T if fortran else array


def _mapped_member(path: Path, info: zipfile.ZipInfo) -> np.ndarray:
    """A stored ``.npy`` member memory-mapped read-only, in place in the archive:
    its data start after the zip local header and the npy header."""
    name = info.filename
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if local[:4] != b"PK\x03\x04":
            raise ModelFileError(path, name, "no zip local header")
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        start = info.header_offset + 30 + name_len + extra_len
        fh.seek(start)
        shape, fortran, dtype, header = _header(
            path, name, fh, info.file_size, origin=start
        )
        offset = start + header
    if start + info.file_size > path.stat().st_size:
        raise ModelFileError(path, name, "runs past the end of the file")
    if int(np.prod(shape)) == 0:
        return np.empty(shape, dtype=dtype)
    return np.memmap(
        path,
        dtype=dtype,
        mode="r",
        offset=offset,
        shape=shape,
        order="F" if fortran else "C",
    )
