"""Memories beyond RAM: approximate indexes measured by prediction agreement.

Two parts (a scale benchmark, not CI; clustered unit vectors from
``_clustered.py``, 384-d, 100 classes, KNNVoter(k=50, RankVoting)):

``--part compare`` (default N = 1,000,000): exact FAISS flat search against each
compact-code index (``IVF4096,PQ32``, ``IVF1024,SQ8``, ``HNSW32,SQ8``,
``OPQ32,IVF4096,PQ32``), and ``index="auto"`` with the knobs it picks. Each
index is tuned by ``KNNVoter.tune_index`` on 2,000
validation queries for 99% prediction agreement with exact search, then measured
on 10,000 other queries: queries/s, agreement, recall@50, and the speed-up over
flat. Also float16 storage against float32 (flat): agreement and RAM.

``--part large`` (default N = 10,000,000, fewer if the disk lacks room: it checks
and says): the memory streamed into ``storage_path`` (float16) with an
``IVF4096,PQ32`` index by ``partial_fit_from``; build time, resident anonymous
memory (``RssAnon``: the memory map's pages are the OS's file cache) against
the float32 vectors' size, then tuning and, on 10,000 queries, queries/s and
prediction agreement with exact search (computed blockwise from the stored
vectors by ``VectorStore.search_exact``).

    python benchmarks/bench_large.py --part compare
    python benchmarks/bench_large.py --part large --storage /path/with/room

Results go to stdout and ``benchmarks/out/large_<part>.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _clustered import ClusteredStream

from skknn import KNNVoter
from skknn._tuning import agreement, recall_at_k

OUT = Path(__file__).with_name("out")
K = 50
D = 384
BLOCK = 250_000
SETTINGS = ["IVF4096,PQ32", "IVF1024,SQ8", "HNSW32,SQ8", "OPQ32,IVF4096,PQ32", "auto"]


def rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def queries(stream: ClusteredStream, n: int, index: int):
    return stream.block(index, n, queries=True)


def timed_predict(knn: KNNVoter, Q: np.ndarray):
    start = time.perf_counter()
    nb = knn.neighbors(Q)
    pred = knn.vote(nb, Q).prediction
    return pred, nb, time.perf_counter() - start


def timed_tune(knn: KNNVoter, Q_val: np.ndarray) -> float:
    """Seconds ``tune_index`` takes for 99% agreement (its warnings muted: a
    query finding fewer than k at a small nprobe is what it measures)."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        knn.tune_index(Q_val, 0.99)
    return time.perf_counter() - start


def compare(n: int, n_test: int, settings: list[str]) -> dict:
    stream = ClusteredStream(D)
    X = np.empty((n, D), np.float32)
    y = np.empty(n, np.int64)
    for i, start in enumerate(range(0, n, BLOCK)):
        X[start : start + BLOCK], y[start : start + BLOCK] = stream.block(
            i, min(BLOCK, n - start)
        )
    Q_val, _ = queries(stream, 2000, 1)
    Q, y_q = queries(stream, n_test, 2)
    out = {"n": n, "d": D, "k": K, "n_test": n_test, "rows": []}

    flat = KNNVoter(K, index="flat").fit(X, y)
    exact_pred, exact_nb, t_flat = timed_predict(flat, Q)
    out["flat"] = {
        "queries_per_s": n_test / t_flat,
        "accuracy": float(np.mean(exact_pred == y_q)),
    }
    print(
        f"flat: {n_test / t_flat:,.0f} queries/s, accuracy "
        f"{np.mean(exact_pred == y_q):.4f} (N = {n:,})",
        flush=True,
    )
    f16 = KNNVoter(K, index="flat", storage_dtype="float16").fit(X, y)
    pred16, _, t16 = timed_predict(f16, Q)
    out["float16"] = {
        "agreement": agreement(pred16, exact_pred),
        "vector_mb": f16.memory_.vector_nbytes / 2**20,
        "float32_vector_mb": flat.memory_.vector_nbytes / 2**20,
        "queries_per_s": n_test / t16,
    }
    print(f"float16 storage: {out['float16']}", flush=True)
    del f16

    for factory in settings:
        t = time.perf_counter()
        knn = KNNVoter(K, index=factory).fit(X, y)
        build = time.perf_counter() - t
        # "auto" keeps the knobs it chose
        tune = 0.0 if factory == "auto" else timed_tune(knn, Q_val)
        pred, nb, seconds = timed_predict(knn, Q)
        row = {
            "index": factory,
            "engine": knn.engine_,
            "index_params": knn.memory_.index_params,
            "build_s": build,
            "tune_s": tune,
            "queries_per_s": n_test / seconds,
            "speedup": t_flat / seconds,
            "agreement": agreement(pred, exact_pred),
            "recall": recall_at_k(nb.ids, exact_nb.ids),
        }
        if hasattr(knn, "tuning_"):
            row["tuning"] = {
                "params": knn.tuning_.params,
                "agreement": knn.tuning_.agreement,
                "recall": knn.tuning_.recall,
                "queries_per_s": knn.tuning_.queries_per_s,
            }
        out["rows"].append(row)
        print(
            f"{factory} ({row['engine']}): {row['index_params']} "
            f"build {build:.0f} s, tune {tune:.0f} s; "
            f"{row['queries_per_s']:,.0f} queries/s = {row['speedup']:.1f}x flat, "
            f"agreement {row['agreement']:.4f}, recall@{K} {row['recall']:.3f}",
            flush=True,
        )
        del knn
    return out


def large(n: int, n_test: int, storage: Path, factory: str) -> dict:
    stream = ClusteredStream(D)
    row_bytes = D * 2  # float16 storage
    free = shutil.disk_usage(storage).free
    room = int(0.8 * free // row_bytes)
    if room < n:
        print(
            f"note: {free / 2**30:.1f} GiB free in {storage}: N lowered from "
            f"{n:,} to {room:,}"
        )
        n = room
    rss0 = rss_anon_mb()
    t = time.perf_counter()
    knn = KNNVoter(K, index=factory, storage_dtype="float16", storage_path=storage)
    knn.partial_fit_from(stream.blocks(n, 500_000))
    build = time.perf_counter() - t
    rss_build = rss_anon_mb()
    print(
        f"built N = {n:,} in {build:.0f} s; RssAnon {rss_build:,.0f} MB "
        f"(before: {rss0:,.0f} MB); float32 vectors would be "
        f"{n * D * 4 / 2**20:,.0f} MB",
        flush=True,
    )
    Q_val, _ = queries(stream, 1000, 1)
    Q, y_q = queries(stream, n_test, 2)
    t = time.perf_counter()
    exact = knn.memory_.search_exact(Q, K)
    t_exact = time.perf_counter() - t
    exact_pred = knn.vote(exact, Q).prediction
    print(f"exact search of {n_test:,} queries: {t_exact:.0f} s", flush=True)
    tune = timed_tune(knn, Q_val)
    pred, nb, seconds = timed_predict(knn, Q)
    out = {
        "n": n,
        "index": factory,
        "storage_dtype": "float16",
        "build_s": build,
        "rss_anon_mb": rss_build,
        "rss_anon_mb_before": rss0,
        "rss_anon_mb_after_queries": rss_anon_mb(),
        "float32_vectors_mb": n * D * 4 / 2**20,
        "exact_s": t_exact,
        "exact_queries_per_s": n_test / t_exact,
        "tune_s": tune,
        "index_params": knn.index_params,
        "queries_per_s": n_test / seconds,
        "agreement": agreement(pred, exact_pred),
        "recall": recall_at_k(nb.ids, exact.ids),
        "accuracy": float(np.mean(pred == y_q)),
        "exact_accuracy": float(np.mean(exact_pred == y_q)),
    }
    out["rss_share"] = out["rss_anon_mb"] / out["float32_vectors_mb"]
    print(json.dumps(out, indent=1), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["compare", "large"], default="compare")
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--settings", default=";".join(SETTINGS))
    p.add_argument("--storage", default=None, help="folder for --part large")
    p.add_argument("--index", default="IVF4096,PQ32", help="index for --part large")
    args = p.parse_args()
    OUT.mkdir(exist_ok=True)
    if args.part == "compare":
        result = compare(args.n or 1_000_000, args.queries, args.settings.split(";"))
    else:
        root = Path(args.storage or tempfile.mkdtemp(prefix="skknn-large-"))
        root.mkdir(parents=True, exist_ok=True)
        try:
            result = large(args.n or 10_000_000, args.queries, root, args.index)
        finally:
            if args.storage is None:
                shutil.rmtree(root, ignore_errors=True)
    path = OUT / f"large_{args.part}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
