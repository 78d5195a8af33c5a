"""sklearn's estimator checks over every configured KNNVoter."""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from skknn import JointKNNClassifier, KNNVoter
from tests.conftest import ENGINES

VOTER_INSTANCES = [
    KNNVoter(n_neighbors=3, voting=voting, index=engine)
    for engine in ENGINES
    for voting in ("plurality", "distance", "softmax", "rank")
]


@parametrize_with_checks(VOTER_INSTANCES)
def test_sklearn_compatible_voter(estimator, check):
    check(estimator)


JOINT_INSTANCES = [
    JointKNNClassifier(
        KNNVoter(3, index="exact"), max_epochs=5, random_state=0, **params
    )
    for params in (
        {},
        {"interpolation": 0.0, "hidden_layer_sizes": (8,)},
        {"interpolation": 1.0, "modulation": "focal"},
    )
]


@parametrize_with_checks(JOINT_INSTANCES)
def test_sklearn_compatible_joint(estimator, check):
    check(estimator)
