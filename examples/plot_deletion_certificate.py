"""
A deletion certificate
======================

Unlearning by deletion is only as good as the proof of it. 200 digits are deleted
from a memory of real MNIST embeddings; the memory's digest then equals that of a
memory never fitted on them, the hash-chained edit log records the deletion, and
:func:`skknn.audit` finds none of their bytes in the saved model. Saved before the
deletion, or with a copy of one vector planted beside it, the same audit fails and
says where.
"""

import os
import tempfile

import matplotlib.pyplot as plt
import numpy as np

import skknn
from skknn.datasets import load_mnist_embeddings

data = load_mnist_embeddings()
X, y = data.embeddings[:2000], data.target[:2000]
ids = np.arange(len(y))
gone = np.random.default_rng(0).choice(ids, 200, replace=False)
kept = np.setdiff1d(ids, gone)
folder = tempfile.mkdtemp()

knn = skknn.KNNVoter(n_neighbors=10).fit(X, y, sample_ids=ids)
knn.save(os.path.join(folder, "before.skknn"))
knn.unlearn(gone)
fresh = skknn.KNNVoter(n_neighbors=10).fit(X[kept], y[kept], sample_ids=kept)
assert knn.memory_digest() == fresh.memory_digest()  # as if never fitted on them
for entry in knn.edit_log():
    print(entry["op"], entry["count"], entry["before"][:12], "->", entry["after"][:12])

# %%
# The audit: the chain, the digest recomputed from the file, the removed bytes.
path = os.path.join(folder, "after.skknn")
knn.save(path)
report = skknn.audit(path, removed=X[gone])
print(report.ok, report.n_byte_hits, report.log_head[:16])

# %%
# The same audit of the model saved before the deletion, and of a storage folder
# (the memory on disk, its log in ``edit_log.jsonl``) where one vector the memory
# stored was copied into a file beside it.
stale = skknn.audit(os.path.join(folder, "before.skknn"), removed=X[gone])
store = os.path.join(folder, "store")
disk = skknn.KNNVoter(n_neighbors=10, storage_path=store).fit(X, y, sample_ids=ids)
copy = disk.memory_.get(gone[:1], prepared=True).X  # the bytes the memory keeps
disk.unlearn(gone)
del disk  # the folder is audited as skknn.load opens it: no live owner
with open(os.path.join(store, "notes.bin"), "wb") as fh:
    fh.write(b"header" + copy.tobytes())
planted = skknn.audit(store, removed=X[gone])
print(planted.failures()[0])

fig, ax = plt.subplots(figsize=(6, 3))
cases = {
    "saved before\nunlearn": stale,
    "saved after": report,
    "folder with a\nplanted copy": planted,
}
bars = ax.bar(
    list(cases),
    [r.n_byte_hits for r in cases.values()],
    color=["C2" if r.ok else "C3" for r in cases.values()],
)
ax.bar_label(
    bars, [f"{r.n_byte_hits}: {'pass' if r.ok else 'FAIL'}" for r in cases.values()]
)
ax.set_yscale("symlog")
ax.set_ylim(0, 1000)
ax.set_ylabel("removed vectors' bytes found")
ax.set_title("skknn.audit: the 200 removed vectors found in each model")
fig.tight_layout()
assert report.ok
assert not stale.ok
assert not planted.ok
