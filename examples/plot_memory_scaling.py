"""
Error against memory size: a power law
======================================

[VM] 3.3: the error of a visual memory falls steadily as the memory grows, and on a
log-log plot it follows a line, ``log(err) = a + b log(N)``. Memories of six sizes,
random subsets of the 4,000 MNIST digits, three draws each
(``skknn.evaluation.memory_scaling``), with the least-squares fit.
"""

import matplotlib.pyplot as plt
import numpy as np

from skknn import KNNVoter
from skknn.datasets import load_mnist_embeddings, stratified_split
from skknn.evaluation import memory_scaling

data = load_mnist_embeddings()
X, y = data.embeddings, data.target
train, test = stratified_split(y, 0.2, seed=0)
knn = KNNVoter(n_neighbors=10, preprocessing="center_l2")
scaling = memory_scaling(knn, X[train], y[train], X[test], y[test], n_seeds=3)

N = scaling.sizes
fig, ax = plt.subplots(figsize=(6, 3.8))
ax.loglog(N, 100 * (1 - scaling.accuracy), ".", color="0.6")
ax.loglog(N, 100 * scaling.error, "o", label="mean error")
fit = np.exp(scaling.intercept) * N**scaling.exponent
ax.loglog(N, 100 * fit, "-", label=f"fit: err ~ N^{scaling.exponent:.2f}")
ax.set_xlabel("memory size N")
ax.set_ylabel("test error (%)")
ax.legend()
fig.tight_layout()
print(f"exponent b = {scaling.exponent:.3f}")
