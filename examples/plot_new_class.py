"""
A new class without training, and without forgetting
====================================================

[VM] 3.1: a memory learns a new class by storing its examples; nothing is trained,
so nothing already known can be forgotten. Digit 9 is held out of the memory, then
added with 1, 5, 20 and finally all of its examples by ``partial_fit``. Accuracy on
the new class rises with its exemplars, while the accuracy on the other nine digits
stays where it was.
"""

import matplotlib.pyplot as plt
import numpy as np

from skknn import KNNVoter
from skknn.datasets import load_mnist_embeddings, stratified_split

data = load_mnist_embeddings()
X, y = data.embeddings, data.target
train, test = stratified_split(y, 0.2, seed=0)
new_class = 9
old = train[y[train] != new_class]
pool = train[y[train] == new_class]
old_q, new_q = test[y[test] != new_class], test[y[test] == new_class]

knn = KNNVoter(n_neighbors=10, preprocessing="center_l2").fit(X[old], y[old], old)
counts, acc_new, acc_old = [0], [0.0], [knn.score(X[old_q], y[old_q])]
added = 0
for n in (1, 5, 20, len(pool)):
    knn.partial_fit(X[pool[added:n]], y[pool[added:n]], sample_ids=pool[added:n])
    added = n
    counts.append(n)
    acc_new.append(knn.score(X[new_q], y[new_q]))
    acc_old.append(knn.score(X[old_q], y[old_q]))

fig, ax = plt.subplots(figsize=(6, 3.8))
pos = np.arange(len(counts))
ax.plot(pos, 100 * np.array(acc_new), "o-", label=f"new class ({new_class})")
ax.plot(pos, 100 * np.array(acc_old), "s-", label="the nine known digits")
ax.set_xticks(pos, [str(c) for c in counts])
ax.set_xlabel(f"examples of digit {new_class} in memory")
ax.set_ylabel("accuracy (%)")
ax.set_ylim(0, 101)
ax.legend(loc="center right")
fig.tight_layout()
print("classes_ now:", knn.classes_.tolist())
