"""Files replaced atomically: written aside, synced, renamed over the target,
the rename made durable. A crash leaves the old file or the new one, never half
of one. Used by ``save``, a disk memory's commits and a storage folder's record.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock, and no stale temporaries are cleaned
    fcntl = None

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
