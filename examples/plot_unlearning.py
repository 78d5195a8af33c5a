"""
Unlearning by deletion
======================

[VM] 3.5: deleting a sample from the memory removes its influence on every later
decision, completely. 1,000 memory samples are unlearned; before, they appear among
the 50 nearest neighbours of many test queries and memory samples; after, among
none (their vectors have left the memory and the index). Accuracy barely moves.
"""

import matplotlib.pyplot as plt
import numpy as np

from skknn import KNNVoter
from skknn.datasets import load_mnist_embeddings, stratified_split

data = load_mnist_embeddings()
X, y = data.embeddings, data.target
train, test = stratified_split(y, 0.2, seed=0)
knn = KNNVoter(n_neighbors=10, preprocessing="center_l2")
knn.fit(X[train], y[train], sample_ids=train)
forget = np.random.default_rng(0).choice(train, 1000, replace=False)


def appearances(knn):
    queries = knn.kneighbors(X[test], n_neighbors=50, return_distance=False)
    memory = knn.kneighbors(None, n_neighbors=50, return_distance=False)
    return int(np.isin(queries, forget).sum() + np.isin(memory, forget).sum())


before = (appearances(knn), knn.score(X[test], y[test]))
knn.unlearn(forget)
after = (appearances(knn), knn.score(X[test], y[test]))

fig, (a, b) = plt.subplots(1, 2, figsize=(7, 3.2))
a.bar(["before", "after"], [before[0], after[0]], color=["C3", "C2"])
a.set_title("unlearned ids among\nthe 50 nearest neighbours")
b.bar(["before", "after"], [100 * before[1], 100 * after[1]], color="C0")
b.set_ylim(90, 100)
b.set_title("test accuracy (%)")
fig.tight_layout()
assert after[0] == 0
print(
    f"appearances {before[0]:,} -> {after[0]}; accuracy "
    f"{100 * before[1]:.2f}% -> {100 * after[1]:.2f}%"
)
