"""Re-ranking the memory's candidates: how much of the gap between RankVoting
and hit@k a linear probe closes (FORMULAS.md 7, [VM] 3.2).

Real MNIST embeddings: two-digit numbers (100 classes) of real MNIST digits
through the frozen EfficientNet-Lite0, 50,000 train / 5,000 test (see
_embeddings.py, cached in benchmarks/out/). The memory retrieves k neighbours;
RankVoting decides; hit@k bounds any decision among them; the shipped
ProbeReranker lets a LogisticRegression probe choose among the neighbours' labels.

    python benchmarks/bench_rerank.py     # writes RESULTS.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer, record
from _embeddings import two_digit_mnist_embeddings

from skknn import KNNVoter
from skknn.evaluation import hit_rate_by_k
from skknn.rerankers import ProbeReranker

K = 50


def main() -> None:
    Xtr, ytr, Xte, yte, description = two_digit_mnist_embeddings()
    knn = KNNVoter(K, voting="rank").fit(Xtr, ytr)
    rank = float(np.mean(knn.predict(Xte) == yte))
    hits = hit_rate_by_k(knn, Xte, yte, max_k=K)
    with Timer() as fit:
        probe = LogisticRegression(max_iter=1000).fit(Xtr, ytr)
    alone = float(np.mean(probe.predict(Xte) == yte))
    ranked = KNNVoter(K, voting="rank", reranker=ProbeReranker(probe)).fit(Xtr, ytr)
    with Timer() as pred:
        reranked = float(np.mean(ranked.predict(Xte) == yte))
    closed = (reranked - rank) / (hits[-1] - rank)
    body = "\n".join(
        [
            f"{description}; k = {K}; probe: LogisticRegression(lbfgs) on the "
            f"memory ({fit.seconds:.1f} s); re-ranked predict {pred.seconds:.2f} s.",
            "",
            "| decision among the k neighbours | accuracy |",
            "|---|---|",
            f"| RankVoting | {rank:.4f} |",
            f"| ProbeReranker (probe over the neighbours' labels) | {reranked:.4f} |",
            f"| hit@{K} (the bound) | {hits[-1]:.4f} |",
            f"| the probe alone, all 100 classes | {alone:.4f} |",
            "",
            f"The re-ranker closes {100 * closed:.0f}% of the gap between RankVoting "
            f"and hit@{K} (target: at least a third).",
        ]
    )
    print(body)
    record(
        "Re-ranking: a probe over the memory's candidates",
        body,
        "python benchmarks/bench_rerank.py",
    )


if __name__ == "__main__":
    main()
