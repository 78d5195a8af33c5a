"""Files saved by earlier code load, answer as that code did, and take edits.

``tests/data/v3`` holds what skknn's main (commit 872f782, before issue 24 moved
the internals into subpackages) wrote: ``.skknn`` files of every saveable
estimator, ``storage_path`` folders in float32 and float16, a sharded memory,
joblib pickles of every estimator, and ``expected.npz``, the answers computed
right after fitting. ``tests/data/v3/make_fixtures.py`` made them once and must
not be run again by newer code (its docstring says why).

Each file is loaded, asked the same questions, and then edited (a
``partial_fit`` and an ``unlearn``): files are copied to ``tmp_path`` first
wherever loading or editing could write, so the committed fixtures never
change.

Comparisons are exact (``assert_array_equal``) for labels, ids, counts,
reliabilities and the probabilities of rank and plurality votes, which depend
on which neighbours come back and in what order, not on float rounding.
Distances, and the probabilities computed from them or from a torch head, are
float32 arithmetic redone at load time by BLAS, FAISS and torch kernels whose
summation order depends on the CPU's vector width and thread count; they are
compared with :func:`close` (a few float32 ulps) so the files pass on any
machine. The neighbours' ids, compared exactly, pin which samples vote. On the
machine that made the files every answer was bit for bit the same;
``SKKNN_LEGACY_BITWISE=1`` makes :func:`close` exact too, to check that a change
kept the arithmetic itself.
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import os
import shutil
from pathlib import Path

import joblib
import numpy as np
import pytest

import skknn
from tests.conftest import HAS_FAISS

V3 = Path(__file__).parent / "data" / "v3"
BITWISE = os.environ.get("SKKNN_LEGACY_BITWISE") == "1"
WORDS = np.array(["ant", "bee", "cat"])
COARSE = np.array(["insect", "insect", "mammal"])
NEW_IDS = np.array([90_001, 90_002, 90_003])

# name: (class, exact_proba). exact_proba: the probabilities come from a rank or
# plurality vote (no distance, no head), so they are compared bit for bit.
SAVED = {
    "voter_exact": ("KNNVoter", True),
    "voter_flat": ("KNNVoter", False),  # distance votes: exp(-d)
    "voter_ivf": ("KNNVoter", False),  # softmax votes
    "voter_hnsw": ("KNNVoter", True),
    "voter_f16": ("KNNVoter", True),
    "voter_hier": ("KNNVoter", True),
    "joint": ("JointKNNClassifier", False),  # a torch head, softmax kNN
    "joint_mlp": ("JointKNNClassifier", False),
    "pruner_hard": ("MemoryPruner", True),
    "pruner_soft": ("MemoryPruner", True),
    "pruner_joint": ("MemoryPruner", False),
    "finetuned": ("FineTunedJointClassifier", False),  # a torch backbone
}
# Saved by joblib only: skknn.save takes neither (not registered estimators).
PICKLED_ONLY = {"transformer": "KNNTransformer", "extractor": "TorchFeatureExtractor"}
FOLDERS = {"folder_f32": "float32", "folder_f16": "float16"}
VOTERS = [name for name, (cls, _) in SAVED.items() if cls == "KNNVoter"]
# Their memories hold FAISS indexes (the rest search with torch).
NEEDS_FAISS = {
    "voter_flat",
    "voter_ivf",
    "voter_hnsw",
    "pruner_soft",
    "finetuned",  # index="auto": FAISS flat when installed
    "transformer",
    "folder_f32",
    "voter_sharded",
}


def _params(names):
    return [
        pytest.param(
            name,
            marks=pytest.mark.skipif(
                name in NEEDS_FAISS and not HAS_FAISS, reason="saved with FAISS"
            ),
        )
        for name in names
    ]


@pytest.fixture(scope="module")
def expected():
    with np.load(V3 / "expected.npz") as saved:
        return dict(saved)


def close(actual, desired, err_msg=""):
    """Float32 results recomputed at load time: equal to a few ulps (see the
    module docstring for why not bit for bit), or exactly on request."""
    if BITWISE:
        np.testing.assert_array_equal(actual, desired, err_msg=err_msg)
    else:
        np.testing.assert_allclose(
            actual, desired, rtol=1e-5, atol=1e-6, err_msg=err_msg
        )


def _queries(name, est, e):
    if name in ("finetuned", "extractor"):
        return e["Q_images"]
    return _framed(est, e["Q"])


def _framed(est, X):
    """Rows as ``est`` was fitted: a DataFrame where it kept feature names."""
    if not hasattr(est, "feature_names_in_"):
        return X
    import pandas as pd

    return pd.DataFrame(X, columns=est.feature_names_in_)


def check_answers(name, est, e, exact_proba):
    """``est`` answers as the estimator saved as ``name`` did."""
    Q = _queries(name, est, e)
    want = {k.split("__", 1)[1]: v for k, v in e.items() if k.startswith(name + "__")}
    np.testing.assert_array_equal(est.predict(Q), want["predict"])
    proba = est.predict_proba(Q)
    same_proba = np.testing.assert_array_equal if exact_proba else close
    for i, level in enumerate(proba if isinstance(proba, list) else [proba]):
        key = f"proba{i}" if isinstance(proba, list) else "proba"
        same_proba(level, want[key], err_msg=key)
    classes = est.classes_
    for i, c in enumerate(classes if isinstance(classes, list) else [classes]):
        key = f"classes{i}" if isinstance(classes, list) else "classes"
        np.testing.assert_array_equal(c, want[key])
    if "ids" in want:
        dist, ids = est.kneighbors(Q)
        np.testing.assert_array_equal(ids, want["ids"])
        close(dist, want["dist"])
    for attr in ("sample_ids", "wrong_counts", "reliability"):
        if attr in want:
            np.testing.assert_array_equal(getattr(est, attr + "_"), want[attr])


def _labels_like(est, y):
    """Labels of the kind ``est`` was fitted with, for classes 0, 1, 2."""
    if getattr(est, "outputs_2d_", False):
        return np.c_[COARSE[y], WORDS[y]]
    classes = np.asarray(est.classes_)
    return classes[np.asarray(y) % len(classes)]  # a transformer's one class


def check_edits(name, est, e, exact_proba):
    """A loaded estimator still learns and unlearns: samples added then
    removed leave it answering as before; an old sample can be removed."""
    if name == "finetuned":
        rows, y = e["Q_images"][:3], np.array([0, 1, 2])
    else:
        rows, y = _framed(est, e["X_more"][:3]), e["y_more"][:3]
    edited = est.knn_ if name == "transformer" else est  # its memory's voter
    n = _memory(est).n_samples
    edited.partial_fit(rows, _labels_like(edited, y), sample_ids=NEW_IDS)
    assert _memory(est).n_samples == n + 3
    assert set(NEW_IDS) <= set(_memory(est).ids().tolist())
    edited.unlearn(NEW_IDS)
    assert _memory(est).n_samples == n
    if name == "transformer":
        graph = est.transform(e["Q"])
        np.testing.assert_array_equal(graph.indices, e["transformer__indices"])
        close(graph.data, e["transformer__data"])
    else:
        check_answers(name, est, e, exact_proba)
    old = _memory(est).ids()[0]
    edited.unlearn([old])
    assert old not in _memory(est).ids()
    assert _memory(est).n_samples == n - 1
    Q = _queries(name, est, e)
    if name == "transformer":
        assert est.transform(Q).shape == (len(Q), n - 1)
    else:
        assert est.predict(Q).shape[0] == len(Q)


def _memory(est):
    """The memory an estimator (or the estimator it wraps) votes from."""
    inner = getattr(est, "estimator_", est)
    return inner.memory_ if hasattr(inner, "memory_") else inner.knn_.memory_


def _copy(name, tmp_path):
    """The fixture's files, copied where loading and edits may write."""
    for path in V3.glob(name + ".*"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path / name


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        h.update(str(path.relative_to(root)).encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


# -- .skknn files --------------------------------------------------------------------
@pytest.mark.parametrize("name", _params(SAVED))
def test_saved_file_loads_and_answers_as_before(name, expected, tmp_path):
    cls, exact_proba = SAVED[name]
    est = skknn.load(_copy(name, tmp_path).with_suffix(".skknn"))
    assert type(est).__name__ == cls
    check_answers(name, est, expected, exact_proba)
    check_edits(name, est, expected, exact_proba)


@pytest.mark.parametrize("name", _params(SAVED))
def test_saved_file_loads_memory_mapped(name, expected, tmp_path):
    path = _copy(name, tmp_path).with_suffix(".skknn")
    est = skknn.load(path, mmap=True)
    check_answers(name, est, expected, SAVED[name][1])
    check_edits(name, est, expected, SAVED[name][1])  # edits copy into RAM


@pytest.mark.parametrize("name", _params(VOTERS))
def test_saved_voter_loads_into_a_storage_folder(name, expected, tmp_path):
    path = _copy(name, tmp_path).with_suffix(".skknn")
    est = skknn.load(path, storage_path=tmp_path / "folder")
    assert est.memory_.storage_folder.parent == tmp_path / "folder"
    check_answers(name, est, expected, SAVED[name][1])
    check_edits(name, est, expected, SAVED[name][1])


@pytest.mark.parametrize("name", _params(["voter_sharded"]))
def test_sharded_file_gathers_into_a_local_memory(name, expected, tmp_path):
    # The manifest names its shard files, found beside it (not by a path).
    est = skknn.load(_copy(name, tmp_path).with_suffix(".skknn"), backend="local")
    assert est.backend == "local"
    check_answers(name, est, expected, exact_proba=True)
    check_edits(name, est, expected, exact_proba=True)


# -- storage folders -----------------------------------------------------------------
@pytest.mark.parametrize("name", _params(FOLDERS))
def test_storage_folder_reopens_answers_and_keeps_edits(name, expected, tmp_path):
    before = _digest(V3 / name)
    folder = tmp_path / "copy"  # opening takes a lock and may tidy the folder
    shutil.copytree(V3 / name, folder)
    est = skknn.load(folder)
    assert isinstance(est, skknn.KNNVoter)
    assert est.storage_dtype == FOLDERS[name]
    assert est.memory_.storage_folder.parent == folder
    check_answers(name, est, expected, exact_proba=True)
    check_edits(name, est, expected, exact_proba=True)
    est.partial_fit(expected["X_more"][3:6], _labels_like(est, [0, 1, 2]))
    ids, proba = est.sample_ids_, est.predict_proba(expected["Q"])
    del est
    gc.collect()  # the folder's lock goes with the last reference to its memory
    again = skknn.load(folder)  # the edits were committed to the old folder
    np.testing.assert_array_equal(again.sample_ids_, ids)
    np.testing.assert_array_equal(again.predict_proba(expected["Q"]), proba)
    assert _digest(V3 / name) == before


# -- joblib pickles ------------------------------------------------------------------
@pytest.mark.parametrize("name", _params([*SAVED, *PICKLED_ONLY]))
def test_pickle_loads_and_answers_as_before(name, expected):
    est = joblib.load(V3 / f"{name}.joblib")
    cls = PICKLED_ONLY.get(name) or SAVED[name][0]
    assert type(est).__name__ == cls
    if name == "extractor":
        close(est.transform(expected["Q_images"]), expected["extractor__transform"])
    elif name == "transformer":
        graph = est.transform(expected["Q"])
        np.testing.assert_array_equal(graph.indices, expected["transformer__indices"])
        np.testing.assert_array_equal(graph.indptr, expected["transformer__indptr"])
        close(graph.data, expected["transformer__data"])
    else:
        check_answers(name, est, expected, SAVED[name][1])
    if name != "extractor":  # a feature extractor has no memory to edit
        check_edits(name, est, expected, SAVED.get(name, (None, True))[1])


def _pickled_names():
    lines = (V3 / "pickle_globals.txt").read_text().split()
    return [line for line in lines if line.startswith("skknn")]


@pytest.mark.parametrize("name", _pickled_names())
def test_every_class_the_pickles_name_still_imports(name):
    # Pickles name classes by module path: moved classes need alias modules.
    module, qualname = name.split(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    assert isinstance(obj, type)
