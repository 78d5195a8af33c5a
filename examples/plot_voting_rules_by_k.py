"""
Accuracy against k for the four voting rules
============================================

[VM] Table 1: with more neighbours, plurality and distance voting lose accuracy (far
neighbours outvote the near ones), while RankVoting, whose weights ``1 / (rank + 2)``
fall with the rank, stays nearly flat. All four curves come from one retrieval of 100
neighbours (``skknn.evaluation.voting_accuracy_by_k``: the class scores at every k
are prefix sums over the ranked neighbours).

On these 4,000 digits, from k = 10 to k = 100, plurality and distance voting lose
about three times as much as RankVoting (printed below); softmax at ``T = 0.07``,
whose weights also fall fast with distance, follows RankVoting here.
"""

import matplotlib.pyplot as plt
import numpy as np

from skknn import KNNVoter
from skknn.datasets import load_mnist_embeddings, stratified_split
from skknn.evaluation import voting_accuracy_by_k

data = load_mnist_embeddings()
X, y = data.embeddings, data.target
train, test = stratified_split(y, 0.2, seed=0)
knn = KNNVoter(preprocessing="center_l2").fit(X[train], y[train])
accuracy = voting_accuracy_by_k(knn, X[test], y[test], max_k=100)

ks = np.arange(1, 101)
fig, ax = plt.subplots(figsize=(6.4, 4))
for rule, acc in accuracy.items():
    ax.plot(ks, 100 * acc, label=rule, lw=2 if rule == "rank" else 1.2)
ax.set_xscale("log")
ax.set_xlabel("k (neighbours)")
ax.set_ylabel("accuracy (%)")
ax.set_title(f"{len(train):,} MNIST digits in memory, EfficientNet-Lite0 embeddings")
ax.legend(title="voting")
fig.tight_layout()

# %%
# The spread between k = 10 and k = 100, per rule:
for rule, acc in accuracy.items():
    print(f"{rule:>9}: {100 * acc[9]:.1f}% at k=10, {100 * acc[99]:.1f}% at k=100")
