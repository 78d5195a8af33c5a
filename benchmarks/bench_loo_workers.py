"""Leave-one-out on the workers against through the client (issue 25, item 5).

A sharded memory's leave-one-out (JOINT's fit, pruning, ``loo_proba``) used to go
through the client: for each block of one shard's samples it fetched their
vectors, sent them to every other shard and merged every shard's top k. With
``ShardedStore.loo_on_workers`` (the default) the queries' own shard does that
and sends the client only the merged top k. Measured here on a ``LocalCluster``
of S worker processes x 1 thread (S = 2 and 4 on this machine's cores), a
memory of ``--n`` clustered unit vectors (``--d``), leave-one-out of ``--loo``
stored samples at k = 50, both ways alternating, ``--repeats`` each:

- wall time (median);
- bytes the client sends and receives: every actor call's arguments and its
  result, pickled (protocol 5) as Dask would ship them; and that both ways
  give the same neighbours.

    python benchmarks/bench_loo_workers.py --write
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import clustered_unit_vectors, record

K = 50


def _size(obj) -> int:
    try:
        return len(pickle.dumps(obj, protocol=5))
    except Exception:  # an actor handle: its address and key, a few hundred bytes
        return 200


class Bytes:
    """Counts what ShardedStore's actor calls carry (installed on the class)."""

    def __init__(self):
        from skknn.memory.sharded import ShardedStore

        self.sent = self.received = 0
        call, gather = ShardedStore._call, ShardedStore._gather
        counter = self

        def counted_call(store, i, method, *args):
            counter.sent += _size((method, args))
            return call(store, i, method, *args)

        def counted_gather(store, calls):
            out = gather(store, calls)
            counter.received += sum(_size(v) for v in out.values())
            return out

        ShardedStore._call, ShardedStore._gather = counted_call, counted_gather

    def take(self) -> tuple[int, int]:
        out = (self.sent, self.received)
        self.sent = self.received = 0
        return out


def run(n_shards: int, X, y, ids, repeats: int, counter: Bytes) -> dict:
    from distributed import Client, LocalCluster

    from skknn import KNNVoter

    cluster = LocalCluster(
        n_workers=n_shards, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    client = Client(cluster)
    try:
        knn = KNNVoter(K, index="flat", backend="dask", n_shards=n_shards).fit(X, y)
        memory = knn.memory_
        memory.search_self(ids[:100], k=K)  # warm: imports, threads
        counter.take()
        out = {True: [], False: []}
        answers = {}
        for r in range(repeats):
            for mode in (True, False) if r % 2 == 0 else (False, True):
                memory.loo_on_workers = mode
                start = time.perf_counter()
                nb = memory.search_self(ids, k=K)
                seconds = time.perf_counter() - start
                out[mode].append((seconds, *counter.take()))
                answers[mode] = nb.ids
        same = bool(np.array_equal(answers[True], answers[False]))
    finally:
        client.close()
        cluster.close()
    return {
        mode: {
            "seconds": float(np.median([s for s, _, _ in rows])),
            "sent": rows[0][1],
            "received": rows[0][2],
        }
        for mode, rows in out.items()
    } | {"same": same}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--loo", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--shards", default="2,4")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    X, y = clustered_unit_vectors(args.n, args.d, 300, seed=0)
    ids = np.random.default_rng(1).choice(args.n, args.loo, replace=False)
    counter = Bytes()
    lines = [
        f'{args.n:,} x {args.d} clustered unit vectors, `index="flat"`, leave-one-out '
        f"of {args.loo:,} stored samples at k = {K}; a `LocalCluster` of S worker "
        "processes x 1 thread on this machine's 2 cores; median of "
        f"{args.repeats} runs each way, alternating.\n",
        "| shards | leave-one-out | wall s | client sent MB | client received MB "
        "| client bytes per query |",
        "|---|---|---|---|---|---|",
    ]
    for s in [int(v) for v in args.shards.split(",")]:
        r = run(s, X, y, ids, args.repeats, counter)
        print(s, r, flush=True)
        for mode, name in ((False, "through the client"), (True, "on the workers")):
            m = r[mode]
            total = m["sent"] + m["received"]
            lines.append(
                f"| {s} | {name} | {m['seconds']:.2f} | {m['sent'] / 1e6:.2f} | "
                f"{m['received'] / 1e6:.2f} | {total / args.loo:,.0f} |"
            )
        lines.append(f"| {s} | same neighbours both ways | {r['same']} | | | |")
    body = "\n".join(lines)
    print(body)
    if args.write:
        command = "python benchmarks/bench_loo_workers.py " + " ".join(sys.argv[1:])
        record("Leave-one-out on the workers (issue 25 item 5)", body, command.strip())


if __name__ == "__main__":
    main()
