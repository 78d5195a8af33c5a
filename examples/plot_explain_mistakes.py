"""
Mistakes explained by their neighbours
======================================

[VM] 3.8: a retrieval-based decision is explained by the memory samples that made
it. For four misclassified test digits, the query (left) and its eight nearest
neighbours with their labels and shares of the vote (``KNNVoter.explain``): the
mistakes come from neighbours that look alike, or from memory samples whose labels
are doubtful.
"""

import matplotlib.pyplot as plt
import numpy as np

from skknn import KNNVoter
from skknn.datasets import load_mnist_embeddings, stratified_split

data = load_mnist_embeddings()
X, y, images = data.embeddings, data.target, data.images
train, test = stratified_split(y, 0.2, seed=0)
knn = KNNVoter(n_neighbors=8, preprocessing="center_l2")
knn.fit(X[train], y[train], sample_ids=train)
wrong = np.flatnonzero(knn.predict(X[test]) != y[test])[:4]
ex = knn.explain(X[test][wrong])

fig, axes = plt.subplots(len(wrong), 9, figsize=(9, 1.25 * len(wrong) + 0.4))
for row, q in enumerate(wrong):
    axes[row, 0].imshow(images[test][q], cmap="gray_r")
    axes[row, 0].set_title(
        f"true {y[test][q]}\npred {ex.prediction[row]}", fontsize=8, color="C3"
    )
    for j in range(8):
        axes[row, j + 1].imshow(images[ex.neighbor_ids[row, j]], cmap="gray_r")
        axes[row, j + 1].set_title(
            f"{ex.neighbor_labels[row, j]} ({ex.weights[row, j]:.0%})", fontsize=8
        )
for ax in axes.ravel():
    ax.axis("off")
fig.tight_layout()
print(
    f"{len(np.flatnonzero(knn.predict(X[test]) != y[test]))} mistakes "
    f"among {len(test)} test digits"
)
