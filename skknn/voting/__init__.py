"""How the retrieved neighbours decide (FORMULAS.md 3, 5, 7).

- :mod:`skknn.voting._rules`: neighbour weights, class scores, the tie rule and
  ``vote(record) -> Vote`` (one level or every level of multi-output labels).
- :mod:`skknn.voting._wrong_decisions`: the wrong-decision counts of a memory's
  leave-one-out votes and the soft reliability (:class:`skknn.MemoryPruner`).
- :mod:`skknn.voting._rerankers`: :class:`~skknn.rerankers.ProbeReranker`, a
  classifier choosing among the neighbours' labels (public as
  :mod:`skknn.rerankers`).

Nothing here holds estimator state or imports an estimator.
"""
