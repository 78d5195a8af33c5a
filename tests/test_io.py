"""skknn.io: the registry, one save, files of earlier versions, the import rules."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import BaseEstimator

import skknn
from skknn import io

DATA = Path(__file__).parent / "data"
PACKAGE = Path(skknn.__file__).parent


def test_every_estimator_is_registered_and_saves_through_one_function():
    for cls in (skknn.KNNVoter, skknn.JointKNNClassifier, skknn.MemoryPruner):
        assert io.registered(cls.__name__) is cls
        assert cls.save is io.Persistable.save
    with pytest.raises(ValueError, match="not a skknn estimator"):
        io.registered("LogisticRegression")


def test_only_registered_classes_save(tmp_path):
    class Impostor(io.Persistable, BaseEstimator):
        def __skknn_save__(self):
            return {}, {}

    with pytest.raises(TypeError, match="skknn estimators"):
        Impostor().save(tmp_path / "x.skknn")


@pytest.fixture(scope="module")
def v1():
    """Files written by skknn 0.1 (format 1), with the answers it gave."""
    return np.load(DATA / "v1_expected.npz")


def test_version_1_voters_load_and_answer_as_before(v1):
    voter = skknn.load(DATA / "v1_voter_exact.skknn")
    np.testing.assert_allclose(
        voter.predict_proba(v1["Q"]), v1["voter_proba"], rtol=1e-6
    )
    np.testing.assert_array_equal(voter.sample_ids_, v1["voter_ids"])
    assert voter.mean_ is not None  # center_l2's centre came along
    ivf = skknn.load(DATA / "v1_voter_ivf.skknn")
    np.testing.assert_allclose(ivf.predict_proba(v1["Q"]), v1["ivf_proba"], rtol=1e-6)
    # Still editable; its raw vectors were never saved, and get() says so.
    voter.partial_fit(v1["X"][:2], ["a", "b"]).unlearn([3])
    with pytest.raises(ValueError, match=r"skknn 0\.1"):
        voter.memory_.get(voter.sample_ids_[:1])


def test_version_1_joint_and_pruner_load_and_answer_as_before(v1, tmp_path):
    joint = skknn.load(DATA / "v1_joint.skknn")
    np.testing.assert_allclose(
        joint.predict_proba(v1["Q"]), v1["joint_proba"], rtol=1e-6
    )
    # Its saved training inputs restored the raw vectors: retraining works.
    raw = joint.memory_.get(joint.knn_.sample_ids_).X
    np.testing.assert_allclose(raw, v1["X"], rtol=1e-5, atol=1e-5)
    joint.unlearn([0, 1])
    assert joint.memory_.n_samples == 118
    pruner = skknn.load(DATA / "v1_pruner.skknn")
    np.testing.assert_allclose(
        pruner.predict_proba(v1["Q"]), v1["pruner_proba"], rtol=1e-6
    )
    np.testing.assert_array_equal(pruner.wrong_counts_, v1["pruner_counts"])
    pruner.partial_fit(v1["X"][:3] + 0.05, ["a", "b", "c"])  # counts incrementally
    fresh = skknn.MemoryPruner(
        pruner.estimator, mode="hard", n_neighbors=4, threshold=2
    )
    fresh.fit(
        np.r_[v1["X"], v1["X"][:3] + 0.05],
        np.r_[np.array(["a", "b", "c"])[np.arange(120) % 3], ["a", "b", "c"]],
    )
    np.testing.assert_array_equal(pruner.wrong_counts_, fresh.wrong_counts_)
    # Saved again, the file is of the current format.
    pruner.save(tmp_path / "p.skknn")
    meta, _ = io.read_archive(tmp_path / "p.skknn")
    assert meta["version"] == io.VERSION


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


def test_io_imports_no_estimator():
    modules = {m for m, _ in _imports(PACKAGE / "io.py")}
    assert not modules & {"skknn.voter", "skknn.joint", "skknn.pruning"}


def test_no_module_imports_another_modules_private_names():
    offenders = [
        (path.name, module, name)
        for path in PACKAGE.glob("*.py")
        for module, names in _imports(path)
        if module.startswith("skknn")
        for name in names
        if name.startswith("_")
        and not name.startswith("__")
        and not (PACKAGE / f"{name}.py").exists()  # a private module is fine
    ]
    assert offenders == []


def test_only_the_store_reads_the_memorys_rows():
    """The store's arrays and row lookups are its own: no other module reaches
    for them on another object."""
    store_private = {"_X", "_y", "_ids", "_rel", "_excl", "_norm", "_rows_of", "_n"}
    offenders = []
    for path in PACKAGE.glob("*.py"):
        if path.name == "_store.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in store_private
                and not (isinstance(node.value, ast.Name) and node.value.id == "self")
            ):
                offenders.append((path.name, node.lineno, node.attr))
    assert offenders == []
