"""``skknn demo``: the visual-memory story on real MNIST digits embedded by the
pretrained EfficientNet-Lite0, and the MNIST-through-the-encoder helpers that
``skknn explain`` shares.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from skknn.app._mnist import DEMO_IMAGE_SIZE, embed, mnist_subset
from skknn.app._report import accuracy_table, neighbour_table, pct, step, table

QUICK_IMAGE_SIZE = 32
DEMO_N_SAMPLES = 5000
QUICK_N_SAMPLES = 1000


def set_threads(n: int | None) -> None:
    # The command is the application, so it may set torch's thread count: on a
    # CPU shared with other busy processes, fewer threads than cores avoids
    # OpenMP threads spinning while they wait for each other.
    if n is not None:
        import torch

        if n < 1:
            raise ValueError(f"--threads must be >= 1. Got {n} instead.")
        torch.set_num_threads(n)


# -- MNIST through the pretrained encoder ----------------------------------------
def _describe_encoder(layer: str | None, image_size: int, dim: int) -> str:
    where = f"feature map of {layer}" if layer else "final pooled embedding"
    return (
        f"encoder: EfficientNet-Lite0 (ImageNet weights, frozen), "
        f"{image_size}x{image_size} input, {where} ({dim}-d)"
    )


# -- skknn demo -----------------------------------------------------------------
def demo(args: argparse.Namespace) -> int:
    """A visual memory on real digits embedded by a pretrained EfficientNet-Lite0.

    Voting rules at several k from one retrieval, kNN against a linear probe and
    the JOINT head, a new class added without training, unlearning, pruning, one
    decision explained by its neighbours, hierarchical labels (a new two-digit
    number placed by its tens digit, then learned from a few exemplars) and
    out-of-distribution scores against images of another kind.
    """

    from skknn.datasets import stratified_split
    from skknn.evaluation import voting_accuracy_by_k
    from skknn.voter import KNNVoter

    set_threads(args.threads)
    n_samples = args.n_samples or (QUICK_N_SAMPLES if args.quick else DEMO_N_SAMPLES)
    size = args.image_size or (QUICK_IMAGE_SIZE if args.quick else DEMO_IMAGE_SIZE)
    layer = None if args.layer == "none" else args.layer
    t0 = time.perf_counter()
    images, X, y, name = mnist_subset(n_samples, args.seed)
    held = args.held_out_class
    if held not in y:
        raise ValueError(
            f"--held-out-class must be one of the labels {np.unique(y).tolist()}. "
            f"Got {held} instead."
        )
    E, t_embed = embed(images, size, layer)
    train, test = stratified_split(y, 0.2, seed=args.seed)
    print(f"skknn demo: {name}; memory {len(train):,} images, {len(test):,} queries")
    print(_describe_encoder(layer, size, E.shape[1]))
    print(
        f"embedded {len(y):,} images in {t_embed:.1f} s "
        f"({len(y) / t_embed:.0f} images/s)"
    )

    def new_voter():
        return KNNVoter(n_neighbors=10, voting="rank", preprocessing="center_l2")

    voter = new_voter().fit(E[train], y[train], sample_ids=train)

    step("(a) Accuracy (%) by voting rule and k, from one retrieval")
    acc = voting_accuracy_by_k(voter, E[test], y[test], max_k=100)
    print(accuracy_table(acc, ks=(1, 10, 50, 100)))

    step("(b) kNN against a linear probe on the same embeddings")
    _demo_probe(new_voter, X, E, y, train, test, args.seed)

    step(f"(c) Class {held} held out of memory, then added without training")
    voter = _demo_new_class(new_voter, E, y, train, test, held)

    step("(d) Unlearning")
    hits = _demo_unlearning(voter, E[test], y[test], args.seed)

    step("(e) Pruning unreliable memory samples (MemoryPruner, soft)")
    _demo_pruning(new_voter(), E[train], y[train], E[test], y[test], args.seed)

    step("(f) One decision explained by its neighbours")
    voter = new_voter().fit(E[train], y[train], sample_ids=train)
    q = _interesting_query(voter, E[test], args.query_index)
    expl = voter.explain(E[test][q : q + 1])
    pred = expl.prediction[0]
    p = expl.proba[0, np.searchsorted(expl.classes, pred)]
    print(
        f"query image {test[q]} (true label {y[test][q]}) -> predicted {pred} "
        f"(p = {p:.2f})"
    )
    print(neighbour_table(expl))

    step("(g) Hierarchy: new two-digit numbers placed by their tens digit")
    _demo_hierarchy(args, size, layer)

    step("(h) Out-of-distribution: distance to the k-th neighbour (score_samples)")
    _demo_ood(new_voter().fit(E[train], y[train]), E[test], size, layer)
    print(f"\ndone in {time.perf_counter() - t0:.1f} s")
    return 0 if hits == 0 else 1


def _demo_probe(new_voter, X, E, y, train, test, seed: int) -> None:
    """(b): kNN on pixels and on embeddings, the linear probe and JOINT."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from skknn.joint import JointKNNClassifier

    rows = []
    t = time.perf_counter()
    pixels = new_voter().fit(X[train], y[train])
    rows.append(
        [
            "kNN on raw pixels (k=10, rank)",
            pct(pixels.score(X[test], y[test])),
            f"{time.perf_counter() - t:.2f}",
        ]
    )
    t = time.perf_counter()
    voter = new_voter().fit(E[train], y[train], sample_ids=train)
    rows.append(
        [
            "kNN on embeddings (k=10, rank)",
            pct(voter.score(E[test], y[test])),
            f"{time.perf_counter() - t:.2f}",
        ]
    )
    t = time.perf_counter()
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    probe.fit(E[train], y[train])
    rows.append(
        [
            "linear probe (LogisticRegression)",
            pct(probe.score(E[test], y[test])),
            f"{time.perf_counter() - t:.2f}",
        ]
    )
    t = time.perf_counter()
    joint = JointKNNClassifier(
        knn=new_voter(), alpha=0.01, interpolation=0.5, random_state=seed
    ).fit(E[train], y[train])
    rows.append(
        [
            "JOINT (kNN-guided head, lambda=0.5)",
            pct(joint.score(E[test], y[test])),
            f"{time.perf_counter() - t:.2f}",
        ]
    )
    print(table(["method", "accuracy (%)", "fit (s)"], rows))


def _demo_new_class(new_voter, E, y, train, test, held):
    """(c): a class held out of memory, then added by partial_fit; returns the
    grown voter."""
    in_mem = train[y[train] != held]
    voter = new_voter().fit(E[in_mem], y[in_mem], sample_ids=in_mem)
    new = test[y[test] == held]
    before = np.mean(voter.predict(E[new]) == held)
    add = train[y[train] == held]
    t = time.perf_counter()
    voter.partial_fit(E[add], y[add], sample_ids=add)
    dt = time.perf_counter() - t
    after = np.mean(voter.predict(E[new]) == held)
    print(
        f"partial_fit of {len(add)} images of class {held}: {1e3 * dt:.1f} ms; "
        f"classes_ = {voter.classes_.tolist()}"
    )
    print(
        f"class-{held} queries recognised: {pct(before)}% before -> "
        f"{pct(after)}% after; all queries: {pct(voter.score(E[test], y[test]))}%"
    )
    return voter


def _demo_unlearning(voter, E_test, y_test, seed: int) -> int:
    """(d): unlearn a quarter of the memory (at most 500); returns how often an
    unlearned id still appears among neighbours (0 when unlearning works)."""
    rng = np.random.default_rng(seed)
    forget = rng.choice(
        voter.sample_ids_, size=min(500, voter.memory_.n_samples // 4), replace=False
    )
    t = time.perf_counter()
    voter.unlearn(forget)
    dt = time.perf_counter() - t
    k_check = min(100, voter.memory_.n_samples - 1)
    ids_q = voter.kneighbors(E_test, n_neighbors=k_check, return_distance=False)
    ids_m = voter.kneighbors(None, n_neighbors=k_check, return_distance=False)
    hits = int(np.isin(ids_q, forget).sum() + np.isin(ids_m, forget).sum())
    print(
        f"unlearned {len(forget)} images in {1e3 * dt:.1f} ms; memory now "
        f"{voter.memory_.n_samples:,} images"
    )
    print(
        f"appearances of unlearned ids among the {k_check} nearest neighbours of "
        f"every query and every memory sample: {hits}"
    )
    print(f"accuracy after unlearning: {pct(voter.score(E_test, y_test))}%")
    return hits


# Ten two-digit numbers held out of memory, one per tens digit.
HELD_OUT_NUMBERS = (7, 13, 26, 38, 41, 55, 62, 79, 84, 90)


def _demo_hierarchy(args, size: int, layer: str | None) -> None:
    """[VM] 3.6 on pairs of real MNIST digits, labels (tens digit, number)."""
    from skknn.datasets import load_two_digit_mnist
    from skknn.voter import KNNVoter

    n_train, n_test = (2000, 500) if args.quick else (6000, 1500)
    img, y, img_q, y_q = load_two_digit_mnist(n_train, n_test, seed=args.seed)
    E, _ = embed(np.concatenate([img, img_q]), (size, 2 * size), layer)
    E, E_q = E[:n_train], E[n_train:]
    Y, Y_q = np.c_[y // 10, y], np.c_[y_q // 10, y_q]
    held = np.asarray(HELD_OUT_NUMBERS)
    in_memory = ~np.isin(y, held)
    queries = np.isin(y_q, held)
    voter = KNNVoter(10, voting="rank", preprocessing="center_l2")
    voter.fit(E[in_memory], Y[in_memory], sample_ids=np.flatnonzero(in_memory))
    print(
        f"memory: {in_memory.sum():,} images of two MNIST digits (00-99 without "
        f"{', '.join(f'{n:02d}' for n in held)}); labels (tens digit, number)"
    )
    rows, added = [], 0
    for n_exemplars in (0, 1, 5, 20):
        new = np.concatenate([np.flatnonzero(y == c)[added:n_exemplars] for c in held])
        if new.size:
            voter.partial_fit(E[new], Y[new], sample_ids=new)
        added = n_exemplars
        pred = voter.predict(E_q[queries])
        rows.append(
            [
                str(n_exemplars),
                pct(np.mean(pred[:, 0] == Y_q[queries, 0])),
                pct(np.mean(pred[:, 1] == Y_q[queries, 1])),
            ]
        )
    print(
        f"{queries.sum()} queries of the ten new numbers; chance is 10% for the "
        "tens digit, 1% for the number"
    )
    print(
        table(
            ["exemplars per new number", "tens digit (%)", "number (%)"],
            rows,
        )
    )


def _demo_ood(voter, E_in: np.ndarray, size: int, layer: str | None) -> None:
    """AUROC of -d_k: MNIST test digits against LFW crops (faces and not)."""
    from skknn.datasets import load_lfw_faces
    from skknn.evaluation import ood_auroc

    crops, _ = load_lfw_faces()
    E_out, _ = embed(crops, size, layer)
    auroc = ood_auroc(voter, E_in, E_out, ks=(1, 10, 50))
    print(
        f"{len(E_in)} MNIST test digits (in distribution) against {len(E_out)} "
        "LFW crops of faces and backgrounds (another kind of image)"
    )
    print(table(["k", "AUROC"], [[str(k), f"{a:.3f}"] for k, a in auroc.items()]))


def _demo_pruning(voter, X_train, y_train, X_test, y_test, seed: int) -> None:
    from skknn.pruning import MemoryPruner

    rng = np.random.default_rng(seed)
    y_noisy = y_train.copy()
    flip = rng.random(len(y_train)) < 0.2
    classes = np.unique(y_train)
    # Each flipped label moves to a different class, chosen at random.
    shift = rng.integers(1, len(classes), flip.sum())
    codes = np.searchsorted(classes, y_noisy[flip])
    y_noisy[flip] = classes[(codes + shift) % len(classes)]
    rows = []
    for what, labels in (("clean", y_train), ("20% flipped", y_noisy)):
        base = voter.fit(X_train, labels).score(X_test, y_test)
        pruner = MemoryPruner(voter, mode="soft").fit(X_train, labels)
        rows.append(
            [
                what,
                pct(base),
                pct(pruner.score(X_test, y_test)),
                f"{len(pruner.pruned_ids_):,}",
            ]
        )
    print(
        table(
            ["memory labels", "no pruning (%)", "soft pruning (%)", "down-weighted"],
            rows,
        )
    )


def _interesting_query(voter, Q: np.ndarray, index: int | None) -> int:
    """``index``, or the first query whose neighbours disagree (else query 0)."""
    if index is not None:
        if not 0 <= index < len(Q):
            raise ValueError(
                f"--query-index must be in [0, {len(Q) - 1}]. Got {index} instead."
            )
        return index
    labels = voter.explain(Q[:200]).neighbor_labels
    mixed = np.flatnonzero((labels != labels[:, :1]).any(axis=1))
    return int(mixed[0]) if len(mixed) else 0
