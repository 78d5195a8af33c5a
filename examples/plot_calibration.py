"""
Calibration of the vote
=======================

[VM] App. I: the vote shares of a kNN classifier are a confidence. A reliability
diagram plots, in bins of confidence ``max_c p(c | x)``, the accuracy against the
mean confidence; the expected calibration error (ECE) weighs the gaps by the bins'
sizes. Each rule at its most accurate k, all from one retrieval
(``skknn.evaluation.calibration_at_best_k``).
"""

import matplotlib.pyplot as plt

from skknn import KNNVoter
from skknn.datasets import load_mnist_embeddings, stratified_split
from skknn.evaluation import calibration_at_best_k, voting_accuracy_by_k

data = load_mnist_embeddings()
X, y = data.embeddings, data.target
train, test = stratified_split(y, 0.2, seed=0)
knn = KNNVoter(preprocessing="center_l2").fit(X[train], y[train])
nb = knn.neighbors(X[test], 100)
accuracy = voting_accuracy_by_k(knn, X[test], y[test], neighbors=nb)
calibration = calibration_at_best_k(knn, nb, y[test], accuracy)

fig, ax = plt.subplots(figsize=(5, 5))
ax.plot([0, 1], [0, 1], "k:", label="perfect calibration")
for rule, (k, ece, bins) in calibration.items():
    seen = bins.count > 0
    ax.plot(
        bins.confidence[seen],
        bins.accuracy[seen],
        "o-",
        label=f"{rule} (k={k}): ECE {100 * ece:.1f}%",
    )
ax.set_xlabel("confidence")
ax.set_ylabel("accuracy")
ax.set_xlim(0, 1.02)
ax.set_ylim(0, 1.02)
ax.legend(fontsize=8)
fig.tight_layout()
