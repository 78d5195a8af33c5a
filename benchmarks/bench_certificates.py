"""Deletion certificates: what they cost, against a checkout without them.

``KNNVoter(index="flat")`` on 100,000 x 384 float32 vectors of 100 classes:
``fit`` (the first of the process, then again), ``unlearn`` of 100 ids, the
first ``memory_digest()`` after them (the rows the fit added are hashed then), a
second one (no hashing), ``edit_log()``, ``save`` (the log finished by then),
``skknn.audit`` of the saved file, and, on a second estimator, ``save``
straight after ``fit`` + ``unlearn`` (the save hashes what the fit added).
``--old PATH`` times ``fit``, ``unlearn`` and ``save`` of another checkout
(PYTHONPATH) too. Each repeat is a fresh process per checkout, the checkouts
alternating; medians (and minimums) of ``--repeats`` are printed with the load
average before and after.

    python benchmarks/bench_certificates.py --old /work/main --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROWS = (
    ("fit_first", "fit, the first in the process"),
    ("fit", "fit, again"),
    ("unlearn", "unlearn 100 ids"),
    ("digest_1", "memory_digest(), first"),
    ("digest_2", "memory_digest(), second"),
    ("edit_log", "edit_log()"),
    ("save", "save (log finished)"),
    ("audit", "skknn.audit(file)"),
    ("save_pending", "save straight after fit + unlearn"),
)


def _data(n: int, d: int, n_classes: int):
    rng = np.random.default_rng(0)
    return (
        rng.standard_normal((n, d), dtype=np.float32),
        rng.integers(0, n_classes, n),
        rng.choice(n, 100, replace=False),
    )


def _timed(times: dict, name: str, fn):
    start = time.perf_counter()
    out = fn()
    times[name] = time.perf_counter() - start
    return out


def worker(n: int, d: int, n_classes: int, certificates: bool) -> dict:
    """One repeat in this process: the timings in seconds."""
    import skknn
    from skknn import KNNVoter

    X, y, gone = _data(n, d, n_classes)
    times: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        # The first large fit of a process also pays for first-touched pages.
        _timed(times, "fit_first", lambda: KNNVoter(index="flat").fit(X, y))
        knn = _timed(times, "fit", lambda: KNNVoter(index="flat").fit(X, y))
        _timed(times, "unlearn", lambda: knn.unlearn(gone))
        if certificates:
            _timed(times, "digest_1", knn.memory_digest)
            _timed(times, "digest_2", knn.memory_digest)
            _timed(times, "edit_log", knn.edit_log)
        path = Path(tmp) / "m.skknn"
        _timed(times, "save", lambda: knn.save(path))
        if certificates:
            report = _timed(times, "audit", lambda: skknn.audit(path))
            assert report.ok, report.failures()
            del knn
            other = KNNVoter(index="flat").fit(X, y).unlearn(gone)
            _timed(times, "save_pending", lambda: other.save(Path(tmp) / "p.skknn"))
    return times


def _run(path: str | None, args, certificates: bool) -> dict:
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = str(Path(path).resolve())
    cmd = [sys.executable, __file__, "--worker", str(int(certificates))]
    cmd += ["--n", str(args.n), "--d", str(args.d), "--classes", str(args.classes)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", help="a checkout without certificates (main)")
    parser.add_argument("--new", default=str(HERE.parent), help="this checkout")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.n, args.d, args.classes, bool(args.worker))))
        return
    load_before = os.getloadavg()
    runs: dict = {"new": [], "old": []}
    for _ in range(args.repeats):
        runs["new"].append(_run(args.new, args, True))
        if args.old:
            runs["old"].append(_run(args.old, args, False))
    load_after = os.getloadavg()
    print(
        f"KNNVoter(index='flat'), {args.n} x {args.d} float32, {args.classes} "
        f"classes; median of {args.repeats} (fresh process each); load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; "
        f"{os.cpu_count()} CPUs"
    )
    head = "main: median (min) s | " if args.old else ""
    print(f"| step | {head}branch: median (min) s |")
    print(f"|---|{'---:|' if args.old else ''}---:|")
    for key, label in ROWS:
        new = [r[key] for r in runs["new"]]
        old = [r[key] for r in runs["old"] if key in r]
        cell = f"{_cell(old)} | " if old else ("- | " if args.old else "")
        print(f"| {label} | {cell}{_cell(new)} |")
    if args.old:  # repeats ran in pairs: the pair's ratio is less load-bound
        for key in ("fit_first", "fit"):
            pairs = zip(runs["new"], runs["old"])
            ratio = np.median([n[key] / o[key] for n, o in pairs])
            print(f"{key}, branch / main, median of the paired ratios: {ratio:.3f}")


def _cell(values) -> str:
    return f"{np.median(values):.3f} ({np.min(values):.3f})"


if __name__ == "__main__":
    main()
