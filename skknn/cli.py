"""The ``skknn`` command: ``skknn demo``, ``skknn evaluate`` and ``skknn explain``.

``demo`` tells the visual-memory story on real offline images embedded by a
pretrained EfficientNet-Lite0; ``evaluate`` scores every voting rule at every k
on embedding files with one retrieval; ``explain`` draws a query and its nearest
memory images as a PNG gallery. Expected failures (missing files, malformed
input, missing optional packages) print one line on stderr and exit with 2.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np

# MNIST digits through EfficientNet-Lite0 (ImageNet weights), 5,000 digits split
# 80/20, KNNVoter(10, "rank"); measured on 2 CPU cores (time for 5,000 images):
#   raw pixels                                   94.0%
#   final pooled embedding (1280-d), 64 px       85.7%  (128 px: 91.2%, 6x slower)
#   block 10 feature map, 32 px (448-d)          96.8%
#   block 10 feature map, 48 px (1008-d)         97.9%  <- demo default, 4 s
#   block 10 feature map, 64 px (1792-d)         98.6%  (2x slower)
# The last blocks hold ImageNet-specific features computed on 1-2 pixel maps at
# these sizes; the mid-level block-10 map keeps the layout of the strokes, and
# stopping the forward pass there makes it about 1.4x cheaper.
DEMO_IMAGE_SIZE = 48
QUICK_IMAGE_SIZE = 32
DEMO_LAYER = "_blocks.10"
DEMO_N_SAMPLES = 5000
QUICK_N_SAMPLES = 1000
TABLE_KS = (1, 10, 20, 50, 100, 200, 500, 1000)


# -- output helpers -------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    # First column left-aligned (names), the others right-aligned (numbers).
    fmt = "  ".join(
        f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths)
    )
    line = "  ".join("-" * w for w in widths)
    return "\n".join([fmt.format(*header), line, *(fmt.format(*r) for r in rows)])


def _step(title: str) -> None:
    print(f"\n== {title}")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _accuracy_table(acc: dict[str, np.ndarray], ks=None) -> str:
    """Rows = voting rules, columns = selected k, plus the best k ([VM] Table 1)."""
    n = len(next(iter(acc.values())))
    wanted = list(ks or TABLE_KS)
    ks = [k for k in wanted if k <= n]
    if n < max(wanted) and n not in ks:
        ks.append(n)  # the memory or --max-k capped k: show the largest k evaluated
    rows = []
    for rule, a in acc.items():
        best = int(np.argmax(a))
        rows.append(
            [rule, *(_pct(a[k - 1]) for k in ks), f"{_pct(a[best])} @ k={best + 1}"]
        )
    return _table(["voting", *(f"k={k}" for k in ks), "best"], rows)


def _neighbour_table(expl, q: int = 0) -> str:
    rows = [
        [
            str(r + 1),
            str(expl.neighbor_ids[q, r]),
            str(expl.neighbor_labels[q, r]),
            f"{expl.distances[q, r]:.4f}",
            f"{expl.weights[q, r]:.3f}",
        ]
        for r in range(expl.neighbor_ids.shape[1])
    ]
    return _table(["rank", "sample id", "label", "distance", "vote share"], rows)


def _set_threads(n: int | None) -> None:
    # The command is the application, so it may set torch's thread count: on a
    # CPU shared with other busy processes, fewer threads than cores avoids
    # OpenMP threads spinning while they wait for each other.
    if n is not None:
        import torch

        if n < 1:
            raise ValueError(f"--threads must be >= 1. Got {n} instead.")
        torch.set_num_threads(n)


# -- MNIST through the pretrained encoder ----------------------------------------
def _mnist_subset(n_samples: int, seed: int):
    """MNIST images (n, side, side), flat pixels, labels and the data set's name."""
    from sklearn.model_selection import train_test_split

    from skknn.datasets import load_mnist

    if n_samples < 200:
        raise ValueError(f"--n-samples must be >= 200. Got {n_samples} instead.")
    X, y, name = load_mnist()
    if n_samples < len(y):
        keep, _ = train_test_split(
            np.arange(len(y)), train_size=n_samples, stratify=y, random_state=seed
        )
        keep = np.sort(keep)
        X, y = X[keep], y[keep]
    side = round(np.sqrt(X.shape[1]))
    return X.reshape(-1, side, side), X, y, name


def _embed(images, image_size: int | None, layer: str | None, batch_size: int = 128):
    """Embeddings of ``images`` by EfficientNet-Lite0, and the seconds it took."""
    from skknn.features import TorchFeatureExtractor

    extractor = TorchFeatureExtractor(
        "efficientnet-lite0",
        layer=layer,
        pooling="none" if layer else "avg",
        image_size=image_size,
        batch_size=batch_size,
        progress=True,
    )
    t = time.perf_counter()
    E = extractor.fit(images[:1]).transform(images)
    return E, time.perf_counter() - t


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
    the JOINT head, a new class added without training, unlearning, pruning, and
    one decision explained by its neighbours.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from skknn.datasets import stratified_split
    from skknn.evaluation import voting_accuracy_by_k
    from skknn.joint import JointKNNClassifier
    from skknn.voter import KNNVoter

    _set_threads(args.threads)
    n_samples = args.n_samples or (QUICK_N_SAMPLES if args.quick else DEMO_N_SAMPLES)
    size = args.image_size or (QUICK_IMAGE_SIZE if args.quick else DEMO_IMAGE_SIZE)
    layer = None if args.layer == "none" else args.layer
    t0 = time.perf_counter()
    images, X, y, name = _mnist_subset(n_samples, args.seed)
    held = args.held_out_class
    if held not in y:
        raise ValueError(
            f"--held-out-class must be one of the labels {np.unique(y).tolist()}. "
            f"Got {held} instead."
        )
    E, t_embed = _embed(images, size, layer)
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

    _step("(a) Accuracy (%) by voting rule and k, from one retrieval")
    acc = voting_accuracy_by_k(voter, E[test], y[test], max_k=100)
    print(_accuracy_table(acc, ks=(1, 10, 50, 100)))

    _step("(b) kNN against a linear probe on the same embeddings")
    rows = []
    t = time.perf_counter()
    pixels = new_voter().fit(X[train], y[train])
    rows.append(
        [
            "kNN on raw pixels (k=10, rank)",
            _pct(pixels.score(X[test], y[test])),
            f"{time.perf_counter() - t:.2f}",
        ]
    )
    t = time.perf_counter()
    voter = new_voter().fit(E[train], y[train], sample_ids=train)
    rows.append(
        [
            "kNN on embeddings (k=10, rank)",
            _pct(voter.score(E[test], y[test])),
            f"{time.perf_counter() - t:.2f}",
        ]
    )
    t = time.perf_counter()
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    probe.fit(E[train], y[train])
    rows.append(
        [
            "linear probe (LogisticRegression)",
            _pct(probe.score(E[test], y[test])),
            f"{time.perf_counter() - t:.2f}",
        ]
    )
    t = time.perf_counter()
    joint = JointKNNClassifier(
        knn=new_voter(), alpha=0.01, interpolation=0.5, random_state=args.seed
    ).fit(E[train], y[train])
    rows.append(
        [
            "JOINT (kNN-guided head, lambda=0.5)",
            _pct(joint.score(E[test], y[test])),
            f"{time.perf_counter() - t:.2f}",
        ]
    )
    print(_table(["method", "accuracy (%)", "fit (s)"], rows))

    _step(f"(c) Class {held} held out of memory, then added without training")
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
        f"class-{held} queries recognised: {_pct(before)}% before -> "
        f"{_pct(after)}% after; all queries: {_pct(voter.score(E[test], y[test]))}%"
    )

    _step("(d) Unlearning")
    rng = np.random.default_rng(args.seed)
    forget = rng.choice(
        voter.sample_ids_, size=min(500, voter.memory_.n_samples // 4), replace=False
    )
    t = time.perf_counter()
    voter.unlearn(forget)
    dt = time.perf_counter() - t
    k_check = min(100, voter.memory_.n_samples - 1)
    ids_q = voter.kneighbors(E[test], n_neighbors=k_check, return_distance=False)
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
    print(f"accuracy after unlearning: {_pct(voter.score(E[test], y[test]))}%")

    _step("(e) Pruning unreliable memory samples (MemoryPruner, soft)")
    _demo_pruning(new_voter(), E[train], y[train], E[test], y[test], args.seed)

    _step("(f) One decision explained by its neighbours")
    voter = new_voter().fit(E[train], y[train], sample_ids=train)
    q = _interesting_query(voter, E[test], args.query_index)
    expl = voter.explain(E[test][q : q + 1])
    pred = expl.prediction[0]
    p = expl.proba[0, np.searchsorted(expl.classes, pred)]
    print(
        f"query image {test[q]} (true label {y[test][q]}) -> predicted {pred} "
        f"(p = {p:.2f})"
    )
    print(_neighbour_table(expl))
    print(f"\ndone in {time.perf_counter() - t0:.1f} s")
    return 0 if hits == 0 else 1


def _demo_pruning(voter, X_train, y_train, X_test, y_test, seed: int) -> None:
    try:
        from skknn.pruning import MemoryPruner
    except ImportError:  # the module is optional while it is being written
        print("pruning: not available")
        return
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
                _pct(base),
                _pct(pruner.score(X_test, y_test)),
                f"{len(pruner.pruned_ids_):,}",
            ]
        )
    print(
        _table(
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


# -- skknn evaluate ---------------------------------------------------------------
def _voter_from_args(args: argparse.Namespace, n_neighbors: int, voting="rank"):
    from skknn.voter import KNNVoter

    return KNNVoter(
        n_neighbors=n_neighbors,
        voting=voting,
        temperature=args.temperature,
        rank_offset=args.rank_offset,
        metric=args.metric,
        preprocessing=None if args.preprocessing == "none" else args.preprocessing,
        index=args.index,
    )


def evaluate(args: argparse.Namespace) -> int:
    """Accuracy of every voting rule at every k up to --max-k, from one retrieval.

    Embedding files: ``.npz`` with arrays X and y; two ``.npy`` files joined by a
    comma (``X.npy,y.npy``); or parquet with a ``y``/``label`` column and either
    one list column or numeric embedding columns (needs pyarrow).
    """
    from skknn import _voting
    from skknn.datasets import load_embeddings
    from skknn.evaluation import voting_accuracy_by_k

    if args.max_k < 1:
        raise ValueError(f"--max-k must be >= 1. Got {args.max_k} instead.")
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"--out must end in .csv or .json. Got {str(out)!r} instead.")
    if args.plot:
        from skknn._gallery import _figure

        _figure(10, 10)  # fails now, not after the search, without matplotlib
    X_mem, y_mem = load_embeddings(args.memory, label_column=args.label_column)
    X_q, y_q = load_embeddings(args.queries, label_column=args.label_column)
    if X_mem.shape[1] != X_q.shape[1]:
        raise ValueError(
            f"The memory embeddings have {X_mem.shape[1]} features but the queries "
            f"have {X_q.shape[1]}."
        )
    voter = _voter_from_args(args, n_neighbors=args.max_k)
    t = time.perf_counter()
    voter.fit(X_mem, y_mem)
    acc = voting_accuracy_by_k(
        voter, X_q, y_q, max_k=args.max_k, votings=_voting.VOTING_RULES
    )
    dt = time.perf_counter() - t
    n_k = len(next(iter(acc.values())))
    unknown = int((~np.isin(y_q, voter.classes_)).sum())
    print(
        f"memory {len(y_mem):,} x {X_mem.shape[1]} ({len(voter.classes_)} classes), "
        f"queries {len(y_q):,}; one retrieval of {n_k} neighbours "
        f"({voter.engine_}, {args.metric}) in {dt:.2f} s"
    )
    if unknown:
        print(f"note: {unknown} queries have labels absent from the memory (errors)")
    print("\nAccuracy (%) by voting rule and k")
    ks = TABLE_KS if args.k is None else _parse_ks(args.k)
    print(_accuracy_table(acc, ks))
    if out is not None:
        _write_results(out, acc, args, len(y_mem), len(y_q))
        print(f"\nwrote {out} (accuracy at k = 1..{n_k})")
    if args.plot:
        from skknn._gallery import plot_accuracy_by_k

        plot_accuracy_by_k(
            args.plot,
            acc,
            title=f"{Path(args.queries).name} against {Path(args.memory).name}",
        )
        print(f"wrote {args.plot}")
    return 0


def _parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise ValueError(
            f"--k must be comma-separated integers, e.g. 1,10,50. Got {text!r}."
        ) from None
    if not ks or ks[0] < 1:
        raise ValueError(f"--k must list integers >= 1. Got {text!r}.")
    return ks


def _write_results(out: Path, acc, args, n_memory: int, n_queries: int) -> None:
    rules = list(acc)
    n_k = len(acc[rules[0]])
    if out.suffix.lower() == ".csv":
        lines = [",".join(["k", *rules])]
        for k in range(1, n_k + 1):
            lines.append(
                ",".join([str(k), *(repr(float(acc[r][k - 1])) for r in rules)])
            )
        out.write_text("\n".join(lines) + "\n")
        return
    doc = {
        "memory": str(args.memory),
        "queries": str(args.queries),
        "n_memory": n_memory,
        "n_queries": n_queries,
        "params": {
            "metric": args.metric,
            "preprocessing": args.preprocessing,
            "index": args.index,
            "temperature": args.temperature,
            "rank_offset": args.rank_offset,
        },
        "k": list(range(1, n_k + 1)),
        "accuracy": {r: [float(a) for a in acc[r]] for r in rules},
        "best": {
            r: {"k": int(np.argmax(acc[r])) + 1, "accuracy": float(np.max(acc[r]))}
            for r in rules
        },
    }
    out.write_text(json.dumps(doc, indent=1) + "\n")


# -- skknn explain ----------------------------------------------------------------
def explain(args: argparse.Namespace) -> int:
    """Write a PNG gallery of a query image and its nearest memory images.

    By default the memory is MNIST embedded as in ``skknn demo`` and the query is
    a held-out test digit. With --images DIR the memory is the labelled images in
    DIR/<label>/<file>, embedded by EfficientNet-Lite0 at its own 224 px; the
    query is --query FILE, or image --query-index of DIR left out of memory.
    """
    from skknn._gallery import _figure, draw_gallery

    _figure(10, 10)  # fail before embedding anything when matplotlib is missing
    _set_threads(args.threads)
    if args.k < 1:
        raise ValueError(f"--k must be >= 1. Got {args.k} instead.")
    if args.query is not None and args.images is None:
        raise ValueError("--query needs --images DIR, the memory to search.")
    if args.images is None:
        memory, query = _explain_mnist(args)
    else:
        memory, query = _explain_folder(args)
    E_mem, y_mem, ids_mem, show = memory
    E_q, true_label, query_image = query
    voter = _voter_from_args(
        args, n_neighbors=min(args.k, len(y_mem)), voting=args.voting
    )
    voter.fit(E_mem, y_mem, sample_ids=ids_mem)
    expl = voter.explain(E_q[np.newaxis])
    ids = expl.neighbor_ids[0]
    pred = expl.prediction[0]
    width, height = draw_gallery(
        args.out,
        query_image,
        [show(i) for i in ids],
        expl.neighbor_labels[0],
        expl.weights[0],
        expl.distances[0],
        prediction=pred,
        true_label=true_label,
        neighbor_ids=ids,
    )
    truth = "" if true_label is None else f" (true label {true_label})"
    print(f"query{truth} -> predicted {pred}")
    print(_neighbour_table(expl))
    print(f"wrote {args.out} ({width}x{height} px)")
    return 0


def _explain_mnist(args):
    from skknn.datasets import stratified_split

    size = args.image_size or DEMO_IMAGE_SIZE
    layer = DEMO_LAYER if args.layer is None else args.layer
    layer = None if layer == "none" else layer
    images, _, y, name = _mnist_subset(args.n_samples, args.seed)
    train, test = stratified_split(y, 0.2, seed=args.seed)
    q = args.query_index
    if not 0 <= q < len(test):
        raise ValueError(
            f"--query-index must be in [0, {len(test) - 1}] (the {name} test "
            f"split). Got {q} instead."
        )
    E, _ = _embed(images, size, layer)
    print(f"memory: {len(train):,} {name} images; query: test image {q}")

    def show(sample_id):
        return images[sample_id]

    return (E[train], y[train], train, show), (E[test[q]], y[test[q]], images[test[q]])


def _read_rgb(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((160, 160))  # the gallery cells are 160 px wide
        return np.asarray(im)


def _explain_folder(args):
    from skknn.datasets import load_image_folder

    paths, labels = load_image_folder(args.images)
    layer = None if args.layer in (None, "none") else args.layer
    if args.query is not None:
        if not Path(args.query).is_file():
            raise FileNotFoundError(f"No such file: {args.query!r}.")
        E, _ = _embed([*paths, args.query], args.image_size, layer, batch_size=32)
        E_mem, y_mem, ids = E[:-1], labels, np.arange(len(paths))
        query = (E[-1], None, _read_rgb(args.query))
    else:
        q = args.query_index
        if not 0 <= q < len(paths):
            raise ValueError(
                f"--query-index must be in [0, {len(paths) - 1}] (images found in "
                f"{args.images}). Got {q} instead."
            )
        if len(paths) < 2:
            raise ValueError(f"{args.images!r} must hold at least 2 images.")
        E, _ = _embed(paths, args.image_size, layer, batch_size=32)
        # Leave the query out of memory, so it does not find itself.
        keep = np.flatnonzero(np.arange(len(paths)) != q)
        E_mem, y_mem, ids = E[keep], labels[keep], keep
        query = (E[q], labels[q], _read_rgb(paths[q]))
    print(f"memory: {len(y_mem):,} images from {args.images}")

    def show(sample_id):
        return _read_rgb(paths[sample_id])

    return (E_mem, y_mem, ids, show), query


# -- argument parsing -------------------------------------------------------------
def _add_voter_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("voting")
    g.add_argument(
        "--temperature",
        type=float,
        default=0.07,
        help="softmax voting temperature (default 0.07)",
    )
    g.add_argument(
        "--rank-offset",
        type=float,
        default=2.0,
        help="rank voting weights 1/(rank + offset) (default 2)",
    )
    g.add_argument(
        "--metric",
        default="cosine",
        choices=["cosine", "sqeuclidean", "euclidean"],
        help="distance between embeddings (default cosine)",
    )
    g.add_argument(
        "--preprocessing",
        default="l2",
        choices=["l2", "center_l2", "none"],
        help="embedding pre-processing (default l2)",
    )
    g.add_argument(
        "--index",
        default="auto",
        help="search engine: auto, exact, flat or a faiss.index_factory "
        "string such as HNSW32 (default auto)",
    )


def _add_encoder_options(p: argparse.ArgumentParser, *, demo: bool) -> None:
    g = p.add_argument_group("encoder")
    if demo:
        n_text = f"{DEMO_N_SAMPLES}, {QUICK_N_SAMPLES} with --quick"
        size_text = f"{DEMO_IMAGE_SIZE}, {QUICK_IMAGE_SIZE} with --quick"
        layer_text = DEMO_LAYER
    else:
        n_text = "2000"
        size_text = f"{DEMO_IMAGE_SIZE} for MNIST, 224 with --images"
        layer_text = f"{DEMO_LAYER} for MNIST, none with --images"
    g.add_argument(
        "--n-samples",
        type=int,
        default=None if demo else 2000,
        help=f"MNIST images used (default {n_text})",
    )
    g.add_argument(
        "--image-size",
        type=int,
        default=None,
        help=f"encoder input size in pixels (default {size_text})",
    )
    g.add_argument(
        "--layer",
        default=DEMO_LAYER if demo else None,
        help="EfficientNet-Lite0 submodule whose feature map is the embedding, "
        f"or 'none' for the final pooled embedding (default {layer_text})",
    )
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice)",
    )
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _doc(func) -> str:
    """A command's docstring as --help text: dedented, without reST markup."""
    return inspect.cleandoc(func.__doc__).replace("``", "")


def build_parser() -> argparse.ArgumentParser:
    """The ``skknn`` argument parser with its three subcommands."""
    parser = argparse.ArgumentParser(
        prog="skknn",
        description="Classification by retrieval from an editable memory "
        "of embeddings.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "demo",
        help="run the visual-memory demo on real offline images",
        description=_doc(demo),
        formatter_class=fmt,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_N_SAMPLES} images at {QUICK_IMAGE_SIZE} px: a few seconds",
    )
    p.add_argument(
        "--held-out-class",
        type=int,
        default=9,
        help="class left out of memory, then added (default 9)",
    )
    p.add_argument(
        "--query-index",
        type=int,
        default=None,
        help="test query explained in (f) (default: the first whose "
        "neighbours disagree)",
    )
    _add_encoder_options(p, demo=True)
    p.set_defaults(func=demo)

    p = sub.add_parser(
        "evaluate",
        help="accuracy of every voting rule at every k on embedding files",
        description=_doc(evaluate),
        formatter_class=fmt,
    )
    p.add_argument(
        "--memory",
        required=True,
        metavar="FILE",
        help="memory embeddings: X.npz, X.npy,y.npy or X.parquet",
    )
    p.add_argument(
        "--queries",
        required=True,
        metavar="FILE",
        help="query embeddings with true labels, same formats",
    )
    p.add_argument(
        "--max-k", type=int, default=100, help="largest k evaluated (default 100)"
    )
    p.add_argument(
        "--k",
        default=None,
        metavar="K1,K2,...",
        help="k shown in the printed table (default 1,10,20,50,100,...)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE.csv|FILE.json",
        help="write the accuracy at every k",
    )
    p.add_argument(
        "--plot",
        default=None,
        metavar="FILE.png",
        help="draw accuracy-vs-k curves (needs matplotlib)",
    )
    p.add_argument(
        "--label-column",
        default=None,
        help="label column of parquet files (default y or label)",
    )
    _add_voter_options(p)
    p.set_defaults(func=evaluate)

    p = sub.add_parser(
        "explain",
        help="PNG gallery of a query and its nearest memory images",
        description=_doc(explain),
        formatter_class=fmt,
    )
    p.add_argument(
        "--out", required=True, metavar="FILE.png", help="where the gallery is written"
    )
    p.add_argument(
        "--query-index",
        type=int,
        default=0,
        help="query: this MNIST test image, or this image of --images (default 0)",
    )
    p.add_argument("--k", type=int, default=8, help="neighbours shown (default 8)")
    p.add_argument(
        "--images",
        default=None,
        metavar="DIR",
        help="memory of labelled images: DIR/<label>/<image file>",
    )
    p.add_argument(
        "--query",
        default=None,
        metavar="FILE",
        help="query image file, searched in --images",
    )
    p.add_argument(
        "--voting",
        default="rank",
        choices=["plurality", "distance", "softmax", "rank"],
        help="voting rule (default rank)",
    )
    _add_voter_options(p)
    _add_encoder_options(p, demo=False)
    p.set_defaults(func=explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``skknn`` command; returns the exit status.

    Parameters
    ----------
    argv : list of str, default=None
        Arguments without the program name; None reads ``sys.argv``.

    Returns
    -------
    status : int
        0 on success, 1 when the demo's unlearning check fails, 2 on errors.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (OSError, ValueError, ImportError) as exc:
        # Expected failures: one line, no traceback.
        print(f"skknn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
