"""Alias of :mod:`skknn.memory.folder`: moved there by issue 24, kept for pickles
and code that import the old path."""

from skknn.memory.folder import (  # noqa: F401
    FORMAT,
    MAX_RECORD_BYTES,
    MEMORY_NAME,
    POINTER,
    check_owner,
    open_folder,
    publish,
    published_memory,
    purge,
    resolve_root,
)
