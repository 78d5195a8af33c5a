"""The index-family tuner against each family tuned by hand (issue 25, item 4).

For each data set, ``KNNVoter(index="auto").fit(X, y).tune_index(Q_tune,
target_agreement=0.99)`` picks an index family and its knobs
(``skknn/_family_tuning.py``). By hand, every family the tuner considers is
built on the same rows and swept on a finer grid (``nprobe`` 1, 2, 3, 4, 6, 8,
12, ... instead of powers of two; ``efSearch`` likewise; ``refine`` 1-8 for
compact codes), keeping for each family the fastest setting that reaches the
same agreement on the same tuning queries. Every kept setting, the tuner's
pick included, is then timed on held-out queries (median of ``--repeats``), and
the ratio pick / fastest-by-hand in queries per second is reported (target:
>= 0.90, i.e. within 10%).

Data sets: ``clustered``: ``--n`` (default 1,000,000) x 128 unit vectors around
1,000 random directions (``_common.clustered_unit_vectors``, noise 1.2);
``two-digit MNIST``: 50,000 x 512 EfficientNet-Lite0 embeddings of real
two-digit MNIST images (``_embeddings.py``, cached in ``benchmarks/out``).

    python benchmarks/bench_tuner.py --write        # both, records RESULTS.md
    python benchmarks/bench_tuner.py --quick        # 100,000 clustered only
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import clustered_unit_vectors, record

TARGET = 0.99
K = 10
FINE = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]
FINE += [768, 1024, 1536, 2048, 3072, 4096]


def _predictions(knn, store, Q, params):
    from skknn.voter import _prediction

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if params is None:
            nb = store.search_exact(Q, K)
        else:
            nb = store.search(Q, K, index_params=params)
    return _prediction(knn.vote(nb, Q))


def _timed(store, Q, params, repeats: int) -> float:
    """Median queries/s of searching ``Q`` at ``params``."""
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(repeats):
            start = time.perf_counter()
            store.search(Q, K, index_params=params)
            times.append(time.perf_counter() - start)
    return len(Q) / float(np.median(times))


def _fine_grid(store, family: str, n_features: int):
    """``[(knobs, refine factors)]``: the finer sweep of a family."""
    if family == "flat" or not store.engine.ready:
        return [{}], [1]
    knobs, refines = store.engine.tuning_grid(n_features)
    name = next(iter(knobs[-1]))  # nprobe or efSearch
    top = knobs[-1][name]
    low = 16 if name == "efSearch" else 1
    values = [v for v in FINE if low <= v <= top]
    return [{name: v} for v in values], [r for r in refines if r <= 8]


def by_hand(knn, families, Q, reference, log):
    """Each family's fastest setting that reaches TARGET on ``Q``."""
    from skknn._family_tuning import rebuilder

    rebuild = rebuilder(knn.memory_)
    best = {}
    for family in families:
        start = time.perf_counter()
        store = rebuild(family)
        build = time.perf_counter() - start
        knobs, refines = _fine_grid(store, family, store.n_features)
        kept = None
        limit = len(knobs)
        for refine in refines:
            for j, knob in enumerate(knobs[:limit]):
                params = {**knob, **({"refine": refine} if refine > 1 else {})}
                pred = _predictions(knn, store, Q, params)
                if np.mean(pred == reference) >= TARGET:
                    qps = _timed(store, Q, params, 1)
                    if kept is None or qps > kept[1]:
                        kept = (params, qps)
                    limit = j
                    break
        log(f"  by hand {family}: built in {build:.1f} s, kept {kept}")
        best[family] = (store, None if kept is None else kept[0])
    return best


def run(name, X, y, Q_tune, Q_eval, repeats, log) -> dict:
    from skknn import KNNVoter
    from skknn._family_tuning import candidate_families

    log(f"{name}: {X.shape[0]:,} x {X.shape[1]}")
    knn = KNNVoter(K).fit(X, y)
    reference = _predictions(knn, knn.memory_, Q_tune, None)
    start = time.perf_counter()
    auto = KNNVoter(K).fit(X, y)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    auto.tune_index(Q_tune, target_agreement=TARGET)
    tune_seconds = time.perf_counter() - start
    t = auto.tuning_
    pick = (t.index[t.chosen], t.params[t.chosen])
    log(f"  auto picked {pick} in {tune_seconds:.1f} s")
    hand = by_hand(knn, candidate_families(*X.shape), Q_tune, reference, log)
    rows = []
    for family, (store, params) in hand.items():
        if params is None:
            rows.append((family, None, None, None))
            continue
        qps = _timed(store, Q_eval, params, repeats)
        agree = np.mean(
            _predictions(knn, store, Q_eval, params)
            == _predictions(knn, knn.memory_, Q_eval, None)
        )
        rows.append((family, params, qps, agree))
    pick_qps = _timed(auto.memory_, Q_eval, auto.memory_.index_params, repeats)
    pick_agree = np.mean(
        auto.predict(Q_eval) == _predictions(knn, knn.memory_, Q_eval, None)
    )
    fastest = max((r for r in rows if r[2] is not None), key=lambda r: r[2])
    front = [
        (t.index[i], t.params[i], t.agreement[i], t.queries_per_s[i], t.bytes[i])
        for i in t.front
    ]
    return {
        "name": name,
        "shape": X.shape,
        "pick": pick,
        "pick_qps": pick_qps,
        "pick_agree": pick_agree,
        "tune_seconds": tune_seconds,
        "fit_seconds": fit_seconds,
        "hand": rows,
        "fastest": fastest,
        "ratio": pick_qps / fastest[2],
        "front": front,
        "n_rows": len(t.index),
    }


def report(results) -> str:
    out = []
    for r in results:
        n, d = r["shape"]
        out.append(
            f"### {r['name']} ({n:,} x {d}; tuning queries {TUNE:,}, timed on "
            f"{EVAL:,} held-out queries, k = {K}, target agreement {TARGET})\n"
        )
        out.append(
            "| index (fastest by hand at the target) | knobs | queries/s | "
            "agreement (held out) |"
        )
        out.append("|---|---|---|---|")
        for family, params, qps, agree in r["hand"]:
            if params is None:
                out.append(f"| {family} | target not reached | - | - |")
            else:
                out.append(f"| {family} | {params} | {qps:,.0f} | {agree:.4f} |")
        out.append(
            f"| **tuner's pick: {r['pick'][0]}** | {r['pick'][1]} | "
            f"{r['pick_qps']:,.0f} | {r['pick_agree']:.4f} |"
        )
        out.append(
            f"\nPick / fastest by hand ({r['fastest'][0]}): **{r['ratio']:.3f}** "
            f"(target >= 0.90). The tuner measured {r['n_rows']} settings in "
            f"{r['tune_seconds']:.1f} s (the fit took {r['fit_seconds']:.1f} s).\n"
        )
        out.append("Pareto front measured by the tuner (`index_front_`):\n")
        out.append("| index | knobs | agreement | queries/s | bytes |")
        out.append("|---|---|---|---|---|")
        for index, params, agree, qps, nbytes in sorted(
            r["front"], key=lambda f: -f[3]
        ):
            out.append(
                f"| {index} | {params} | {agree:.4f} | {qps:,.0f} | {nbytes:,} |"
            )
        out.append("")
    return "\n".join(out)


TUNE, EVAL = 1000, 2000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--skip-real", action="store_true")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    n = 100_000 if args.quick else args.n

    def log(msg):
        print(msg, flush=True)

    results = []
    X, y = clustered_unit_vectors(n + TUNE + EVAL, 128, 1000, seed=0)
    Q = X[n:]
    results.append(
        run("clustered", X[:n], y[:n], Q[:TUNE], Q[TUNE:], args.repeats, log)
    )
    del X, y, Q
    if not (args.quick or args.skip_real):
        from _embeddings import two_digit_mnist_embeddings

        Xtr, ytr, Xte, _, _ = two_digit_mnist_embeddings()
        results.append(
            run(
                "two-digit MNIST, EfficientNet-Lite0",
                Xtr,
                ytr,
                Xte[:TUNE],
                Xte[TUNE : TUNE + EVAL],
                args.repeats,
                log,
            )
        )
    body = report(results)
    print(body)
    if args.write and not args.quick:
        command = "python benchmarks/bench_tuner.py " + " ".join(sys.argv[1:])
        record(
            "Index-family tuner against hand tuning (issue 25 item 4)",
            body,
            command.strip(),
        )


if __name__ == "__main__":
    main()
