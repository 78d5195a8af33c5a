"""The ``skknn`` command: ``skknn demo``, ``skknn evaluate``, ``skknn explain``
and ``skknn audit``.

``demo`` tells the visual-memory story on real offline images embedded by a
pretrained EfficientNet-Lite0; ``evaluate`` scores every voting rule at every k
on embedding files with one retrieval; ``explain`` draws a query and its nearest
memory images as a PNG gallery; ``audit`` checks a saved model's edit log and
digest and scans its files for removed vectors (exit 1 when a check fails).
Expected failures (missing files, malformed
input, missing optional packages) print one line on stderr and exit with 2.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from skknn.app._demo import (
    DEMO_N_SAMPLES,
    QUICK_IMAGE_SIZE,
    QUICK_N_SAMPLES,
    demo,
    set_threads,
)
from skknn.app._mnist import DEMO_IMAGE_SIZE, DEMO_LAYER, embed, mnist_subset
from skknn.app._report import (
    TABLE_KS,
    accuracy_table,
    calibration_table,
    neighbour_table,
    pct,
    table,
)


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
    from skknn.datasets import load_embeddings
    from skknn.evaluation import (
        calibration_at_best_k,
        hit_rate_by_k,
        ood_auroc,
        voting_accuracy_by_k,
    )
    from skknn.voting import _rules

    ks, out = _check_evaluate_options(args)
    columns = _parse_columns(args.feature_columns)
    options = {"label_column": args.label_column, "feature_columns": columns}
    X_mem, y_mem = load_embeddings(args.memory, **options)
    X_q, y_q = load_embeddings(args.queries, **options)
    X_ood = _load_other(args.ood, X_mem.shape[1]) if args.ood else None
    if X_mem.shape[1] != X_q.shape[1]:
        raise ValueError(
            f"The memory embeddings have {X_mem.shape[1]} features but the queries "
            f"have {X_q.shape[1]}."
        )
    if ks is not None and ks[-1] > len(y_mem):
        raise ValueError(
            f"--k {ks[-1]} is above the memory size ({len(y_mem)} samples)."
        )
    if args.max_k > len(y_mem):
        print(
            f"note: --max-k {args.max_k} is above the memory size; k runs up to "
            f"{len(y_mem)}"
        )
    voter = _voter_from_args(args, n_neighbors=args.max_k)
    voter.fit(X_mem, y_mem)
    if args.tune is not None:
        _tune_and_print(voter, X_q, y_q, args.tune)
    t = time.perf_counter()
    nb = voter.neighbors(X_q, args.max_k)  # one retrieval serves every table
    acc = voting_accuracy_by_k(
        voter, X_q, y_q, max_k=args.max_k, votings=_rules.VOTING_RULES, neighbors=nb
    )
    hits = hit_rate_by_k(voter, X_q, y_q, max_k=args.max_k, neighbors=nb)
    calibration = calibration_at_best_k(voter, nb, y_q, acc)
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
    print("\nAccuracy (%) by voting rule and k; hit@k: the label among the k")
    ks = TABLE_KS if ks is None else ks
    print(accuracy_table({**acc, "hit@k": hits}, ks))
    print("\nCalibration: expected calibration error (15 bins) at each rule's best k")
    print(calibration_table(calibration))
    if X_ood is not None:
        auroc = ood_auroc(voter, X_q, X_ood, ks=(1, 10, 50, 100))
        print(f"\nOut of distribution: AUROC of -d_k, queries vs {Path(args.ood).name}")
        print(table(["k", *map(str, auroc)], [["AUROC", *map(_3, auroc.values())]]))
    scaling = _scaling(args, X_mem, y_mem, X_q, y_q) if args.scaling else None
    if out is not None:
        _write_results(out, acc, args, len(y_mem), len(y_q))
        print(f"\nwrote {out} (accuracy at k = 1..{n_k})")
    if args.plot:
        _plot_evaluation(args, acc, calibration, scaling)
    return 0


def _check_evaluate_options(args) -> tuple[list[int] | None, Path | None]:
    """``evaluate``'s options, every one checked before the (possibly long)
    search: the k shown and the output path."""
    if args.max_k < 1:
        raise ValueError(f"--max-k must be >= 1. Got {args.max_k} instead.")
    ks = None if args.k is None else _parse_ks(args.k)
    if ks is not None and ks[-1] > args.max_k:
        raise ValueError(
            f"--k {ks[-1]} is above --max-k {args.max_k}: raise --max-k to show it."
        )
    out = Path(args.out) if args.out else None
    if out is not None:
        _check_writable(out, "--out", (".csv", ".json"))
    if args.plot:
        from skknn.app._gallery import new_figure

        plot = Path(args.plot)
        _check_writable(plot, "--plot", (".png",))
        extras = ["reliability", "scaling"] if args.scaling else ["reliability"]
        for tag in extras:
            _check_writable(_with_suffix_name(plot, tag), "--plot", (".png",))
        new_figure(10, 10)  # fails now, not after the search, without matplotlib
    if args.tune is not None:
        if not 0 < args.tune <= 1:
            raise ValueError(f"--tune must be in (0, 1]. Got {args.tune} instead.")
        if args.index in ("auto", "exact", "flat"):
            raise ValueError(
                f"--tune needs an approximate --index (e.g. IVF256,PQ16); "
                f"{args.index!r} is an exact search."
            )
    return ks, out


def _tune_and_print(voter, X_q, y_q, target: float) -> None:
    """Tune the approximate index on the queries and print the table."""
    from skknn._tuning import tuning_table

    voter.tune_index(X_q, target)
    print(
        f"Tuning {voter.engine_}: prediction agreement with exact search and "
        f"recall@{voter.tuning_.n_neighbors} on {len(y_q):,} queries "
        "(* = chosen)"
    )
    print(
        table(
            ["index_params", "agreement (%)", "recall (%)", "queries/s"],
            tuning_table(voter.tuning_),
        )
    )
    print()


def _scaling(args, X_mem, y_mem, X_q, y_q):
    """Accuracy against memory size, printed with its power law."""
    from skknn.evaluation import memory_scaling

    scaling = memory_scaling(
        _voter_from_args(args, n_neighbors=min(args.max_k, 10)),
        X_mem,
        y_mem,
        X_q,
        y_q,
    )
    print("\nMemory scaling: accuracy (%) by memory size, mean of 3 draws")
    print(
        table(
            ["size", *map(str, scaling.sizes)],
            [["accuracy", *(pct(a) for a in scaling.accuracy.mean(axis=1))]],
        )
    )
    print(
        f"power law: log(err) = {scaling.intercept:.3f} {scaling.exponent:+.3f} log(N)"
    )
    return scaling


def _plot_evaluation(args, acc, calibration, scaling) -> None:
    """The accuracy, reliability and (with --scaling) scaling plots."""
    from skknn.app._gallery import plot_accuracy_by_k, plot_reliability, plot_scaling

    title = f"{Path(args.queries).name} against {Path(args.memory).name}"
    plot_accuracy_by_k(args.plot, acc, title=title)
    print(f"wrote {args.plot}")
    plot = Path(args.plot)
    extra = _with_suffix_name(plot, "reliability")
    plot_reliability(extra, calibration, title=f"Reliability: {title}")
    print(f"wrote {extra}")
    if scaling is not None:
        extra = _with_suffix_name(plot, "scaling")
        plot_scaling(extra, scaling, title=f"Memory scaling: {title}")
        print(f"wrote {extra}")


def _check_writable(path: Path, option: str, suffixes: tuple[str, ...]) -> None:
    """Refuse an output path before any work: the search can take minutes, and
    a bad path would only fail when the result is written."""
    if path.suffix.lower() not in suffixes:
        raise ValueError(
            f"{option} must end in {' or '.join(suffixes)}. Got {str(path)!r} instead."
        )
    if path.is_dir():
        raise ValueError(
            f"{option} must be a file name; {str(path)!r} is an existing folder "
            f"(write into it as {str(path / ('out' + path.suffix))!r})."
        )
    folder = path.parent  # Path("out.csv").parent is Path(".")
    if not folder.is_dir():
        raise ValueError(f"{option}: folder {str(folder)!r} does not exist.")
    if not os.access(folder, os.W_OK) or (
        path.exists() and not os.access(path, os.W_OK)
    ):
        raise ValueError(f"{option}: {str(path)!r} is not writable.")


def _with_suffix_name(path: Path, tag: str) -> Path:
    """``gallery.png`` -> ``gallery-<tag>.png``: the extra files a command
    writes next to its output."""
    return path.with_name(f"{path.stem}-{tag}{path.suffix}")


def _3(x: float) -> str:
    return f"{x:.3f}"


def _load_other(path: str, n_features: int) -> np.ndarray:
    """Embeddings of another kind for --ood: ``.npz`` with X (y ignored) or
    one ``.npy``."""
    try:
        data = np.load(path, allow_pickle=False)
        X = data["X"] if isinstance(data, np.lib.npyio.NpzFile) else data
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(
            f"--ood {path!r}: expected an .npz with array X or one .npy ({exc})."
        ) from exc
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ValueError(
            f"--ood {path!r} has shape {X.shape}; the memory has {n_features} features."
        )
    return X


def _parse_columns(text: str | None) -> list[str] | None:
    if text is None:
        return None
    columns = [c.strip() for c in text.split(",") if c.strip()]
    if not columns:
        raise ValueError("--feature-columns must name at least one column.")
    return columns


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
# What matplotlib's Agg canvas writes with its own dependencies (Pillow for JPEG).
_GALLERY_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


def explain(args: argparse.Namespace) -> int:
    """Write a PNG gallery of a query image and its nearest memory images.

    By default the memory is MNIST embedded as in ``skknn demo`` and the query is
    a held-out test digit. With --images DIR the memory is the labelled images in
    DIR/<label>/<file>, embedded by EfficientNet-Lite0 at its own 224 px; the
    query is --query FILE, or image --query-index of DIR left out of memory.
    """
    from skknn.app._gallery import draw_gallery, new_figure

    new_figure(10, 10)  # fail before embedding anything when matplotlib is missing
    out = Path(args.out)
    _check_writable(out, "--out", _GALLERY_SUFFIXES)  # before minutes of embedding
    if args.residual:
        _check_writable(_with_suffix_name(out, "residual"), "--out", _GALLERY_SUFFIXES)
    set_threads(args.threads)
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
    expl = voter.explain(E_q[np.newaxis], residual=args.residual)
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
    print(neighbour_table(expl))
    print(f"wrote {args.out} ({width}x{height} px)")
    if args.residual:
        # The residual phi(q) - phi(n1): what the query shows besides its
        # nearest neighbour (FORMULAS.md 7); its neighbours do not vote.
        out = _with_suffix_name(out, "residual")
        rids = expl.residual_ids[0]
        draw_gallery(
            out,
            query_image,
            [show(i) for i in rids],
            expl.residual_labels[0],
            None,
            expl.residual_distances[0],
            prediction=expl.residual_labels[0][0],
            neighbor_ids=rids,
            query_title="residual of query",
        )
        print(
            f"residual query: nearest label {expl.residual_labels[0][0]}; wrote {out}"
        )
    return 0


def _explain_mnist(args):
    from skknn.datasets import stratified_split

    size = args.image_size or DEMO_IMAGE_SIZE
    layer = DEMO_LAYER if args.layer is None else args.layer
    layer = None if layer == "none" else layer
    images, _, y, name = mnist_subset(args.n_samples, args.seed)
    train, test = stratified_split(y, 0.2, seed=args.seed)
    q = args.query_index
    if not 0 <= q < len(test):
        raise ValueError(
            f"--query-index must be in [0, {len(test) - 1}] (the {name} test "
            f"split). Got {q} instead."
        )
    E, _ = embed(images, size, layer)
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
        E, _ = embed([*paths, args.query], args.image_size, layer, batch_size=32)
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
        E, _ = embed(paths, args.image_size, layer, batch_size=32)
        # Leave the query out of memory, so it does not find itself.
        keep = np.flatnonzero(np.arange(len(paths)) != q)
        E_mem, y_mem, ids = E[keep], labels[keep], keep
        query = (E[q], labels[q], _read_rgb(paths[q]))
    print(f"memory: {len(y_mem):,} images from {args.images}")

    def show(sample_id):
        return _read_rgb(paths[sample_id])

    return (E_mem, y_mem, ids, show), query


# -- argument parsing -------------------------------------------------------------
def audit(args: argparse.Namespace) -> int:
    """Verify a saved model's deletion certificate.

    Checks the hash chain of the memory's edit log, recomputes the memory's
    digest from the stored bytes and compares it with the log's last entry,
    and scans every file of the model (a .skknn file or a storage folder; links
    are never followed) for the bytes of the removed vectors in every form the
    memory stores them. Exits 0 when every check passes, 1 when one fails
    (each failure printed with where it was found), 2 on errors.
    """
    from skknn._audit import audit as run_audit

    if args.json is not None:
        _check_writable(Path(args.json), "--json", (".json",))
    report = run_audit(args.path, removed=args.removed, log_head=args.log_head)
    if args.json is not None:
        report.to_json(args.json)
    print(f"audit of {report.path} ({report.estimator or 'not loaded'})")
    print(f"  edit log: {report.n_entries} entries, chain valid: {report.chain_valid}")
    print(f"  digest matches the log: {report.digest_matches}")
    print(f"  log head (keep as the certificate): {report.log_head}")
    if args.removed is not None:
        print(
            f"  removed vectors: {report.n_removed}, byte hits: {report.n_byte_hits} "
            f"in {len(report.files_scanned)} files ({report.bytes_scanned} bytes)"
        )
    if report.head is not None:
        print(
            "  head trained after the last deletion: "
            f"{report.head['trained_after_last_deletion']}"
        )
    for line in report.failures():
        print(f"  FAIL {line}")
    print("  OK" if report.ok else "  FAILED")
    return 0 if report.ok else 1


def _audit_options(p) -> None:
    p.add_argument("path", help="a model file (.skknn) or a storage folder")
    p.add_argument(
        "--removed",
        metavar="FILE.npy",
        help="the raw vectors that were deleted, one per row",
    )
    p.add_argument(
        "--log-head",
        metavar="HEX",
        help="the log head of an earlier audit: the log must still hold it",
    )
    p.add_argument(
        "--json", metavar="OUT.json", help="also write the report as JSON here"
    )


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
    """The ``skknn`` argument parser with its four subcommands."""
    parser = argparse.ArgumentParser(
        prog="skknn",
        description="Classification by retrieval from an editable memory "
        "of embeddings.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        demo: "run the visual-memory demo on real offline images",
        evaluate: "accuracy of every voting rule at every k on embedding files",
        explain: "PNG gallery of a query and its nearest memory images",
        audit: "verify a saved model's edit log, digest and deletions",
    }
    for func, help_ in commands.items():
        p = sub.add_parser(
            func.__name__,
            help=help_,
            description=_doc(func),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _OPTIONS[func](p)
        p.set_defaults(func=func)
    return parser


def _demo_options(p) -> None:
    """``skknn demo``: its options."""
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_N_SAMPLES} images at {QUICK_IMAGE_SIZE} px: about 10 s",
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


def _evaluate_options(p) -> None:
    """``skknn evaluate``: its options."""
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
    p.add_argument(
        "--ood",
        default=None,
        metavar="OTHER.npz",
        help="embeddings of another kind: AUROC of score_samples against the "
        "queries at k = 1, 10, 50, 100",
    )
    p.add_argument(
        "--scaling",
        action="store_true",
        help="accuracy against memory size (random subsets, log-spaced sizes, 3 "
        "draws) and the fitted power law log(err) = a + b log(N)",
    )
    p.add_argument(
        "--tune",
        nargs="?",
        type=float,
        const=0.99,
        default=None,
        metavar="TARGET",
        help="with an approximate --index: measure prediction agreement with "
        "exact search (RankVoting at k = --max-k) and recall on the queries for "
        "each nprobe/efSearch/refine, print the table and evaluate with the "
        "cheapest setting reaching TARGET (default 0.99)",
    )
    p.add_argument(
        "--feature-columns",
        default=None,
        metavar="C1,C2,...",
        help="embedding columns of parquet files (default: one list column, or "
        "every floating-point column)",
    )
    _add_voter_options(p)


def _explain_options(p) -> None:
    """``skknn explain``: its options."""
    p.add_argument(
        "--out",
        required=True,
        metavar="FILE.png",
        help="where the gallery is written (.png, .jpg, .pdf or .svg; checked "
        "before any embedding)",
    )
    p.add_argument(
        "--query-index",
        type=int,
        default=0,
        help="query: this MNIST test image, or this image of --images (default 0)",
    )
    p.add_argument("--k", type=int, default=8, help="neighbours shown (default 8)")
    p.add_argument(
        "--residual",
        action="store_true",
        help="also draw the neighbours of the residual query phi(q) - phi(n1) "
        "(a second concept of the image) to OUT-residual.png",
    )
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


# Each command's options, by the function that runs it.
_OPTIONS = {
    demo: _demo_options,
    evaluate: _evaluate_options,
    explain: _explain_options,
    audit: _audit_options,
}


def main(argv: list[str] | None = None) -> int:
    """Run the ``skknn`` command; returns the exit status.

    Parameters
    ----------
    argv : list of str, default=None
        Arguments without the program name; None reads ``sys.argv``.

    Returns
    -------
    status : int
        0 on success, 1 when the demo's unlearning check or an audit fails,
        2 on errors.
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
