"""Write the legacy-file fixtures of ``tests/test_legacy_files.py``.

These files were made ONCE, by skknn's committed code at

    872f7820969af86483c0d296d7dd2923040715e7  (main, 2026-12-04,
    "cli: build_parser one function per subcommand, ...")

before the internals moved into subpackages (issue 24: ``skknn/memory/``,
``voting/``, ``heads/``, ``features/``, ``app/``). They stand for what users
saved with that code: ``.skknn`` files, ``storage_path`` folders (float32 and
float16), a sharded memory's manifest and shard files, and joblib pickles of
every estimator. The tests check that today's code loads each of them and
answers as the old code did (``expected.npz``, computed right after fitting).

DO NOT RUN THIS SCRIPT AGAIN after the move: the point of the files is that old
code wrote them. Re-running it with new code would make the fixtures agree
with the new code by construction and the tests would guard nothing. Make a new
``tests/data/v4/`` (copy this script there) to add files of a later release.

How they were made, from the repository root (the committed code only, not a
working tree other edits were in flight in; ``git archive`` exports it)::

    rm -rf /tmp/skknn_src && mkdir /tmp/skknn_src
    git archive 872f782 skknn | tar -x -C /tmp/skknn_src
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/skknn_src \\
        python3 tests/data/v3/make_fixtures.py --commit 872f782

The script refuses to replace existing fixtures without ``--force``. It
writes, next to itself:

- ``<name>.skknn`` (``skknn.save``) and ``<name>.joblib`` (``joblib.dump``) of
  each estimator in ``ESTIMATORS``;
- ``transformer.joblib`` and ``extractor.joblib``: KNNTransformer and
  TorchFeatureExtractor, which ``skknn.save`` does not take (not registered);
- ``voter_sharded.skknn`` and its ``voter_sharded.skknn.*.shard*`` files: a
  ``backend="dask"`` memory of two shards, saved on an in-process Dask cluster
  (a sharded memory is not pickled, by design);
- ``folder_f32/`` and ``folder_f16/``: ``KNNVoter(storage_path=...)`` folders
  after a fit, a ``partial_fit``, an ``unlearn`` and a ``set_reliability``
  (their memories are not pickled, by design). The folders were fitted with a
  relative ``storage_path`` from this directory, so no absolute path is
  recorded in them (a reopened folder uses the path it is opened at anyway);
- ``expected.npz``: the data and every answer, keyed ``<name>__<what>``;
- ``pickle_globals.txt``: every ``module:qualname`` the pickles name, the
  names alias modules must keep importable;
- ``made_by.json``: the commit and the library versions.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 0
N_TRAIN, N_QUERY, N_FEATURES = 180, 24, 12
WORDS = np.array(["ant", "bee", "cat"])
COARSE = np.array(["insect", "insect", "mammal"])


def make_data() -> dict:
    """Three overlapping Gaussian classes (so votes are not unanimous), the
    queries, extra rows for edits, and digit images for the fine-tuned model."""
    from sklearn.datasets import load_digits

    gen = np.random.default_rng(SEED)
    centers = gen.normal(scale=1.2, size=(3, N_FEATURES))
    y = gen.integers(0, 3, N_TRAIN + N_QUERY + 20)
    X = (centers[y] + gen.normal(size=(len(y), N_FEATURES))).astype(np.float32)
    digits, labels = load_digits(return_X_y=True)
    keep = np.flatnonzero(labels < 3)[:72]
    images = np.kron(digits[keep].reshape(-1, 8, 8) / 16.0, np.ones((4, 4)))
    return {
        "X": X[:N_TRAIN],
        "y": y[:N_TRAIN],
        "Q": X[N_TRAIN : N_TRAIN + N_QUERY],
        "X_more": X[N_TRAIN + N_QUERY :],
        "y_more": y[N_TRAIN + N_QUERY :],
        "images": images[:60].astype(np.float32),
        "image_labels": labels[keep][:60],
        "Q_images": images[60:].astype(np.float32),
    }


def _voter(**params):
    from skknn import KNNVoter

    return KNNVoter(**{"n_neighbors": 7, "device": "cpu", **params})


def _joint(**params):
    from skknn import JointKNNClassifier

    knn = _voter(index="exact", voting="softmax", preprocessing="center_l2")
    return JointKNNClassifier(knn, **{"device": "cpu", "random_state": 0, **params})


def fit_estimators(d: dict) -> dict:
    """Every estimator ``skknn.save`` and joblib take, fitted."""
    import pandas as pd

    from skknn import FineTunedJointClassifier, MemoryPruner, TorchFeatureExtractor

    X, y = d["X"], d["y"]
    words = WORDS[y]
    out = {}
    # An edited memory: own ids, sample weights, a new class, a removal and
    # reliabilities, all of which the file must keep.
    exact = _voter(index="exact")
    exact.fit(
        X[:150],
        words[:150],
        sample_ids=5000 + 3 * np.arange(150),
        sample_weight=np.where(np.arange(150) % 4 == 0, 2.0, 1.0),
    )
    exact.partial_fit(
        d["X_more"], np.where(d["y_more"] == 2, "dog", WORDS[d["y_more"]])
    )
    exact.partial_fit(X[150:], words[150:])
    exact.unlearn(exact.sample_ids_[[3, 40, 160]])
    exact.memory_.set_reliability(exact.sample_ids_[:4], [0.5, 0.25, 1.0, 0.75])
    out["voter_exact"] = exact
    # Feature names (fitted on a DataFrame), Euclidean distance voting.
    columns = [f"f{i}" for i in range(N_FEATURES)]
    out["voter_flat"] = _voter(
        index="flat",
        voting="distance",
        metric="euclidean",
        preprocessing=None,
        tie_break="lowest",
    ).fit(pd.DataFrame(X, columns=columns), y)
    out["voter_ivf"] = _voter(
        index="IVF4,Flat",
        index_params={"nprobe": 2},
        voting="softmax",
        preprocessing="center_l2",
    ).fit(X, words)
    # efSearch above the memory size: the search visits the whole graph, so the
    # graph an HNSW rebuild makes (threads add nodes in any order) does not
    # change the answers.
    out["voter_hnsw"] = _voter(
        index="HNSW16",
        index_params={"efSearch": 256},
        metric="sqeuclidean",
        voting="plurality",
    ).fit(X, y)
    out["voter_f16"] = _voter(index="exact", storage_dtype="float16").fit(X, y)
    out["voter_hier"] = _voter(index="exact", voting="plurality").fit(
        X, np.c_[COARSE[y], words]
    )
    out["joint"] = _joint().fit(X, y)
    out["joint_mlp"] = _joint(
        hidden_layer_sizes=(8,), solver="sgd", max_epochs=3, batch_size=16
    ).fit(X, y)
    out["pruner_hard"] = MemoryPruner(
        _voter(index="exact", voting="plurality"),
        mode="hard",
        n_neighbors=5,
        threshold=2,
    ).fit(X, y)
    out["pruner_soft"] = MemoryPruner(
        _voter(index="flat"), mode="soft", n_neighbors=5
    ).fit(X, words)
    out["pruner_joint"] = MemoryPruner(_joint(), mode="soft", n_neighbors=5).fit(X, y)
    out["finetuned"] = FineTunedJointClassifier(
        TorchFeatureExtractor("tiny-cnn", device="cpu"),
        _voter(n_neighbors=5, voting="softmax", preprocessing="center_l2"),
        max_epochs=2,
        batch_size=16,
        random_state=0,
    ).fit(d["images"], d["image_labels"])
    return out


def answers(name: str, est, d: dict) -> dict:
    """What an estimator answers now, keyed ``<name>__<what>``."""
    images = name == "finetuned"
    Q = d["Q_images"] if images else d["Q"]
    if name == "voter_flat":
        import pandas as pd

        Q = pd.DataFrame(Q, columns=est.feature_names_in_)
    out = {"predict": est.predict(Q)}
    proba = est.predict_proba(Q)
    if isinstance(proba, list):  # hierarchical labels: one array per level
        out.update({f"proba{i}": p for i, p in enumerate(proba)})
    else:
        out["proba"] = proba
    if hasattr(est, "kneighbors") and not images:
        out["dist"], out["ids"] = est.kneighbors(Q)
    for attr in ("sample_ids_", "wrong_counts_", "reliability_"):
        if hasattr(est, attr):
            out[attr.rstrip("_")] = getattr(est, attr)
    classes = est.classes_
    if isinstance(classes, list):
        out.update({f"classes{i}": c for i, c in enumerate(classes)})
    else:
        out["classes"] = classes
    return {f"{name}__{k}": np.asarray(v) for k, v in out.items()}


def transformer_and_extractor(d: dict) -> dict:
    from skknn import KNNTransformer, TorchFeatureExtractor

    transformer = KNNTransformer(n_neighbors=5, index="flat", device="cpu")
    extractor = TorchFeatureExtractor("tiny-cnn", device="cpu")
    return {
        "transformer": transformer.fit(d["X"]),
        "extractor": extractor.fit(d["images"][:1]),
    }


def transform_answers(name: str, est, d: dict) -> dict:
    if name == "extractor":
        return {f"{name}__transform": est.transform(d["Q_images"])}
    graph = est.transform(d["Q"])
    return {
        f"{name}__data": graph.data,
        f"{name}__indices": graph.indices,
        f"{name}__indptr": graph.indptr,
    }


def storage_folders(d: dict) -> dict:
    """``storage_path`` folders holding edits; returns their answers."""
    X, y = d["X"], d["y"]
    out = {}
    for name, dtype, index, labels in (
        ("folder_f32", "float32", "flat", WORDS[y]),
        ("folder_f16", "float16", "exact", y),
    ):
        # Relative to HERE (the cwd), so the record holds no absolute path.
        knn = _voter(index=index, storage_dtype=dtype, storage_path=name)
        knn.fit(X[:150], labels[:150])
        knn.partial_fit(X[150:], labels[150:])
        knn.unlearn(knn.sample_ids_[[0, 7, 155]])
        knn.memory_.set_reliability(knn.sample_ids_[:3], [0.5, 0.25, 0.75])
        out.update(answers(name, knn, d))
        del knn
        gc.collect()  # the folder's lock goes with the last reference
    return out


def sharded(d: dict) -> dict:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
        client.as_current(),
    ):
        knn = _voter(index="flat", backend="dask", n_shards=2)
        knn.fit(d["X"], WORDS[d["y"]])
        knn.save(HERE / "voter_sharded.skknn")
        return answers("voter_sharded", knn, d)


def pickle_globals(path: Path) -> set:
    """The ``module:qualname`` names a joblib pickle asks for."""
    import joblib
    from joblib import numpy_pickle

    seen = set()
    original = numpy_pickle.NumpyUnpickler.find_class

    def find_class(self, module, name):
        seen.add(f"{module}:{name}")
        return original(self, module, name)

    numpy_pickle.NumpyUnpickler.find_class = find_class
    try:
        joblib.load(path)
    finally:
        numpy_pickle.NumpyUnpickler.find_class = original
    return seen


def check_round_trip(name: str, d: dict, expected: dict, loaded) -> None:
    """The files answer as the estimator did, here, before they are kept."""
    got = (
        transform_answers(name, loaded, d)
        if name in ("transformer", "extractor")
        else answers(name, loaded, d)
    )
    for key, value in got.items():
        np.testing.assert_array_equal(value, expected[key], err_msg=key)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commit", required=True, help="the skknn commit running")
    parser.add_argument("--force", action="store_true", help="replace the files")
    args = parser.parse_args(argv)
    if (HERE / "expected.npz").exists() and not args.force:
        sys.exit(
            "The fixtures exist and must not be re-made by newer code (see the "
            "module docstring); pass --force only to re-make them with the "
            "commit named there."
        )
    os.chdir(HERE)
    for entry in HERE.iterdir():
        if entry.name != Path(__file__).name:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    import faiss
    import joblib
    import sklearn
    import torch

    import skknn

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    d = make_data()
    # The training images stay out (load_digits makes them again); the queries
    # and the rows edits add are kept.
    expected = {k: v for k, v in d.items() if k not in ("images", "image_labels")}
    estimators = fit_estimators(d)
    others = transformer_and_extractor(d)
    for name, est in estimators.items():
        expected.update(answers(name, est, d))
    for name, est in others.items():
        expected.update(transform_answers(name, est, d))
    expected.update(storage_folders(d))
    expected.update(sharded(d))
    names = set()
    for name, est in {**estimators, **others}.items():
        if name in estimators:
            est.save(HERE / f"{name}.skknn")
            check_round_trip(name, d, expected, skknn.load(HERE / f"{name}.skknn"))
        joblib.dump(est, HERE / f"{name}.joblib")
        check_round_trip(name, d, expected, joblib.load(HERE / f"{name}.joblib"))
        names |= pickle_globals(HERE / f"{name}.joblib")
    for name in ("folder_f32", "folder_f16"):
        shutil.copytree(HERE / name, Path("/tmp") / f"skknn_check_{name}")
        try:
            reopened = skknn.load(Path("/tmp") / f"skknn_check_{name}")
            check_round_trip(name, d, expected, reopened)
            del reopened
            gc.collect()
        finally:
            shutil.rmtree(Path("/tmp") / f"skknn_check_{name}")
    check_round_trip(
        "voter_sharded",
        d,
        expected,
        skknn.load(HERE / "voter_sharded.skknn", backend="local"),
    )
    np.savez_compressed(HERE / "expected.npz", **expected)
    (HERE / "pickle_globals.txt").write_text("\n".join(sorted(names)) + "\n")
    made_by = {
        "skknn_commit": args.commit,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "joblib": joblib.__version__,
        "machine": platform.machine(),
    }
    (HERE / "made_by.json").write_text(json.dumps(made_by, indent=1) + "\n")


if __name__ == "__main__":
    main()
