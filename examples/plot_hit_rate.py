"""
Hit rate: the upper bound of any vote
=====================================

[VM] App. D: a query's true label is among the labels of its k nearest neighbours
for a fraction ``hit@k`` of queries. No aggregation of those neighbours can be more
accurate; the gap between a voting rule and ``hit@k`` is what a better aggregator (a
re-ranker) can still win. One retrieval serves both curves.
"""

import matplotlib.pyplot as plt
import numpy as np

from skknn import KNNVoter
from skknn.datasets import load_mnist_embeddings, stratified_split
from skknn.evaluation import hit_rate_by_k, voting_accuracy_by_k

data = load_mnist_embeddings()
X, y = data.embeddings, data.target
train, test = stratified_split(y, 0.2, seed=0)
knn = KNNVoter(preprocessing="center_l2").fit(X[train], y[train])
nb = knn.neighbors(X[test], 100)
hit = hit_rate_by_k(knn, X[test], y[test], max_k=100, neighbors=nb)
rank = voting_accuracy_by_k(knn, X[test], y[test], neighbors=nb, votings=["rank"])

ks = np.arange(1, 101)
fig, ax = plt.subplots(figsize=(6.4, 4))
ax.plot(ks, 100 * hit, label="hit@k (bound)", color="k")
ax.plot(ks, 100 * rank["rank"], label="RankVoting")
ax.fill_between(ks, 100 * rank["rank"], 100 * hit, alpha=0.15, label="room left")
ax.set_xscale("log")
ax.set_xlabel("k (neighbours)")
ax.set_ylabel("% of queries")
ax.legend()
fig.tight_layout()
assert np.all(hit >= rank["rank"] - 1e-12)  # the bound holds at every k
print(f"k=50: RankVoting {100 * rank['rank'][49]:.1f}%, hit@50 {100 * hit[49]:.1f}%")
