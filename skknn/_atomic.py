"""Files replaced atomically: written aside, synced, renamed over the target,
the rename made durable. A crash leaves the old file or the new one, never half
of one. Used by ``save``, a disk memory's commits and a storage folder's record.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replaced(path, mode: str = "wb"):
    """A handle whose content replaces ``path`` when the block ends without an
    error (nothing changes otherwise).

    The file gets the permissions any new file of this process would get
    (``0o666`` less the umask, as joblib's), not mkstemp's private 0600.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~umask())
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_folder(folder)


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
