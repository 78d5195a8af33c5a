"""
A memory that streams: insert, delete, search
=============================================

[VM] 3.3-3.5 in a stream: whole clusters arrive and leave while queries keep
coming, as in the NeurIPS'23 big-ann streaming track (``benchmarks/
bench_streaming.py`` replays the full runbook against FAISS and hnswlib). Here a
small runbook of 8 steps on 24,000 clustered vectors: ``partial_fit`` adds a
block, ``unlearn(..., retrain_index=False)`` deletes one (no rebuild, as the
peers do), and after every edit the same 300 queries, some of them from clusters
that were deleted, are answered by an exact memory and by an IVF one. Recall@10
is measured against brute force over the live samples, so the figure shows what
an approximate index loses as its inverted lists go stale: the exact memory stays
at 1.0 whatever is deleted.
"""

import faiss
import matplotlib.pyplot as plt
import numpy as np

from skknn import KNNVoter

rng = np.random.default_rng(0)
n_clusters, per_block, d = 40, 600, 32
centres = 3 * rng.standard_normal((n_clusters, d)).astype(np.float32)


def draw(clusters):
    return (centres[clusters] + rng.standard_normal((len(clusters), d))).astype(
        np.float32
    )


blocks = np.repeat(np.arange(n_clusters), per_block)  # block i = cluster i
X, y = draw(blocks), blocks
Q = draw(rng.integers(0, n_clusters, 300))
ids_of = lambda a, b: np.flatnonzero((blocks >= a) & (blocks < b))  # noqa: E731

runbook = [
    ("insert clusters 0-19", "insert", ids_of(0, 20)),
    ("insert clusters 20-29", "insert", ids_of(20, 30)),
    ("delete clusters 0-4", "delete", ids_of(0, 5)),
    ("insert clusters 30-39", "insert", ids_of(30, 40)),
    ("delete 10% at random", "delete", None),
    ("delete clusters 20-24", "delete", ids_of(20, 25)),
]
memories = {
    "exact (index='flat')": KNNVoter(10, index="flat", metric="sqeuclidean"),
    "IVF64,Flat, nprobe 4": KNNVoter(
        10, index="IVF64,Flat", index_params={"nprobe": 4}, metric="sqeuclidean"
    ),
}
for knn in memories.values():
    knn.set_params(preprocessing=None)
live = np.zeros(len(X), bool)
recall = {name: [] for name in memories}
for step, (label, op, ids) in enumerate(runbook):
    if ids is None:  # a random share of what is live now
        ids = rng.choice(np.flatnonzero(live), live.sum() // 10, replace=False)
    elif op == "delete":
        ids = ids[live[ids]]  # the random step took some already
    live[ids] = op == "insert"
    for name, knn in memories.items():
        if op == "delete":
            knn.unlearn(ids, retrain_index=False)
        elif step == 0:
            knn.fit(X[ids], y[ids], sample_ids=ids)
        else:
            knn.partial_fit(X[ids], y[ids], sample_ids=ids)
    rows = np.flatnonzero(live)
    _, exact = faiss.knn(Q, X[rows], 10)
    truth = rows[exact]
    for name, knn in memories.items():
        got = knn.kneighbors(Q, return_distance=False)
        hits = sum(np.intersect1d(g, t).size for g, t in zip(got, truth))
        recall[name].append(hits / truth.size)

fig, ax = plt.subplots(figsize=(7, 3.4))
for name, values in recall.items():
    ax.plot(range(1, len(runbook) + 1), values, "o-", label=name)
ax.set_xticks(range(1, len(runbook) + 1), [r[0] for r in runbook], rotation=25)
ax.set_ylabel("recall@10 (live samples)")
ax.set_ylim(0, 1.05)
ax.legend(loc="lower left")
fig.tight_layout()
assert min(recall["exact (index='flat')"]) == 1.0
for name, values in recall.items():
    print(f"{name:22s}", " ".join(f"{v:.3f}" for v in values))
