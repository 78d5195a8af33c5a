"""Find given byte patterns (removed vectors, in each form a memory stores them)
anywhere in a set of files.

Each pattern is found by an 8-byte anchor inside it: every file is read in
chunks (memory-mapped), viewed as little-endian 64-bit words at each of the 8
byte alignments, the words matching an anchor (``np.isin``) give candidate
starts, and each candidate is compared with its whole pattern. A pattern can
start at any byte (a zip member's data, a segment file at any row); the cost is
one pass over the bytes per alignment, whatever the number of patterns.
"""

from __future__ import annotations

import mmap
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_ANCHOR = 8
_CHUNK = 64 << 20
# Hits reported per file beyond which only their count grows.
MAX_REPORTED = 1000


@dataclass(frozen=True)
class Pattern:
    """Bytes to look for, with what they are (``row`` of the removed vectors,
    ``form``: raw/prepared, float32/float16)."""

    data: bytes
    row: int
    form: str


def scannable(pattern: bytes) -> bool:
    """A pattern made only of zero bytes matches any zero padding: not
    evidence of anything, so not searched."""
    return bool(pattern.strip(b"\0"))


def _anchor(data: bytes) -> tuple[int, int] | None:
    """(anchor word, its offset in ``data``): the first 8-byte window, at an
    even offset, holding no zero byte (else the one with the fewest)."""
    if len(data) < _ANCHOR:
        return None
    best, best_zeros = 0, _ANCHOR + 1
    for o in range(0, len(data) - _ANCHOR + 1, 2):
        zeros = data[o : o + _ANCHOR].count(0)
        if zeros < best_zeros:
            best, best_zeros = o, zeros
            if zeros == 0:
                break
    word = int.from_bytes(data[best : best + _ANCHOR], "little")
    return word, best


def scan(files: list[Path], patterns: list[Pattern]) -> tuple[list[dict], int]:
    """Every occurrence of every pattern in ``files`` (regular files, opened
    without following links); returns ``(hits, bytes scanned)``, each hit a
    dict ``file``, ``offset``, ``row``, ``form``."""
    by_anchor: dict[int, list[tuple[Pattern, int]]] = {}
    short = []
    for p in patterns:
        anchor = _anchor(p.data)
        if anchor is None:
            short.append(p)
        else:
            by_anchor.setdefault(anchor[0], []).append((p, anchor[1]))
    anchors = np.array(sorted(by_anchor), dtype=np.uint64)
    longest = max((len(p.data) for p in patterns), default=0)
    hits, total = [], 0
    for path in files:
        found, size = _scan_file(path, anchors, by_anchor, short, longest)
        total += size
        hits += found
    return hits, total


def _scan_file(path: Path, anchors, by_anchor, short, longest: int):
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
            return [], 0
        size = info.st_size
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mm:
            seen: set[tuple[int, int, str]] = set()
            for start in range(0, size, _CHUNK):
                # Overlap by a pattern's length: one straddling chunks is whole
                # in one of them.
                end = min(size, start + _CHUNK + longest)
                chunk = mm[start:end]
                if len(anchors):
                    _anchored(chunk, start, anchors, by_anchor, mm, size, seen)
                for p in short:
                    at = chunk.find(p.data)
                    while at >= 0:
                        seen.add((start + at, p.row, p.form))
                        at = chunk.find(p.data, at + 1)
    finally:
        os.close(fd)
    hits = [
        {"file": str(path), "offset": off, "row": row, "form": form}
        for off, row, form in sorted(seen)
    ]
    return hits, size


def _anchored(chunk: bytes, start: int, anchors, by_anchor, mm, size: int, seen):
    for align in range(_ANCHOR):
        count = (len(chunk) - align) // _ANCHOR
        if count <= 0:
            continue
        words = np.frombuffer(chunk, dtype="<u8", count=count, offset=align)
        for i in np.flatnonzero(np.isin(words, anchors)):
            q = start + align + _ANCHOR * int(i)
            for p, o in by_anchor[int(words[i])]:
                at = q - o
                if at < 0 or at + len(p.data) > size:
                    continue
                if mm[at : at + len(p.data)] == p.data:
                    seen.add((at, p.row, p.form))
