"""Files replaced atomically: written aside, synced, renamed over the target,
the rename made durable. The code lives in :mod:`skknn._archive` (which may
import nothing of skknn's); this path is kept for the disk memory and the
storage folder, which import it from here.
"""

from skknn._archive import (
    clean_stale_temporaries,
    fsync_folder,
    replaced,
    temporary_pattern,
    umask,
)

__all__ = [
    "clean_stale_temporaries",
    "fsync_folder",
    "replaced",
    "temporary_pattern",
    "umask",
]
