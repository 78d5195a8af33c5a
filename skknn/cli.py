"""The ``skknn`` command: ``skknn demo`` and friends."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    line = "  ".join("-" * w for w in widths)
    return "\n".join([fmt.format(*header), line, *(fmt.format(*r) for r in rows)])


def _step(title: str) -> None:
    print(f"\n== {title}")


def demo(args: argparse.Namespace) -> int:
    """A visual memory on real digits: voting rules, a new class, unlearning."""
    from skknn import KNNVoter
    from skknn.datasets import load_mnist, stratified_split
    from skknn.evaluation import voting_accuracy_by_k

    t0 = time.perf_counter()
    X, y, name = load_mnist()
    train, test = stratified_split(y, 0.2, seed=args.seed)
    held = args.held_out_class
    print(f"skknn demo: {name}; memory {len(train):,} samples, {len(test):,} queries")

    in_mem = train[y[train] != held]
    voter = KNNVoter(n_neighbors=10, voting="rank", preprocessing="center_l2")
    voter.fit(X[in_mem], y[in_mem], sample_ids=in_mem)
    print(
        f"memory built without class {held}: {voter.memory_.n_samples:,} samples, "
        f"engine {voter.engine_!r} on {voter.device_}"
    )

    _step("Accuracy by voting rule and k (one retrieval of 100 neighbours)")
    seen = test[y[test] != held]
    acc = voting_accuracy_by_k(voter, X[seen], y[seen], max_k=100)
    ks = [k for k in (1, 10, 50, 100) if k <= len(next(iter(acc.values())))]
    rows = [[rule] + [f"{100 * acc[rule][k - 1]:.1f}" for k in ks] for rule in acc]
    print(_table(["voting"] + [f"k={k}" for k in ks], rows))

    _step(f"Adding class {held} without training")
    new = test[y[test] == held]
    before = np.mean(voter.predict(X[new]) == held)
    add = train[y[train] == held]
    t = time.perf_counter()
    voter.partial_fit(X[add], y[add], sample_ids=add)
    dt = time.perf_counter() - t
    after = np.mean(voter.predict(X[new]) == held)
    print(
        f"partial_fit of {len(add)} samples of class {held}: {1e3 * dt:.1f} ms; "
        f"classes_ = {voter.classes_.tolist()}"
    )
    print(
        f"class-{held} queries recognised: {100 * before:.1f}% before -> "
        f"{100 * after:.1f}% after; "
        f"all queries: {100 * voter.score(X[test], y[test]):.1f}%"
    )

    _step("Unlearning")
    rng = np.random.default_rng(args.seed)
    forget = rng.choice(
        voter.sample_ids_, size=min(500, voter.memory_.n_samples // 4), replace=False
    )
    t = time.perf_counter()
    voter.unlearn(forget)
    dt = time.perf_counter() - t
    ids_q = voter.kneighbors(X[test], n_neighbors=100, return_distance=False)
    ids_m = voter.kneighbors(None, n_neighbors=100, return_distance=False)
    hits = int(np.isin(ids_q, forget).sum() + np.isin(ids_m, forget).sum())
    print(
        f"unlearned {len(forget)} samples in {1e3 * dt:.1f} ms; memory now "
        f"{voter.memory_.n_samples:,} samples"
    )
    print(
        f"appearances of unlearned ids among the 100 nearest neighbours of every "
        f"query and every memory sample: {hits}"
    )
    print(f"accuracy after unlearning: {100 * voter.score(X[test], y[test]):.1f}%")
    print(f"\ndone in {time.perf_counter() - t0:.1f} s")
    return 0 if hits == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skknn",
        description="Classification by retrieval from an editable memory "
        "of embeddings.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "demo",
        help="run the visual-memory demo on real offline data",
        description=demo.__doc__,
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--held-out-class",
        type=int,
        default=9,
        help="class left out of memory, then added (default 9)",
    )
    p.set_defaults(func=demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"skknn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
