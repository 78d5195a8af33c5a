"""Re-rankers: what decides among the retrieved neighbours when voting is not
enough (FORMULAS.md 7, [VM] 3.2).

The public path of :mod:`skknn.voting._rerankers`, where the code lives.
"""

from skknn.voting._rerankers import ProbeReranker

__all__ = ["ProbeReranker"]
