"""What a first write to fresh memory costs, by how the memory is allocated.

The store's row buffers are written once per fit; on a virtual machine the first
touch of a page costs what the host charges to back it, and that depends on what
ran before. Each fill below copies 100,000 x 384 float32 rows (153 MB) into a new
allocation right after a FAISS ``IndexFlatIP.search`` of 2,000 queries, the order
``bench_ratios.py`` runs them in; ``--loaded`` keeps the other core busy.

    python benchmarks/bench_fresh_memory.py [--loaded] [--repeats 6]
"""

from __future__ import annotations

import argparse
import mmap
import subprocess
import sys
import time

import numpy as np

from skknn.memory.rows import zeroed

MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def _mapping(X: np.ndarray, huge: bool, populate: bool = False) -> np.ndarray:
    region = mmap.mmap(-1, X.nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.madvise(mmap.MADV_HUGEPAGE if huge else mmap.MADV_NOHUGEPAGE)
    if populate:
        region.madvise(MADV_POPULATE_WRITE)
    return np.frombuffer(region, dtype=X.dtype).reshape(X.shape)


def numpy_empty(X):
    a = np.empty_like(X)
    a[...] = X
    return a


def numpy_zeros(X):
    a = np.zeros_like(X)
    a[...] = X
    return a


def mapping_4k(X):
    a = _mapping(X, huge=False)
    a[...] = X
    return a


def mapping_huge_populated(X):
    a = _mapping(X, huge=True, populate=True)
    a[...] = X
    return a


def skknn_zeroed(X):
    a = zeroed(X.shape, X.dtype, X.shape[0])
    a[...] = X
    return a


def faiss_add(X):
    import faiss

    index = faiss.IndexFlatIP(X.shape[1])
    index.add(X)
    return index


WAYS = (
    numpy_empty,
    numpy_zeros,
    mapping_4k,
    mapping_huge_populated,
    skknn_zeroed,
    faiss_add,
)


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loaded", action="store_true", help="busy loop on a core")
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    X = np.random.default_rng(0).standard_normal((100_000, 384), dtype=np.float32)
    Q = X[:2000].copy()
    index = faiss.IndexFlatIP(X.shape[1])
    index.add(X)
    busy = None
    if args.loaded:
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        spent = {way.__name__: [] for way in WAYS}
        for _ in range(args.repeats):
            for way in WAYS:
                index.search(Q, 50)
                start = time.perf_counter()
                kept = way(X)
                spent[way.__name__].append(time.perf_counter() - start)
                del kept
    finally:
        if busy is not None:
            busy.kill()
    print(f"| allocation ({'loaded' if args.loaded else 'idle'}) | median s | range |")
    print("|---|---|---|")
    for name, times in spent.items():
        low, high = min(times), max(times)
        print(f"| {name} | {np.median(times):.3f} | {low:.3f}-{high:.3f} |")


if __name__ == "__main__":
    main()
