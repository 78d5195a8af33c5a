"""skknn.io: the registry, one save, files of earlier versions, the import rules."""

from __future__ import annotations

import ast
import contextlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
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
        for path in PACKAGE.rglob("*.py")
        for module, names in _imports(path)
        if module.startswith("skknn")
        for name in names
        if name.startswith("_")
        and not name.startswith("__")
        # a private module (of the package or a subpackage) is fine
        and not PACKAGE.parent.joinpath(*module.split("."), f"{name}.py").exists()
    ]
    assert offenders == []


def test_only_the_store_reads_the_memorys_rows():
    """The rows' arrays and row lookups are the row backend's own
    (``LocalRows``): no other module reaches for them on another object."""
    store_private = {"_X", "_y", "_ids", "_rel", "_excl", "_norm", "_rows_of", "_n"}
    offenders = []
    own = {
        ("memory", "local.py"),
        ("memory", "local_search.py"),
    }  # the rows, their search
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts in own:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in store_private
                and not (isinstance(node.value, ast.Name) and node.value.id == "self")
            ):
                offenders.append((path.name, node.lineno, node.attr))
    assert offenders == []


# -- files ---------------------------------------------------------------------------
@pytest.fixture
def small_voter():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 4)).astype(np.float32)
    return skknn.KNNVoter(3, index="exact").fit(X, np.arange(30) % 3), X


def test_saved_files_follow_the_umask_like_any_new_file(small_voter, tmp_path):
    import os

    knn, _ = small_voter
    old = os.umask(0o022)
    try:
        knn.save(tmp_path / "a.skknn")
        os.umask(0o077)
        knn.save(tmp_path / "b.skknn")
    finally:
        os.umask(old)
    assert (tmp_path / "a.skknn").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.skknn").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_saving_to_a_folder_says_so(small_voter, tmp_path):
    knn, _ = small_voter
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        knn.save(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_crafted_next_id_cannot_reissue_ids(small_voter, tmp_path):
    import json
    import zipfile

    knn, _X = small_voter
    knn.save(tmp_path / "m.skknn")
    meta, arrays = io.read_archive(tmp_path / "m.skknn")
    meta["state"]["memory"]["next_id"] = 5  # below ids already stored
    io.write_archive(tmp_path / "bad.skknn", meta, arrays)
    with pytest.raises(ValueError, match=r"not a valid skknn model file.*next_id"):
        skknn.load(tmp_path / "bad.skknn")
    with zipfile.ZipFile(tmp_path / "bad.skknn") as zf:
        assert json.loads(zf.read("skknn.json"))["state"]["memory"]["next_id"] == 5


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**6) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=4,
)


def _paths(tree, prefix=()):
    """Every (path, value) in a JSON tree, depth first."""
    yield prefix, tree
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _paths(value, (*prefix, key))


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 4)).astype(np.float32)
    y = np.arange(40) % 3
    folder = tmp_path_factory.mktemp("fuzz")
    models = {
        "voter": skknn.KNNVoter(3, preprocessing="center_l2", index="exact"),
        "joint": skknn.JointKNNClassifier(
            skknn.KNNVoter(3, index="exact"), max_epochs=1, random_state=0
        ),
        "pruner": skknn.MemoryPruner(skknn.KNNVoter(3, index="exact"), n_neighbors=2),
    }
    out = {}
    for name, model in models.items():
        model.fit(X, y)
        model.save(folder / f"{name}.skknn")
        out[name] = io.read_archive(folder / f"{name}.skknn")
    return out, X


FUZZ_TRIED = {"cases": 0, "refused": 0}


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_a_damaged_file_loads_correctly_or_is_refused_clearly(
    data, saved_models, tmp_path_factory
):
    """Mutate one field of a saved file's JSON or one of its arrays; loading
    either gives a model that works or one clear ValueError, never a raw
    KeyError / IndexError / reshape error, and never a memory with colliding
    ids or labels past its classes."""
    import copy

    models, X = saved_models
    name = data.draw(st.sampled_from(sorted(models)))
    meta, arrays = copy.deepcopy(models[name])
    if data.draw(st.booleans()):
        paths = [p for p, _ in _paths(meta["state"]) if p]
        path = data.draw(st.sampled_from(paths))
        _set(meta["state"], path, data.draw(_JSON))
    else:
        key = data.draw(st.sampled_from(sorted(arrays)))
        value = arrays[key]
        mutation = data.draw(st.sampled_from(["shorter", "dtype", "values", "drop"]))
        if mutation == "drop":
            del arrays[key]
        elif mutation == "shorter":
            arrays[key] = value[: max(len(value) - 1, 0)] if value.ndim else value
        elif mutation == "dtype":
            arrays[key] = value.astype(np.float64 if value.dtype != np.float64 else int)
        else:
            flat = value.copy().reshape(-1)
            if flat.size:
                i = data.draw(st.integers(0, flat.size - 1))
                flat[i] = flat[(i + 1) % flat.size] if flat.size > 1 else flat[i]
                if flat.dtype.kind in "iu":
                    low = -5 if flat.dtype.kind == "i" else 0
                    flat[i] = data.draw(st.integers(low, 100))
            arrays[key] = flat.reshape(value.shape)
    path = tmp_path_factory.mktemp("case") / "m.skknn"
    io.write_archive(path, meta, arrays)
    FUZZ_TRIED["cases"] += 1
    try:
        # A mutated nested parameter may name a relative storage_path: the
        # memory then goes there, inside this case's folder, not the checkout.
        with contextlib.chdir(path.parent):
            model = skknn.load(path)
    except ValueError as exc:
        FUZZ_TRIED["refused"] += 1
        if "skknn model file" not in str(exc) and "unknown class" not in str(exc):
            raise
        return
    # Loaded: then it is a consistent model.
    memory = model.memory_ if hasattr(model, "memory_") else model.estimator_.memory_
    ids = memory.ids()
    assert np.unique(ids).size == ids.size
    assert memory.next_ids(1)[0] > ids.max()
    try:
        proba = model.predict_proba(X[:5])
    except ValueError as exc:  # a parameter the file changed, refused at use
        if "parameter" not in str(exc) and "memory" not in str(exc):
            raise
        return
    assert np.isfinite(proba).all()


def test_the_fuzzer_tried_and_refused_cases():
    # Runs after the fuzz test (file order); records how much it exercised.
    if FUZZ_TRIED["cases"] == 0:
        pytest.skip("the fuzz test did not run")
    assert FUZZ_TRIED["cases"] >= 100
    assert FUZZ_TRIED["refused"] >= 10
