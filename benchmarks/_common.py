"""Shared benchmark plumbing: synthetic memories, peak-memory workers, RESULTS.md."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).with_name("RESULTS.md")


def clustered_unit_vectors(n, d, n_clusters, seed, noise=1.2):
    """Unit vectors drawn around ``n_clusters`` random directions; labels = cluster."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, d)).astype(np.float32)
    y = rng.integers(0, n_clusters, n)
    X = centers[y]
    X += noise * rng.standard_normal((n, d), dtype=np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X, y


def _status_kb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> float:
    """Reset the kernel's resident-memory high-water mark (Linux) and return the
    current resident size in MB: the baseline for :func:`peak_rss_mb`."""
    import ctypes
    import gc

    gc.collect()
    try:  # hand freed heap back to the OS, or later allocations reuse it unseen
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux, or not allowed: fall back to the lifetime peak
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return _status_kb("VmRSS") / 1024.0


def peak_rss_mb() -> float:
    """High-water mark of resident memory since :func:`reset_peak_rss`, in MB."""
    try:
        return _status_kb("VmHWM") / 1024.0
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_worker(script: str, *args: str) -> dict:
    """Run ``script --worker ...`` in a fresh process, so each contender's peak
    memory is its own; the worker prints one JSON line last."""
    out = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def machine_line() -> str:
    import faiss
    import sklearn
    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"Python {platform.python_version()}, numpy {np.__version__}, "
        f"torch {torch.__version__}, faiss {faiss.__version__}, "
        f"scikit-learn {sklearn.__version__}"
    )


def record(section: str, body: str, command: str) -> None:
    """Replace (or append) ``## section`` in benchmarks/RESULTS.md."""
    stamp = _dt.date.today().isoformat()
    block = (
        f"## {section}\n\n`{command}` on {stamp}; {machine_line()}.\n\n{body.strip()}\n"
    )
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = (
        pattern.sub(block + "\n", text) if pattern.search(text) else text + "\n" + block
    )
    RESULTS.write_text(text)
