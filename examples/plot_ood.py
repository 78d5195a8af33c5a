"""
Out-of-distribution inputs sit far from memory
==============================================

[VM] F (after Sun et al., 2022): the distance to the k-th nearest memory sample
separates inputs unlike anything in memory. ``KNNVoter.score_samples`` returns
``-d_k`` (higher is more normal); MNIST test digits against the LFW crops of faces
and backgrounds from scikit-image, both embedded by the same encoder. The AUROC of
the separation at several k comes from one retrieval (``skknn.evaluation.ood_auroc``).
"""

import matplotlib.pyplot as plt
import numpy as np

from skknn import KNNVoter, TorchFeatureExtractor
from skknn.datasets import load_lfw_faces, load_mnist_embeddings, stratified_split
from skknn.evaluation import ood_auroc

data = load_mnist_embeddings()
X, y = data.embeddings, data.target
train, test = stratified_split(y, 0.2, seed=0)
knn = KNNVoter(n_neighbors=10, preprocessing="center_l2").fit(X[train], y[train])
crops, _ = load_lfw_faces()
encoder = TorchFeatureExtractor(
    "efficientnet-lite0", layer="_blocks.10", pooling="none", image_size=48
)
X_out = encoder.fit(crops[:1]).transform(crops)

auroc = ood_auroc(knn, X[test], X_out, ks=(1, 10, 50))
fig, ax = plt.subplots(figsize=(6, 3.8))
bins = np.linspace(-1.2, 0, 50)
ax.hist(
    knn.score_samples(X[test], 10),
    bins,
    alpha=0.6,
    density=True,
    label="MNIST test digits",
)
ax.hist(
    knn.score_samples(X_out, 10),
    bins,
    alpha=0.6,
    density=True,
    label="LFW crops (out of distribution)",
)
ax.set_xlabel("score_samples = -(distance to the 10th neighbour)")
ax.set_ylabel("density")
ax.set_title(", ".join(f"AUROC@{k} {a:.3f}" for k, a in auroc.items()))
ax.legend()
fig.tight_layout()
print(auroc)
