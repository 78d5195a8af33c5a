"""Memory a prediction holds beyond its output, against the number of queries.

``KNNVoter.predict_proba`` with ``batch_size=1024`` at k = 50, on a flat memory of
10,000 x 32 unit vectors in 20 classes, for 10k to 200k queries. Two measures of
the growth above the returned array, each in a fresh process per point:

- **traced**: the peak of :mod:`tracemalloc` (NumPy's and Python's allocations;
  not FAISS's or torch's own) during the call, minus what was held before it;
- **RSS**: resident memory sampled every 2 ms by a thread (psutil) during an
  untraced call, peak minus the resident size before it.

The output array (n_queries x 20 float64) is subtracted from both.

    python benchmarks/bench_predict_memory.py                  # this checkout
    python benchmarks/bench_predict_memory.py --old /tmp/old   # and another one
    python benchmarks/bench_predict_memory.py --write ...      # append to RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
N_QUERIES = (10_000, 50_000, 100_000, 200_000)
MB = 2**20


def _rss_peak(call, interval: float = 0.002) -> tuple[float, object]:
    """Peak resident bytes above the start while ``call`` runs, and its result."""
    import psutil

    proc = psutil.Process()
    start = proc.memory_info().rss
    peak = [start]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        out = call()
    finally:
        done.set()
        thread.join()
    return max(peak[0], proc.memory_info().rss) - start, out


def _traced_peak(call) -> tuple[float, object]:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        out = call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak - before, out


def worker(code: str | None, n_queries: int) -> dict:
    if code:  # another checkout's skknn, ahead of the installed one
        sys.path.insert(0, code)
    sys.path.insert(0, str(HERE))
    from _common import clustered_unit_vectors

    from skknn import KNNVoter

    X, y = clustered_unit_vectors(10_000, 32, 20, seed=0)
    Q, _ = clustered_unit_vectors(n_queries, 32, 20, seed=1)
    knn = KNNVoter(50, index="flat", batch_size=1024).fit(X, y)
    knn.predict_proba(Q[:2048])  # warm: FAISS's and BLAS's buffers, imports
    start = time.perf_counter()
    rss, out = _rss_peak(lambda: knn.predict_proba(Q))
    seconds = time.perf_counter() - start
    del out
    traced, out = _traced_peak(lambda: knn.predict_proba(Q))
    return {
        "n_queries": n_queries,
        "output_mb": out.nbytes / MB,
        "traced_mb": (traced - out.nbytes) / MB,
        "rss_mb": (rss - out.nbytes) / MB,
        "seconds": seconds,
    }


def run(code: str | None) -> list[dict]:
    sys.path.insert(0, str(HERE))
    from _common import run_worker

    args = ["--code", code] if code else []
    return [run_worker(__file__, "--worker", str(n), *args) for n in N_QUERIES]


def table(rows: dict[str, list[dict]]) -> str:
    lines = [
        "| queries | output MB | "
        + " | ".join(f"{name}: traced MB | {name}: RSS MB" for name in rows)
        + " |",
        "|---:|---:|" + "---:|---:|" * len(rows),
    ]
    for i, n in enumerate(N_QUERIES):
        first = next(iter(rows.values()))[i]
        cells = [f"{n:,}", f"{first['output_mb']:.1f}"]
        for points in rows.values():
            cells += [f"{points[i]['traced_mb']:.1f}", f"{points[i]['rss_mb']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", type=int)
    parser.add_argument("--code", help="a checkout whose skknn to measure")
    parser.add_argument("--old", help="also measure this checkout (e.g. a worktree)")
    parser.add_argument("--write", action="store_true", help="append to RESULTS.md")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.code, args.worker)))
        return
    rows = {}
    if args.old:
        rows["before"] = run(args.old)
    rows["after"] = run(None)
    text = table(rows)
    print(text)
    if args.write:
        _append(text, args.old)


def _append(text: str, old: str | None) -> None:
    """Append a section to RESULTS.md (appended, never rewritten: others write
    other sections of it)."""
    sys.path.insert(0, str(HERE))
    from _common import RESULTS, machine_line

    before = f" (`before`: the checkout at `{old}`)" if old else ""
    section = (
        "\n## Prediction memory against the number of queries\n\n"
        f"`python benchmarks/bench_predict_memory.py --old {old or ''} --write`"
        f"{before}; {machine_line()}.\n\n"
        "`KNNVoter.predict_proba`, flat memory of 10,000 x 32 unit vectors in 20 "
        "classes, k = 50, `batch_size=1024`. Growth above the returned array "
        "(n x 20 float64): *traced* is tracemalloc's peak (NumPy and Python "
        "allocations only), *RSS* the resident size sampled every 2 ms by a "
        "psutil thread; each point in a fresh process.\n\n" + text + "\n"
    )
    with open(RESULTS, "a") as f:
        f.write(section)


if __name__ == "__main__":
    main()
