"""A sharded memory on Dask against the local one, on one machine.

1,000,000 x 384 clustered unit vectors (``_clustered.py``), 10,000 queries,
k = 50, exact FAISS search (``index="flat"``). The local memory searches with
the machine's cores; the sharded one is 2 shards on a ``LocalCluster`` of 2
worker processes x 1 thread (Dask pins each worker's BLAS/OpenMP to its
thread), so both use the same 2 cores. Measured, in one run:

- fit time; prediction time for the 10,000 queries (search + vote);
- the sharded search's overhead: wall time less the slowest shard's own search
  time (reported by the shards), split into the client's merge (timed around
  ``ShardedStore._merge``) and the rest (sending queries, returning S * k
  candidates, waiting);
- leave-one-out neighbours of 10,000 stored samples (each shard's rows against
  every shard), and that they equal the local ones;
- unlearning 1,000 ids from each memory;
- peak resident memory of each worker and of the client.

    python benchmarks/bench_distributed.py [--n 1000000] [--queries 10000]

Results go to stdout and ``benchmarks/out/distributed.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _clustered import ClusteredStream
from _common import peak_rss_mb, reset_peak_rss
from distributed import Client, LocalCluster

from skknn import KNNVoter
from skknn.memory.sharded import ShardedStore

OUT = Path(__file__).with_name("out")
K = 50
D = 384


def _worker_peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _memory(n: int):
    stream = ClusteredStream(D)
    X = np.empty((n, D), np.float32)
    y = np.empty(n, np.int64)
    for i, start in enumerate(range(0, n, 250_000)):
        Xb, yb = stream.block(i, min(250_000, n - start))
        X[start : start + len(yb)], y[start : start + len(yb)] = Xb, yb
    return stream, X, y


def main(n: int, n_queries: int, n_loo: int, n_unlearn: int) -> dict:
    stream, X, y = _memory(n)
    Q, _ = stream.block(0, n_queries, queries=True)
    rng = np.random.default_rng(0)
    loo_ids = np.sort(rng.choice(n, n_loo, replace=False))
    gone = np.sort(rng.choice(n, n_unlearn, replace=False))
    out = {"n": n, "d": D, "k": K, "queries": n_queries, "loo_queries": n_loo}

    # -- local ----------------------------------------------------------------
    base = reset_peak_rss()
    local, t = _timed(lambda: KNNVoter(K, index="flat").fit(X, y))
    out["local_fit_s"] = t
    (nb_local, t) = _timed(lambda: local.neighbors(Q))
    pred_local = local.vote(nb_local, Q).prediction
    out["local_predict_s"] = t
    loo_local, t = _timed(lambda: local.memory_.search_self(loo_ids, K))
    out["local_loo_s"] = t
    out["local_peak_mb"] = peak_rss_mb() - base

    # -- sharded --------------------------------------------------------------
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    client = Client(cluster)
    merge_s = [0.0]
    original = ShardedStore._merge

    def timed_merge(self, grids, k):
        start = time.perf_counter()
        try:
            return original(self, grids, k)
        finally:
            merge_s[0] += time.perf_counter() - start

    ShardedStore._merge = timed_merge
    try:
        sharded, t = _timed(
            lambda: KNNVoter(K, index="flat", backend="dask", n_shards=2).fit(X, y)
        )
        out["sharded_fit_s"] = t
        out["shard_sizes"] = sharded.memory_.shard_sizes
        client.run(lambda: Path("/proc/self/clear_refs").write_text("5"))
        before = [s["search_seconds"] for s in sharded.memory_.shard_info()]
        merge_s[0] = 0.0
        nb_sharded, t = _timed(lambda: sharded.neighbors(Q))
        pred_sharded = sharded.vote(nb_sharded, Q).prediction
        after = [s["search_seconds"] for s in sharded.memory_.shard_info()]
        busy = [a - b for a, b in zip(after, before)]
        out["sharded_predict_s"] = t
        out["shard_search_s"] = busy
        out["merge_s"] = merge_s[0]
        out["overhead_s"] = t - max(busy)
        out["overhead_share"] = out["overhead_s"] / t
        out["merge_share"] = merge_s[0] / t
        out["same_neighbours"] = bool(
            np.array_equal(nb_local.ids, nb_sharded.ids)
            and np.array_equal(nb_local.distances, nb_sharded.distances)
        )
        out["same_predictions"] = float(np.mean(pred_local == pred_sharded))

        before = [s["search_seconds"] for s in sharded.memory_.shard_info()]
        merge_s[0] = 0.0
        loo_sharded, t = _timed(lambda: sharded.memory_.search_self(loo_ids, K))
        after = [s["search_seconds"] for s in sharded.memory_.shard_info()]
        out["sharded_loo_s"] = t
        out["loo_shard_search_s"] = [a - b for a, b in zip(after, before)]
        out["loo_merge_s"] = merge_s[0]
        out["same_loo_neighbours"] = bool(
            np.array_equal(loo_local.ids, loo_sharded.ids)
        )
        # Leave-one-out moves each query's vector out of its shard and to every
        # other shard: n_loo * d * 4 bytes * (1 + (S - 1)), plus S * k candidates
        # back (distance 4 + id 8 + key 8 + weight 4 + flag 1 bytes each).
        out["loo_bytes_moved"] = n_loo * D * 4 * 2 + n_loo * 2 * K * 25
        out["worker_peak_mb"] = list(client.run(_worker_peak_mb).values())

        _, out["sharded_unlearn_s"] = _timed(lambda: sharded.unlearn(gone))
        _, out["local_unlearn_s"] = _timed(lambda: local.unlearn(gone))
        out["same_after_unlearn"] = bool(
            np.array_equal(local.kneighbors(Q[:500])[1], sharded.kneighbors(Q[:500])[1])
        )
    finally:
        ShardedStore._merge = original
        client.close()
        cluster.close()
    out["predict_ratio"] = out["sharded_predict_s"] / out["local_predict_s"]
    out["loo_ratio"] = out["sharded_loo_s"] / out["local_loo_s"]
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--loo", type=int, default=10_000)
    parser.add_argument("--unlearn", type=int, default=1_000)
    args = parser.parse_args()
    result = main(args.n, args.queries, args.loo, args.unlearn)
    OUT.mkdir(exist_ok=True)
    (OUT / "distributed.json").write_text(json.dumps(result, indent=1))
    for key, value in result.items():
        print(f"{key:>24}: {value}")
