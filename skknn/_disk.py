"""Alias of :mod:`skknn.memory.segments`: moved there by issue 24, kept for pickles
and code that import the old path."""

from skknn.memory.segments import (  # noqa: F401
    LOCK,
    MANIFEST,
    PARTS,
    REQUIRED_PARTS,
    SMALL_ARRAYS,
    STATE,
    DiskVectors,
    StorageInUse,
    remove_store_folder,
)
