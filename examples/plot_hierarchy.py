"""
A new class placed in the hierarchy
===================================

[VM] 3.6: with labels at several levels of a taxonomy, each level votes with the
neighbours' labels at that level. A query of a class the memory has never seen can
still be placed right at a coarser level. Here each image shows two MNIST digits,
labelled (tens digit, number); ten numbers are held out of memory. With zero
exemplars they are placed by their tens digit far above chance (10%), and both
levels rise as exemplars are added ("rising tide").
"""

import matplotlib.pyplot as plt
import numpy as np

from skknn import KNNVoter, TorchFeatureExtractor
from skknn.datasets import load_two_digit_mnist

img, y, img_q, y_q = load_two_digit_mnist(4000, 1000, seed=0)
encoder = TorchFeatureExtractor(
    "efficientnet-lite0", layer="_blocks.10", pooling="none", image_size=(48, 96)
)
E = encoder.fit(img[:1]).transform(np.concatenate([img, img_q]))
E, E_q = E[: len(y)], E[len(y) :]
Y, Y_q = np.c_[y // 10, y], np.c_[y_q // 10, y_q]
held = np.array([7, 13, 26, 38, 41, 55, 62, 79, 84, 90])
in_memory, queries = ~np.isin(y, held), np.isin(y_q, held)

knn = KNNVoter(n_neighbors=10, preprocessing="center_l2")
knn.fit(E[in_memory], Y[in_memory], sample_ids=np.flatnonzero(in_memory))
exemplars, tens, number, added = (0, 1, 5, 20), [], [], 0
for n in exemplars:
    new = np.concatenate([np.flatnonzero(y == c)[added:n] for c in held])
    if new.size:
        knn.partial_fit(E[new], Y[new], sample_ids=new)
    added = n
    pred = knn.predict(E_q[queries])
    tens.append(np.mean(pred[:, 0] == Y_q[queries, 0]))
    number.append(np.mean(pred[:, 1] == Y_q[queries, 1]))

fig, ax = plt.subplots(figsize=(6, 3.8))
pos = np.arange(len(exemplars))
ax.plot(pos, 100 * np.array(tens), "o-", label="tens digit (chance 10%)")
ax.plot(pos, 100 * np.array(number), "s-", label="number (chance 1%)")
ax.set_xticks(pos, [str(n) for n in exemplars])
ax.set_xlabel("exemplars of each new number in memory")
ax.set_ylabel("accuracy on the new numbers (%)")
ax.set_ylim(0, 101)
ax.legend()
fig.tight_layout()
print(f"{queries.sum()} queries; 0 exemplars: tens digit {100 * tens[0]:.1f}%")
