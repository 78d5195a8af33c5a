"""Small edits of a memory on disk: a 1-row ``partial_fit`` and a 1-id
``unlearn(retrain_index=False)`` at 20,000 and 200,000 rows (d=64, flat index,
``storage_path``), each the median of ``--repeat`` edits, synced to the disk as
every commit is.

An append must cost about the same at any memory size: it writes the new row to
each per-row file and a small manifest (``skknn/memory/segments.py``), where the first
format rewrote every per-row array (``state.npz``) at each commit. So must an
unlearn: it moves the last live row into the removed one in each per-row file
and zeroes the tail, writing two small manifests (the patch, then its moves
dropped); the rows' sequence numbers keep the memory order. Before, it
rewrote every per-row file (O(n d) bytes).

    python benchmarks/bench_small_edits.py                 # the skknn importable
    python benchmarks/bench_small_edits.py --old /tmp/old  # and an older checkout

``--old`` runs the same measurement with ``PYTHONPATH`` set to an older checkout
(``git worktree add /tmp/old 15edc62``) and prints both. Results go to stdout and
``benchmarks/out/small_edits.json``.
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

SIZES = (20_000, 200_000)
D = 64


def written(field: str = "write_bytes") -> int:
    """Bytes this process has written so far (Linux). ``write_bytes``: pages
    dirtied, by ``write`` or through a memory map, whole folios (up to 2 MiB
    on large files); ``wchar``: bytes passed to write calls."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure(n: int, repeat: int) -> dict:
    """Median milliseconds and kilobytes written of one 1-row partial_fit and
    one 1-id unlearn at ``n``."""
    import skknn

    gen = np.random.default_rng(0)
    X = gen.normal(size=(n + repeat, D)).astype(np.float32)
    y = np.arange(n + repeat) % 10
    with tempfile.TemporaryDirectory() as folder:
        knn = skknn.KNNVoter(5, index="flat", storage_path=folder).fit(X[:n], y[:n])
        appends, append_kb, append_calls_kb = [], [], []
        for i in range(n, n + repeat):
            t, w, c = time.perf_counter(), written(), written("wchar")
            knn.partial_fit(X[i : i + 1], y[i : i + 1])
            appends.append(time.perf_counter() - t)
            append_kb.append((written() - w) / 1024)
            append_calls_kb.append((written("wchar") - c) / 1024)
        unlearns, unlearn_kb, unlearn_calls_kb = [], [], []
        for i in range(repeat):
            t, w, c = time.perf_counter(), written(), written("wchar")
            knn.unlearn([i * 7], retrain_index=False)
            unlearns.append(time.perf_counter() - t)
            unlearn_kb.append((written() - w) / 1024)
            unlearn_calls_kb.append((written("wchar") - c) / 1024)
        del knn
    return {
        "n": n,
        "append_ms": 1e3 * float(np.median(appends)),
        "append_kb": float(np.median(append_kb)),
        "append_write_calls_kb": float(np.median(append_calls_kb)),
        "unlearn_ms": 1e3 * float(np.median(unlearns)),
        "unlearn_kb": float(np.median(unlearn_kb)),
        "unlearn_write_calls_kb": float(np.median(unlearn_calls_kb)),
        "skknn": str(Path(skknn.__file__).parents[1]),
    }


def run(pythonpath: str | None, repeat: int) -> list[dict]:
    """:func:`measure` at every size, in a fresh process with ``pythonpath``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    out = []
    for n in SIZES:
        code = (
            "import json, sys; sys.path.insert(0, sys.argv[1]);"
            "from bench_small_edits import measure;"
            "print(json.dumps(measure(int(sys.argv[2]), int(sys.argv[3]))))"
        )
        args = [sys.executable, "-c", code, str(Path(__file__).parent), str(n)]
        # run from this folder: the current folder would come before PYTHONPATH
        res = subprocess.run(
            [*args, str(repeat)],
            env=env,
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=True,
        )
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", help="an older checkout to measure as well")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    here = str(Path(__file__).resolve().parents[1])
    results = {"new": run(here, args.repeat)}
    if args.old:
        results["old"] = run(args.old, args.repeat)
    for label, rows in results.items():
        for r in rows:
            print(
                f"{label:4s} n={r['n']:>7,d}  1-row partial_fit"
                f" {r['append_ms']:7.2f} ms"
                f" {r['append_kb']:6.0f} KB dirtied"
                f" {r['append_write_calls_kb']:6.1f} KB by write()"
                f"  1-id unlearn {r['unlearn_ms']:7.2f} ms"
                f" {r['unlearn_kb']:8.0f} KB dirtied"
                f" {r.get('unlearn_write_calls_kb', float('nan')):8.1f} KB by write()"
            )
        ratio = rows[1]["append_ms"] / rows[0]["append_ms"]
        print(f"{label:4s} append at 200k / at 20k: {ratio:.2f}x ({rows[0]['skknn']})")
        ratio = rows[1]["unlearn_ms"] / rows[0]["unlearn_ms"]
        print(f"{label:4s} unlearn at 200k / at 20k: {ratio:.2f}x")
    out = Path(__file__).with_name("out")
    out.mkdir(exist_ok=True)
    (out / "small_edits.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
