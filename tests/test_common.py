"""sklearn's estimator checks over every configured KNNVoter."""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from skknn import JointKNNClassifier, KNNVoter
from tests.conftest import ENGINES

# sklearn checks that a weight of 2 equals two copies of a sample. In kNN it
# cannot: two copies take two of the k neighbour places (pushing another
# neighbour out), a weighted sample takes one; sample_weight scales a vote.
_NOT_COPIES = (
    "kNN: a weight of 2 scales one neighbour's vote; two copies take two of "
    "the k neighbour places"
)
WEIGHTS_ARE_NOT_COPIES = {
    "check_sample_weight_equivalence_on_dense_data": _NOT_COPIES,
    # KNNVoter takes sparse X (exact engines), so sklearn runs this one too
    "check_sample_weight_equivalence_on_sparse_data": _NOT_COPIES,
}

VOTER_INSTANCES = [
    KNNVoter(n_neighbors=3, voting=voting, index=engine)
    for engine in ENGINES
    for voting in ("plurality", "distance", "softmax", "rank")
] + [KNNVoter(n_neighbors=3, voting="learned", index="exact")]


@parametrize_with_checks(
    VOTER_INSTANCES, expected_failed_checks=lambda est: WEIGHTS_ARE_NOT_COPIES
)
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


@parametrize_with_checks(
    JOINT_INSTANCES, expected_failed_checks=lambda est: WEIGHTS_ARE_NOT_COPIES
)
def test_sklearn_compatible_joint(estimator, check):
    check(estimator)
