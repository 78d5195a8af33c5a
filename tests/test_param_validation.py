"""One parameter table per estimator (``_parameter_constraints``), checked at fit.

The tables hold sklearn's constraint objects, imported in one place
(skknn/_param_validation.py); the first tests fail loudly when a scikit-learn
release moves them.
"""

from __future__ import annotations

import inspect
from numbers import Integral

import numpy as np
import pytest
import sklearn
from sklearn.base import BaseEstimator
from sklearn.utils.estimator_checks import check_param_validation

import skknn
from skknn import (
    FineTunedJointClassifier,
    JointKNNClassifier,
    KNNTransformer,
    KNNVoter,
    MemoryPruner,
    TorchFeatureExtractor,
)
from skknn._memory_params import MEMORY_PARAMETER_CONSTRAINTS
from skknn._param_validation import InvalidParameterError, check_values
from skknn.voter import VOTE_PARAMETER_CONSTRAINTS

# What skknn takes from sklearn's private module (skknn/_param_validation.py).
SKLEARN_NAMES = (
    "HasMethods",
    "Interval",
    "InvalidParameterError",
    "StrOptions",
    "validate_parameter_constraints",
)
MOVED = (
    "scikit-learn {version} moved its parameter validation: {what}. skknn "
    "imports it only in skknn/_param_validation.py (tested with scikit-learn "
    "1.6 to 1.9); update that file, e.g. with a copy of the classes as "
    "imbalanced-learn keeps (imblearn/utils/_param_validation.py)."
)


def _moved(what: str) -> str:
    return MOVED.format(version=sklearn.__version__, what=what)


# -- the dependency on sklearn's private module ------------------------------------
def test_sklearn_still_offers_what_skknn_imports():
    try:
        from sklearn.utils import _param_validation as pv
    except ImportError as exc:  # only on a release that moved it
        pytest.fail(_moved(f"sklearn.utils._param_validation is gone ({exc})"))
    missing = [name for name in SKLEARN_NAMES if not hasattr(pv, name)]
    assert not missing, _moved(f"{missing} are missing from it")
    assert issubclass(pv.InvalidParameterError, ValueError), _moved("the error type")
    assert issubclass(pv.InvalidParameterError, TypeError), _moved("the error type")
    assert hasattr(BaseEstimator, "_validate_params"), _moved(
        "BaseEstimator._validate_params is gone"
    )


def test_sklearn_words_its_errors_as_skknn_expects():
    from skknn._param_validation import Interval, StrOptions

    table = {
        "k": [Interval(Integral, 1, None, closed="left")],
        "rule": [StrOptions({"a"}), None],
    }
    est = type("Est", (), {"_parameter_constraints": table})()
    with pytest.raises(InvalidParameterError) as info:
        check_values(est, {"k": 0})
    expected = "The 'k' parameter of Est must be an int in the range [1, inf). "
    assert str(info.value) == expected + "Got 0 instead.", _moved("its wording")
    with pytest.raises(InvalidParameterError, match=r"str among \{'a'\} or None"):
        check_values(est, {"rule": "b"})


# -- every estimator, every parameter --------------------------------------------------
ESTIMATORS = sorted(
    (
        obj
        for obj in vars(skknn).values()
        if isinstance(obj, type) and issubclass(obj, BaseEstimator)
    ),
    key=lambda cls: cls.__name__,
)


def test_every_public_estimator_is_covered():
    assert {cls.__name__ for cls in ESTIMATORS} == {
        "FineTunedJointClassifier",
        "JointKNNClassifier",
        "KNNTransformer",
        "KNNVoter",
        "MemoryPruner",
        "TorchFeatureExtractor",
    }


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda cls: cls.__name__)
def test_the_table_holds_exactly_the_init_parameters(cls):
    init = set(inspect.signature(cls.__init__).parameters) - {"self"}
    table = set(cls._parameter_constraints)
    assert table == init, (
        f"missing: {sorted(init - table)}, extra: {sorted(table - init)}"
    )


def test_knnvoter_table_is_the_vote_half_and_the_memory_half():
    assert not set(VOTE_PARAMETER_CONSTRAINTS) & set(MEMORY_PARAMETER_CONSTRAINTS)
    assert KNNVoter._parameter_constraints == {
        **VOTE_PARAMETER_CONSTRAINTS,
        **MEMORY_PARAMETER_CONSTRAINTS,
    }
    # what a fitted memory keeps fixed is among the memory's parameters
    assert set(KNNVoter()._memory_config()) <= set(MEMORY_PARAMETER_CONSTRAINTS)


@pytest.mark.parametrize(
    ("cls", "names"),
    [
        (
            KNNTransformer,
            ["metric", "preprocessing", "index", "index_params", "device"],
        ),
        (JointKNNClassifier, ["device"]),
        (TorchFeatureExtractor, ["device"]),
    ],
    ids=lambda x: getattr(x, "__name__", ""),
)
def test_memory_parameters_share_one_set_of_constraints(cls, names):
    for name in names:
        assert cls._parameter_constraints[name] is MEMORY_PARAMETER_CONSTRAINTS[name]


class _BadType:
    """Satisfies no constraint (sklearn's check uses the same kind of object)."""


def _bad_values(constraints) -> list:
    """Values outside each constraint: an object of no accepted type, a value
    just outside each interval, an unknown option."""
    from skknn._param_validation import Interval, StrOptions

    bad = [_BadType()]
    for c in constraints:
        if isinstance(c, StrOptions):
            bad.append("no-such-option")
        elif isinstance(c, Interval):
            step = 1 if c.type is Integral else 0.5
            if c.left is not None:
                bad.append(c.left - step if c.closed in ("left", "both") else c.left)
            if c.right is not None:
                inside = c.closed in ("right", "both")
                bad.append(c.right + step if inside else c.right)
        elif c == "verbose":
            bad.append(-1)
        elif c == "random_state":
            bad.append("seed")
        elif c == "boolean":
            bad.append("yes")
    return bad


CASES = [
    pytest.param(cls, name, value, id=f"{cls.__name__}-{name}-{value!r}")
    for cls in ESTIMATORS
    for name, constraints in cls._parameter_constraints.items()
    for value in _bad_values(constraints)
]


def _fit_data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(20, 5)).astype(np.float32), np.arange(20) % 2


@pytest.mark.parametrize(("cls", "name", "value"), CASES)
def test_a_bad_value_is_refused_at_fit_in_sklearns_words(cls, name, value):
    est = cls()
    est.set_params(**{name: value})  # never raises: sklearn's rule
    X, y = _fit_data()
    match = rf"The '{name}' parameter of {cls.__name__} must be .* Got .* instead"
    with pytest.raises(InvalidParameterError, match=match):
        est.fit(X, y)


@pytest.mark.parametrize(
    "est",
    [
        KNNVoter(3, index="exact"),
        JointKNNClassifier(KNNVoter(3, index="exact"), max_epochs=2),
        MemoryPruner(KNNVoter(3, index="exact")),
        KNNTransformer(index="exact"),
        TorchFeatureExtractor(model="identity"),
        FineTunedJointClassifier(TorchFeatureExtractor(model="identity")),
    ],
    ids=lambda est: type(est).__name__,
)
def test_sklearns_check_param_validation(est):
    # Not among check_estimator's checks (sklearn runs it on its own estimators
    # only): fit, partial_fit, fit_transform and fit_predict refuse every bad
    # value first, whatever X is.
    check_param_validation(type(est).__name__, est)


# -- messages that say what to pass instead ------------------------------------------
@pytest.mark.parametrize(
    ("est", "match"),
    [
        (
            KNNVoter(reranker="gemini"),
            r"Got 'gemini' instead\. .*reranker\(neighbors, X\)",
        ),
        (KNNVoter(index=3), r"Got 3 instead\. Use 'auto', 'exact', 'flat' or a faiss"),
        (KNNVoter(device=0), r"Got 0 instead\. Use 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        (KNNTransformer(index=3), r"Got 3 instead\. Use 'auto', 'exact', 'flat'"),
        (MemoryPruner(estimator="knn"), r"Got 'knn' instead\. .*kNN memory"),
        (TorchFeatureExtractor(model=3), r"Got 3 instead\. .*one of \[.*'tiny-cnn'"),
    ],
    ids=lambda x: type(x).__name__ if isinstance(x, BaseEstimator) else "",
)
def test_hints_follow_sklearns_message(est, match):
    X, y = _fit_data()
    with pytest.raises(InvalidParameterError, match=match):
        est.fit(X, y)


# -- rules the tables cannot state, checked after them ---------------------------------
@pytest.mark.parametrize(
    ("est", "match"),
    [
        (KNNVoter(index=""), r"'index' parameter of KNNVoter must be 'auto'"),
        (KNNVoter(n_shards=2), "applies to backend='dask'"),
        (KNNVoter(backend="dask", storage_path="x"), "cannot be combined"),
        (JointKNNClassifier(hidden_layer_sizes=(8, 0)), "tuple of positive ints"),
        (JointKNNClassifier(solver="lbfgs", hidden_layer_sizes=(8,)), "lbfgs"),
        (
            FineTunedJointClassifier(knn=KNNVoter(backend="dask")),
            "KNNVoter with backend='local'",
        ),
        (TorchFeatureExtractor(image_size=(3, 0)), r"\(height, width\) pair"),
        (TorchFeatureExtractor(model="tiny_cnn"), "Did you mean 'tiny-cnn'"),
    ],
    ids=lambda x: type(x).__name__ if isinstance(x, BaseEstimator) else "",
)
def test_rules_beyond_the_table_are_explicit(est, match):
    X, y = _fit_data()
    with pytest.raises(ValueError, match=match):
        est.fit(X, y)


# -- after fit: set_params and predictions ------------------------------------------
def test_a_fitted_voter_checks_index_params_at_set_params():
    X, y = _fit_data()
    knn = KNNVoter(3, index="exact").fit(X, y)
    with pytest.raises(InvalidParameterError, match="'index_params' parameter"):
        knn.set_params(index_params="nprobe=4")
    assert knn.index_params is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("n_neighbors", 0),
        ("voting", "majority"),
        ("temperature", 0.0),
        ("tie_break", "random"),
        ("reranker", "gemini"),
    ],
)
def test_predictions_check_the_vote_parameters_again(name, value):
    X, y = _fit_data()
    knn = KNNVoter(3, index="exact").fit(X, y)
    knn.set_params(**{name: value})
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter"):
        knn.predict(X)


def test_a_joint_prediction_checks_the_parameters_again():
    X, y = _fit_data()
    clf = JointKNNClassifier(KNNVoter(3, index="exact"), max_epochs=1).fit(X, y)
    clf.set_params(interpolation=1.5)
    with pytest.raises(
        InvalidParameterError, match=r"'interpolation' .*\[0\.0, 1\.0\]"
    ):
        clf.predict(X)


def test_a_bool_is_not_taken_for_a_number():
    """sklearn's Interval takes True as the int 1 (KNeighborsClassifier fits
    with n_neighbors=True and fails inside its tree search): skknn refuses it
    at fit, and a prediction after set_params or from a file that holds one
    raises the same error, a ValueError and a TypeError."""
    import numpy as np

    from skknn import KNNVoter
    from skknn._param_validation import InvalidParameterError

    X = np.random.default_rng(0).normal(size=(20, 3))
    y = np.arange(20) % 2
    for bad in (True, np.True_):
        with pytest.raises(
            InvalidParameterError, match=r"n_neighbors.*Got (np\.)?True"
        ):
            KNNVoter(n_neighbors=bad).fit(X, y)
    est = KNNVoter(n_neighbors=3).fit(X, y)
    est.n_neighbors = True  # as a damaged file's parameters would set it
    for err in (ValueError, TypeError):
        with pytest.raises(err, match="'n_neighbors' parameter"):
            est.predict(X)
    est.set_params(temperature=False)
    with pytest.raises(InvalidParameterError, match="temperature"):
        est.set_params(n_neighbors=3).predict_proba(X)
    # a bool where the table takes one stays fine
    KNNVoter(verbose=True).fit(X, y)
