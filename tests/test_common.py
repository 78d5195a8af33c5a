"""sklearn's estimator checks over every configured KNNVoter."""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from skknn import KNNVoter
from tests.conftest import ENGINES

VOTER_INSTANCES = [
    KNNVoter(n_neighbors=3, voting=voting, index=engine)
    for engine in ENGINES
    for voting in ("plurality", "distance", "softmax", "rank")
]


@parametrize_with_checks(VOTER_INSTANCES)
def test_sklearn_compatible_voter(estimator, check):
    check(estimator)
