"""Inputs that used to fail with a raw or confusing error now get a message
that names what is wrong and what was expected (issue 22, item 9).

Labels mixing strings and numbers, unlearning every sample, what the feature
extractor takes (2-D rows, RGBA, empty lists), and output paths of the CLI
checked before any work.
"""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest

from skknn import JointKNNClassifier, KNNVoter, MemoryPruner
from skknn.app.cli import main
from skknn.features import TorchFeatureExtractor

ESTIMATORS = [
    pytest.param(lambda: KNNVoter(n_neighbors=1), id="KNNVoter"),
    pytest.param(lambda: JointKNNClassifier(max_epochs=2), id="JOINT"),
    pytest.param(MemoryPruner, id="MemoryPruner"),
]
MIXED = r"mix strings and numbers.*Mix of label input types \(string and number\)"
needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib"
)


@pytest.fixture
def X4():
    return np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)


def _n_samples(est) -> int:
    knn = est.knn_ if hasattr(est, "knn_") else getattr(est, "estimator_", est)
    return knn.memory_.n_samples


# --- 1. labels mixing strings and numbers -----------------------------------------


@pytest.mark.parametrize("make", ESTIMATORS)
@pytest.mark.parametrize("method", ["fit", "partial_fit"])
@pytest.mark.parametrize("as_array", [False, True], ids=["list", "object-array"])
def test_labels_mixing_str_and_int_are_refused_by_name(make, method, as_array, X4):
    # A list used to become ["a", "1", ...] silently; an object array failed in
    # numpy's sort with "'<' not supported between instances of 'int' and 'str'".
    y = ["a", 1, "b", 2]
    y = np.array(y, dtype=object) if as_array else y
    est = make()
    with pytest.raises(TypeError, match=type(est).__name__ + ".*" + MIXED):
        getattr(est, method)(X4, y)


@pytest.mark.parametrize("make", ESTIMATORS)
@pytest.mark.parametrize("as_array", [False, True], ids=["list", "object-array"])
def test_partial_fit_classes_mixing_str_and_int_are_refused(make, as_array, X4):
    classes = ["a", 1]
    classes = np.array(classes, dtype=object) if as_array else classes
    with pytest.raises(TypeError, match="classes given to .*" + MIXED):
        make().partial_fit(X4, ["a", "b", "a", "b"], classes=classes)


@pytest.mark.parametrize("make", ESTIMATORS)
def test_first_partial_fit_classes_of_another_type_than_y(make, X4):
    # classes=["z"] with int labels used to turn every label into a string.
    with pytest.raises(TypeError, match=r"classes of type 'str'.*the labels y"):
        make().partial_fit(X4, [0, 1, 0, 1], classes=["z"])


@pytest.mark.parametrize("make", ESTIMATORS)
def test_int_labels_added_to_a_str_memory_name_the_estimator(make, X4):
    est = make().fit(X4, ["a", "b", "a", "b"])
    name = type(est).__name__
    with pytest.raises(
        TypeError, match=rf"{name} got labels of type 'number'.*one type"
    ):
        est.partial_fit(X4, [1, 2, 1, 2])
    with pytest.raises(TypeError, match=name + ".*" + MIXED):
        est.partial_fit(X4, ["a", 1, "b", 2])
    assert _n_samples(est) == 4  # refused before anything changed


def test_mixed_labels_at_one_level_of_hierarchical_y(X4):
    Y = np.array([["x", 1], ["x", "b"], ["z", 2], ["z", 3]], dtype=object)
    with pytest.raises(TypeError, match=r"labels y \(level 1\).*" + MIXED):
        KNNVoter(n_neighbors=1).fit(X4, Y)


def test_nan_among_string_labels_is_named_a_missing_label(X4):
    y = np.array(["a", np.nan, "b", "a"], dtype=object)  # pandas' missing value
    with pytest.raises(TypeError, match="missing label"):
        KNNVoter(n_neighbors=1).fit(X4, y)


# --- 2. unlearning every sample ----------------------------------------------------


@pytest.fixture
def two_classes():
    X = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)
    return X, np.arange(12) % 2


def test_joint_unlearn_of_every_id_says_to_fit_anew(two_classes):
    X, y = two_classes
    clf = JointKNNClassifier(max_epochs=2).fit(X, y)
    before = clf.predict_proba(X)
    with pytest.raises(ValueError, match=r"every sample in memory.*fit anew"):
        clf.unlearn(clf.knn_.sample_ids_)
    assert _n_samples(clf) == 12  # refused before anything changed
    np.testing.assert_array_equal(clf.predict_proba(X), before)


def test_joint_unlearn_leaving_one_class_says_why(two_classes):
    X, y = two_classes
    clf = JointKNNClassifier(max_epochs=2).fit(X, y)
    with pytest.raises(ValueError, match=r"one class only.*retrain=False"):
        clf.unlearn(np.flatnonzero(y == 0))
    assert _n_samples(clf) == 12


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: KNNVoter(n_neighbors=3), id="KNNVoter"),
        pytest.param(MemoryPruner, id="MemoryPruner"),
        pytest.param(
            lambda: JointKNNClassifier(max_epochs=2), id="JOINT-retrain-False"
        ),
    ],
)
def test_emptied_memory_says_so_and_refills(make, two_classes):
    # The documented other half: a memory-only unlearn may empty the memory.
    X, y = two_classes
    est = make().fit(X, y)
    kwargs = {"retrain": False} if isinstance(est, JointKNNClassifier) else {}
    est.unlearn(np.arange(12), **kwargs)
    assert _n_samples(est) == 0
    with pytest.raises(ValueError, match="memory is empty"):
        est.predict(X)
    assert est.partial_fit(X, y).predict(X).shape == (12,)


# --- 3. what the feature extractor takes --------------------------------------------


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)


def test_identity_says_which_input_form_it_was_fitted_on(rgb):
    est = TorchFeatureExtractor(model="identity").fit(rgb)
    rows = np.ones((3, 5), np.float32)
    with pytest.raises(
        ValueError, match=r"rows of 5 features.*fitted on input giving 192.*flattens"
    ):
        est.transform(rows)


def test_image_model_refuses_2d_rows_naming_the_shapes_it_takes(rgb):
    est = TorchFeatureExtractor(model="tiny-cnn").fit(rgb)
    # Used to be torch's raw "Expected 3D (unbatched) or 4D (batched) input".
    with pytest.raises(
        ValueError, match=r"2-D.*'tiny-cnn' takes images.*\(n, H, W, C\)"
    ):
        est.transform(np.ones((3, 5), np.float32))


@pytest.mark.parametrize("model", ["identity", "tiny-cnn"])
def test_rgba_drops_alpha_as_pillow_does(model, rgb, tmp_path):
    from PIL import Image

    alpha = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    rgba = np.concatenate([rgb, alpha], axis=-1)
    est = TorchFeatureExtractor(model=model).fit(rgb)
    expected = est.transform(rgb)
    paths = []
    for i, image in enumerate(rgba):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])  # an RGBA file, read by Pillow
    # Channels-first input reaches a convolution in another memory order.
    for X in (rgba, rgba.transpose(0, 3, 1, 2), list(rgba), paths):
        np.testing.assert_allclose(est.transform(X), expected, rtol=1e-5, atol=1e-6)


def test_other_channel_counts_name_the_ones_taken(rgb):
    est = TorchFeatureExtractor(model="identity").fit(rgb)
    with pytest.raises(ValueError, match=r"1 or 3 channels.*4 \(RGBA, alpha dropped\)"):
        est.transform(np.zeros((2, 5, 6, 7), np.uint8))


def test_empty_list(rgb):
    with pytest.raises(ValueError, match=r"fit got an empty X.*at least one"):
        TorchFeatureExtractor(model="tiny-cnn").fit_transform([])
    est = TorchFeatureExtractor(model="tiny-cnn").fit(rgb)
    out = est.transform([])
    assert out.shape == (0, est.embedding_dim_)
    assert out.dtype == np.float32


# --- 4. CLI output paths are checked before any work --------------------------------


def _run(argv, capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _assert_one_line(code: int, err: str, pattern: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    assert re.search(pattern, err), err


@pytest.fixture
def no_work(monkeypatch):
    """Any loading or embedding fails the test: the paths must be refused first."""

    def started(*args, **kwargs):
        raise AssertionError("the command started working before checking --out")

    import skknn.app.cli
    import skknn.datasets

    for module, name in (
        (skknn.app.cli, "mnist_subset"),
        (skknn.app.cli, "embed"),
        (skknn.datasets, "load_embeddings"),
        (skknn.datasets, "load_image_folder"),
    ):
        monkeypatch.setattr(module, name, started)


@needs_matplotlib
@pytest.mark.parametrize(
    ("out", "pattern"),
    [
        ("folder.png", r"--out must be a file name.*existing folder"),
        ("missing/g.png", r"--out: folder .*missing.* does not exist"),
        ("g.txt", r"--out must end in \.png or .*\.svg"),
    ],
)
def test_explain_checks_out_before_embedding(out, pattern, tmp_path, capsys, no_work):
    (tmp_path / "folder.png").mkdir()
    code, err = _run(["explain", "--out", tmp_path / out], capsys)
    _assert_one_line(code, err, pattern)


@needs_matplotlib
def test_explain_checks_the_residual_gallery_path_too(tmp_path, capsys, no_work):
    (tmp_path / "g-residual.png").mkdir()
    argv = ["explain", "--out", tmp_path / "g.png", "--residual"]
    code, err = _run(argv, capsys)
    _assert_one_line(code, err, r"g-residual\.png.*existing folder")


def test_evaluate_refuses_an_existing_folder_as_out(tmp_path, capsys, no_work):
    (tmp_path / "r.csv").mkdir()
    argv = ["evaluate", "--memory", "m.npz", "--queries", "q.npz"]
    code, err = _run([*argv, "--out", tmp_path / "r.csv"], capsys)
    _assert_one_line(code, err, r"--out must be a file name.*existing folder")


@needs_matplotlib
def test_evaluate_checks_every_plot_it_writes(tmp_path, capsys, no_work):
    (tmp_path / "p-reliability.png").mkdir()
    argv = ["evaluate", "--memory", "m.npz", "--queries", "q.npz"]
    code, err = _run([*argv, "--plot", tmp_path / "p.png"], capsys)
    _assert_one_line(code, err, r"--plot.*p-reliability\.png.*existing folder")
