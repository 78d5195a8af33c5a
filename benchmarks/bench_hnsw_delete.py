"""Unlearning from an HNSW memory without retraining (issue 22, item 10).

FAISS cannot remove nodes from an HNSW graph. skknn used to rebuild the whole
graph for ``unlearn(ids, retrain_index=False)``; it now marks the nodes dead and
skips them at search (an ``IDSelectorBitmap``, with ``efSearch`` raised by the
dead share), compacting when ``retrain_index=True`` or past 20% dead. Measured
on clustered unit vectors, HNSW32, ``efSearch=64``:

* ``unlearn`` of 1 and of 100 ids with ``retrain_index=False`` (median of 5);
* ``unlearn`` of 1 id with ``retrain_index=True`` (the compaction);
* predictions per second before and after 1,000 dead nodes, and the recall@10
  of the index against exact search after them.

    python benchmarks/bench_hnsw_delete.py                 # 50,000 x 64
    PYTHONPATH=<checkout of an older skknn> python benchmarks/bench_hnsw_delete.py

Prints only (the figures are quoted in the issue / RESULTS.md by hand).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import clustered_unit_vectors

import skknn
from skknn import KNNVoter


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _median_unlearn(knn, ids_sets, retrain: bool) -> float:
    return float(
        np.median([_seconds(lambda s=s: knn.unlearn(s, retrain)) for s in ids_sets])
    )


def main(n: int, d: int, n_queries: int) -> None:
    X, y = clustered_unit_vectors(n + n_queries, d, 100, seed=0)
    X, y, Q = X[:n], y[:n], X[n:]
    params = {"efSearch": 64}
    knn = KNNVoter(10, index="HNSW32", index_params=params, device="cpu")
    print(f"skknn from {Path(skknn.__file__).parent}; {n:,} x {d}, HNSW32")
    print(
        f"fit                                 {_seconds(lambda: knn.fit(X, y)):8.3f} s"
    )
    qps = n_queries / _seconds(lambda: knn.predict(Q))
    print(f"predict, nothing removed            {qps:8,.0f} queries/s")
    rng = np.random.default_rng(1)
    order = rng.permutation(n)
    ones = [order[i : i + 1] for i in range(5)]
    hundreds = [order[5 + 100 * i : 105 + 100 * i] for i in range(5)]
    t1 = _median_unlearn(knn, ones, False)
    t100 = _median_unlearn(knn, hundreds, False)
    print(f"unlearn 1 id, retrain_index=False   {t1:8.4f} s")
    print(f"unlearn 100 ids, retrain_index=False{t100:8.4f} s")
    knn.unlearn(order[505:1005], False)  # 1,005 dead in all
    qps = n_queries / _seconds(lambda: knn.predict(Q))
    print(f"predict, 1,005 removed              {qps:8,.0f} queries/s")
    keep = np.setdiff1d(np.arange(n), order[:1005])
    exact = KNNVoter(10, index="exact").fit(X[keep], y[keep], sample_ids=keep)
    want = exact.kneighbors(Q, return_distance=False)
    got = knn.kneighbors(Q, return_distance=False)
    hits = sum(np.intersect1d(a, b).size for a, b in zip(got, want))
    print(f"recall@10 against exact             {hits / want.size:8.4f}")
    assert not np.isin(got, order[:1005]).any(), "a removed sample was returned"
    t = _seconds(lambda: knn.unlearn(order[1005:1006], True))
    print(f"unlearn 1 id, retrain_index=True    {t:8.3f} s")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--queries", type=int, default=2_000)
    args = p.parse_args()
    main(args.n, args.d, args.queries)
