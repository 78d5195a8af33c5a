"""What a folder holds, to compare before and after: every entry below it (links
not followed), its kind and a hash of its content."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def tree(root: Path) -> dict:
    """Every entry under ``root`` (links not followed): kind and content hash."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
    return out
