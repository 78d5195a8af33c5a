"""The speed targets of issue 23, side by side in one run: skknn against raw FAISS.

1. ``voter``: ``KNNVoter(index="flat", metric="cosine", voting="plurality")`` fit +
   predict against ``IndexFlatIP`` add + search + a NumPy vote; 100,000 x 384
   unit vectors (300 clusters), 2,000 queries, k = 50; with a breakdown of where
   skknn's time goes.
2. ``exact``: the same with ``index="exact"``.
3. ``pruning``: ``MemoryPruner(KNNVoter(index="flat"), mode="hard",
   n_neighbors=100).fit`` against raw FAISS's leave-one-out search and counts.
4. ``joint``: ``JointKNNClassifier().fit`` against its floor,
   ``LogisticRegression().fit`` plus one raw FAISS leave-one-out search (k + 1).

Each part runs in a fresh process per checkout and load, raw and skknn
alternating, ``--repeats`` times; medians and the median of the per-repeat
ratios are reported. "loaded": another process spins on one of the cores
throughout (``while True: pass``). ``--old PATH`` measures another checkout
too (PYTHONPATH; ``--new PATH`` for the "after" one instead of the installed
package), ``--simd avx2`` makes FAISS, NumPy, OpenBLAS and torch take
their AVX2 kernels on an AVX-512 machine.

    python benchmarks/bench_ratios.py --write           # writes RESULTS.md
    python benchmarks/bench_ratios.py --quick           # smoke run, prints only
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import clustered_unit_vectors, record

PARTS = ("voter", "exact", "pruning", "joint", "joint_separable")
# JOINT's data: overlapping classes (L-BFGS iterates long), and separable ones
# on which it stops within a few iterations, so the floor is mostly the
# leave-one-out search: the hard case for the ratio.
JOINT_DATA = {"joint": (256, 50, 6.0), "joint_separable": (512, 100, 2.0)}
RESEARCHED = "predict: queries searched again for a tie (count)"
# Kernels an AVX2 machine would run, chosen on an AVX-512 one.
AVX2_ENV = {
    "FAISS_SIMD_LEVEL": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "OPENBLAS_CORETYPE": "Haswell",
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}


# -- workers: one part, one checkout, one process ------------------------------------
class Clock:
    """Seconds spent in wrapped functions, by label. A search's first round and
    its tie-refinement rounds are told apart (``round``: calls of the store's
    candidate search so far in this search)."""

    def __init__(self):
        self.spent: dict[str, float] = {}
        self.round = 0

    def wrap(self, owner, name: str, label: str, per_round: bool = False) -> None:
        fn = getattr(owner, name, None)
        if fn is None:  # another checkout may not have it
            return

        def timed(*args, **kwargs):
            key = label
            if per_round and self.round > 1:
                key = "predict: tie-refinement rounds (all steps)"
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                self.spent[key] = self.spent.get(key, 0.0) + spent

        setattr(owner, name, timed)

    def take(self) -> dict[str, float]:
        spent, self.spent = self.spent, {}
        return spent


def _instrument(clock: Clock) -> None:
    """Timers around the steps of skknn's fit and predict (breakdown runs only)."""
    import skknn.voter as voter

    try:
        import skknn.memory.engines as search
        import skknn.memory.front as store
        from skknn.memory.metric import Metric
    except ImportError:  # a checkout from before the memory package (issue 24)
        import skknn._search as search
        from skknn._metric import Metric

        import skknn._store as store

    vs = store.VectorStore
    # Where the rows' code lives: LocalRows (the row backend) since the front
    # holds one; the store itself in earlier checkouts.
    modules = [store]
    try:
        import skknn.memory.base as base
        import skknn.memory.local as local
        import skknn.memory.local_search as local_search

        rows = local.LocalRows
        modules += [base, local, local_search]
    except (ImportError, AttributeError):
        rows = vs
    clock.wrap(voter.KNNVoter, "_add", "fit")
    clock.wrap(vs, "add", "fit: store.add")
    for module in modules:
        clock.wrap(module, "checked_rows", "fit: store's checks of X")
        clock.wrap(module, "preprocess_into", "fit: copy + normalise")
        clock.wrap(module, "preprocess_inplace", "fit: copy + normalise")
        clock.wrap(module, "nearest_first", "predict: re-sort", per_round=True)
    clock.wrap(voter.KNNVoter, "_answer_blocks", "predict")
    clock.wrap(voter.KNNVoter, "_queries", "predict: validate queries")
    clock.wrap(vs, "prepare", "predict: normalise queries")
    for engine in (search.FaissFlatEngine, search.TorchExactEngine):
        clock.wrap(engine, "search", "predict: engine search", per_round=True)
    clock.wrap(Metric, "pair_distances", "predict: exact pair distances", True)
    clock.wrap(vs, "_nearest_first", "predict: re-sort", per_round=True)
    clock.wrap(vs, "_record", "predict: neighbour record")
    clock.wrap(rows, "_hits", "predict: neighbour record")
    clock.wrap(voter.KNNVoter, "vote", "predict: vote")
    search_prepared, candidates = rows._search_prepared, rows._candidates

    def counted_search(self, *args, **kwargs):
        clock.round = 0
        return search_prepared(self, *args, **kwargs)

    def counted_candidates(self, *args, **kwargs):
        clock.round += 1
        if clock.round > 1:  # args: X, Q, k, kk, ...
            clock.spent[RESEARCHED] = clock.spent.get(RESEARCHED, 0) + len(args[1])
        return candidates(self, *args, **kwargs)

    rows._search_prepared, rows._candidates = counted_search, counted_candidates


def _raw_vote(idx: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    flat = (np.arange(len(idx))[:, None] * n_classes + y[idx]).ravel()
    counts = np.bincount(flat, minlength=len(idx) * n_classes)
    return counts.reshape(len(idx), n_classes).argmax(1)


def _raw_voter(X, y, Q, k: int) -> tuple[dict, np.ndarray]:
    """Raw FAISS: ``IndexFlatIP`` add + search, and a NumPy plurality vote."""
    import faiss

    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(X.shape[1])
    flat.add(X)
    t1 = time.perf_counter()
    _, idx = flat.search(Q, k)
    t2 = time.perf_counter()
    pred = _raw_vote(idx, y, int(y.max()) + 1)
    t3 = time.perf_counter()
    times = {"fit": t1 - t0, "search": t2 - t1, "vote": t3 - t2, "predict": t3 - t1}
    return times, pred


def _our_voter(X, y, Q, k: int, index: str) -> tuple[dict, np.ndarray]:
    from skknn import KNNVoter

    est = KNNVoter(k, index=index, metric="cosine", voting="plurality")
    t0 = time.perf_counter()
    est.fit(X, y)
    t1 = time.perf_counter()
    pred = est.predict(Q)
    t2 = time.perf_counter()
    return {"fit": t1 - t0, "predict": t2 - t1}, pred


def _voter_worker(data: Path, index: str, repeats: int, k: int) -> dict:
    import faiss

    X, y, Q = (np.load(data / f"{a}.npy") for a in ("X", "y", "Q"))
    faiss.knn(Q[:256], X[:4096], 11)  # warm-up: threads, BLAS
    _our_voter(X[:5000], y[:5000], Q[:100], k, index)
    raw, ours = [], []
    for i in range(repeats):  # ABBA: neither side always runs first
        for side in ("raw", "ours") if i % 2 == 0 else ("ours", "raw"):
            if side == "raw":
                times, raw_pred = _raw_voter(X, y, Q, k)
                raw.append(times)
            else:
                times, pred = _our_voter(X, y, Q, k, index)
                ours.append(times)
    agree = float(np.mean(pred == raw_pred))
    breakdown = _voter_breakdown(X, y, Q, index, k, max(3, repeats // 2))
    return {
        "raw": {key: [t[key] for t in raw] for key in raw[0]},
        "ours": {key: [t[key] for t in ours] for key in ours[0]},
        "agree": agree,
        "breakdown": breakdown,
    }


def _voter_breakdown(X, y, Q, index: str, k: int, repeats: int) -> dict:
    """Medians of the instrumented steps over separate runs (timers only here)."""
    from skknn import KNNVoter

    clock = Clock()
    _instrument(clock)
    runs = []
    for _ in range(repeats):
        KNNVoter(k, index=index, metric="cosine", voting="plurality").fit(X, y).predict(
            Q
        )
        runs.append(clock.take())
    labels = sorted({label for run in runs for label in run})
    return {
        label: float(np.median([r.get(label, 0.0) for r in runs])) for label in labels
    }


def _loo_counts(X: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    from bench_pruning import faiss_loo_counts

    return faiss_loo_counts(X, y, k)


def _pruning_worker(data: Path, repeats: int, m: int) -> dict:
    import faiss

    from skknn import KNNVoter, MemoryPruner

    X, y = np.load(data / "PX.npy"), np.load(data / "Py.npy")
    faiss.knn(X[:256], X[:4096], 11)
    raw, ours, agree = [], [], []
    for i in range(repeats):  # ABBA, as for the voter
        for side in ("raw", "ours") if i % 2 == 0 else ("ours", "raw"):
            start = time.perf_counter()
            if side == "raw":
                counts = _loo_counts(X, y, m)
                raw.append(time.perf_counter() - start)
            else:
                pruner = MemoryPruner(
                    KNNVoter(index="flat"), mode="hard", n_neighbors=m
                ).fit(X, y)
                ours.append(time.perf_counter() - start)
        agree.append(float(np.mean(pruner.wrong_counts_ == counts)))
        del pruner
    return {"raw": raw, "ours": ours, "agree": min(agree)}


def _joint_worker(data: Path, part: str, repeats: int) -> dict:
    import faiss
    from sklearn.linear_model import LogisticRegression

    from skknn import JointKNNClassifier, KNNVoter

    X, y = np.load(data / f"{part}_X.npy"), np.load(data / f"{part}_y.npy")
    k = KNNVoter().n_neighbors  # JOINT's default memory
    small = slice(0, 500)
    JointKNNClassifier(random_state=0, max_epochs=1).fit(X[small], y[small])
    LogisticRegression().fit(X[small], y[small])
    lr_s, loo_s, ours = [], [], []
    for i in range(repeats):  # ABBA, as for the voter
        for side in ("floor", "ours") if i % 2 == 0 else ("ours", "floor"):
            t0 = time.perf_counter()
            if side == "ours":
                JointKNNClassifier(random_state=0).fit(X, y)
                ours.append(time.perf_counter() - t0)
                continue
            LogisticRegression().fit(X, y)
            t1 = time.perf_counter()
            faiss.knn(X, X, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
            lr_s.append(t1 - t0)
            loo_s.append(time.perf_counter() - t1)
    floor = [a + b for a, b in zip(lr_s, loo_s)]
    iterations = int(LogisticRegression().fit(X, y).n_iter_[0])
    return {"raw": floor, "ours": ours, "lr": lr_s, "loo": loo_s, "iter": iterations}


def worker(part: str, data: Path, repeats: int) -> dict:
    before = os.getloadavg()[0]
    if part in ("voter", "exact"):
        out = _voter_worker(data, "flat" if part == "voter" else "exact", repeats, 50)
    elif part == "pruning":
        out = _pruning_worker(data, repeats, 100)
    else:
        out = _joint_worker(data, part, repeats)
    return {**out, "load": (before, os.getloadavg()[0])}


# -- the driver ------------------------------------------------------------------
def _worker_args(part: str, data: Path) -> list:
    return [sys.executable, __file__, "--worker", part, "--data", str(data)]


def _busy() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _run(part, data, repeats, checkout, simd, loaded) -> dict:
    env = dict(os.environ)
    if checkout:
        env["PYTHONPATH"] = os.pathsep.join([checkout, env.get("PYTHONPATH", "")])
    if simd == "avx2":
        env.update(AVX2_ENV)
    busy = _busy() if loaded else None
    try:
        out = subprocess.run(
            [*_worker_args(part, data), f"--repeats={repeats}"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    if out.returncode != 0:
        raise RuntimeError(f"{part} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median(values) -> float:
    return float(np.median(values))


def _ratio(ours, raw) -> float:
    """Median of the per-repeat ratios (raw and skknn ran back to back)."""
    return _median(np.asarray(ours) / np.asarray(raw))


def _voter_total(r: dict, who: str) -> list:
    return [f + p for f, p in zip(r[who]["fit"], r[who]["predict"])]


def _row(label: str, part: str, r: dict) -> str:
    if part in ("voter", "exact"):
        raw, ours = _voter_total(r, "raw"), _voter_total(r, "ours")
        fit = _ratio(r["ours"]["fit"], r["raw"]["fit"])
        pred = _ratio(r["ours"]["predict"], r["raw"]["predict"])
        # timeit's reading: the fastest repeat of each side is the run the
        # machine disturbed least
        best = min(ours) / min(raw)
        extra = (
            f"fit alone {fit:.2f}x, predict alone {pred:.3f}x, best of each "
            f"{best:.3f}x; same predictions {100 * r['agree']:.2f}%"
        )
    elif part == "pruning":
        raw, ours = r["raw"], r["ours"]
        extra = f"same counts {100 * r['agree']:.2f}%"
    else:
        raw, ours = r["raw"], r["ours"]
        extra = (
            f"LogisticRegression {_median(r['lr']):.2f} s ({r['iter']} "
            f"iterations) + leave-one-out search {_median(r['loo']):.2f} s"
        )
    load = "{:.1f} -> {:.1f}".format(*r["load"])
    return (
        f"| {label} | {load} | {_median(raw):.3f} | {_median(ours):.3f} | "
        f"**{_ratio(ours, raw):.3f}x** | {extra} |"
    )


TARGETS = {
    "voter": "flat cosine plurality fit + predict / raw FAISS (target <= 1.05x)",
    "exact": 'index="exact" fit + predict / raw FAISS (target <= 1.15x)',
    "pruning": "hard pruning m = 100 / raw FAISS leave-one-out (target <= 1.05x)",
    "joint": "JointKNNClassifier.fit / its floor (target <= 1.5x)",
    "joint_separable": "JointKNNClassifier.fit / its floor, separable classes "
    "(target <= 1.5x)",
}


def _breakdown_table(results: dict) -> str:
    """Median seconds per step of skknn's flat fit + predict, per configuration."""
    keys = [key for key in results if key[1] == "voter"]
    if not keys:
        return ""
    labels = sorted({lab for key in keys for lab in results[key]["breakdown"]})
    head = "| step | " + " | ".join(f"{k[0]}, {k[2]}, {k[3]}" for k in keys) + " |"
    lines = [head, "|---" * (len(keys) + 1) + "|"]
    for lab in labels:
        cells = [results[k]["breakdown"].get(lab) for k in keys]
        lines.append(f"| {lab} | " + " | ".join(_cell(lab, c) for c in cells) + " |")
    for name in ("fit", "search", "vote"):
        cells = [_median(results[k]["raw"][name]) for k in keys]
        lines.append(
            f"| raw FAISS: {name} | "
            + " | ".join(f"{1e3 * c:.1f} ms" for c in cells)
            + " |"
        )
    return "\n".join(lines)


def _cell(label: str, value) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if label == RESEARCHED else f"{1e3 * value:.1f} ms"


def _machine() -> str:
    import faiss

    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    flags = Path("/proc/cpuinfo").read_text()
    simd = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "SSE"
    level = getattr(getattr(faiss, "SIMDConfig", None), "get_level_name", None)
    return (
        f"{model}, {os.cpu_count()} cores, {simd}; FAISS compile options "
        f"`{faiss.get_compile_options()}`, SIMD level "
        f"{level() if level else 'n/a'}"
    )


def _make_data(tmp: Path, args) -> None:
    X, y = clustered_unit_vectors(args.n + args.queries, 384, 300, seed=0)
    np.save(tmp / "X.npy", X[: args.n])
    np.save(tmp / "y.npy", y[: args.n])
    np.save(tmp / "Q.npy", X[args.n :])
    PX, Py = clustered_unit_vectors(args.prune_n, 384, 300, seed=1)
    np.save(tmp / "PX.npy", PX)
    np.save(tmp / "Py.npy", Py)
    from bench_joint import gaussian_classes

    for part, (d, n_classes, noise) in JOINT_DATA.items():
        JX, Jy, _, _, _ = gaussian_classes(args.joint_n, d, n_classes, noise=noise)
        np.save(tmp / f"{part}_X.npy", JX)
        np.save(tmp / f"{part}_y.npy", Jy)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=PARTS)
    ap.add_argument("--data")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--loads", default="idle,loaded")
    ap.add_argument("--simd", default="native", help="native, avx2 or both: a,b")
    ap.add_argument(
        "--avx2-parts", default="voter,exact", help="the parts run with --simd avx2"
    )
    ap.add_argument("--old", help="also measure this checkout (PYTHONPATH)")
    ap.add_argument("--new", help="measure this checkout as 'after' (a snapshot)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=2_000)
    ap.add_argument("--prune-n", type=int, default=40_000)
    ap.add_argument("--joint-n", type=int, default=20_000)
    ap.add_argument("--quick", action="store_true", help="small sizes, no record")
    ap.add_argument("--write", action="store_true", help="record in RESULTS.md")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.data), args.repeats)))
        return
    if args.quick:
        args.n, args.queries, args.prune_n, args.joint_n = 20_000, 500, 5_000, 3_000
        args.repeats = 2
    parts = args.parts.split(",")
    checkouts = [("after", args.new)] + ([("before", args.old)] if args.old else [])
    results = {}
    start_load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _make_data(tmp, args)
        for simd in args.simd.split(","):
            for load in args.loads.split(","):
                for part in parts:
                    if simd == "avx2" and part not in args.avx2_parts.split(","):
                        continue
                    for name, path in checkouts:
                        key = (name, part, simd, load)
                        print(f"{key} ...", flush=True)
                        results[key] = _run(
                            part, tmp, args.repeats, path, simd, load == "loaded"
                        )
                        print(
                            "  " + _row(", ".join(key), part, results[key]), flush=True
                        )
    body = _report(results, args, start_load)
    print(body)
    if args.write and not args.quick:
        command = "python benchmarks/bench_ratios.py " + " ".join(sys.argv[1:])
        record("Speed ratios against raw FAISS (issue 23)", body, command.strip())


def _report(results: dict, args, start_load) -> str:
    lines = [
        f"{_machine()}.",
        "",
        f"Load average before the run {start_load[0]:.2f} / {start_load[1]:.2f} "
        f"(1 / 5 min), after it {os.getloadavg()[0]:.2f}; each row gives the 1-min "
        "load average as its process started and ended (the busy loop of "
        "'loaded' counts 1; other agents' test runs shared the 2 cores at "
        "times). Each row: one fresh process, raw FAISS and skknn back to back, "
        f"{args.repeats} repeats; seconds are medians, the ratio is the median of "
        "the per-repeat ratios.",
        "",
        f"Data: voter and exact {args.n:,} x 384 unit vectors (300 clusters), "
        f"{args.queries:,} queries, k = 50; pruning {args.prune_n:,} x 384, "
        f"m = 100; joint {args.joint_n:,} x 256 Gaussian classes (50, noise 6), "
        f"joint_separable {args.joint_n:,} x 512 (100 classes, noise 2); JOINT "
        "with its defaults (k = 50), its floor LogisticRegression() plus "
        "faiss.knn(X, X, k + 1).",
        "",
    ]
    for part in dict.fromkeys(key[1] for key in results):
        lines += [
            f"**{TARGETS[part]}**",
            "",
            "| checkout, simd, load | load average | raw s | skknn s | ratio | |",
            "|---|---|---|---|---|---|",
        ]
        for key, r in results.items():
            if key[1] == part:
                label = f"{key[0]}, {key[2]}, {key[3]}"
                lines.append(_row(label, part, r))
        lines.append("")
    table = _breakdown_table(results)
    if table:
        lines += [
            "Where the flat voter's time goes (median seconds of instrumented "
            "runs; steps nest: 'fit' holds 'fit: store.add', 'predict' holds the "
            "others):",
            "",
            table,
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
