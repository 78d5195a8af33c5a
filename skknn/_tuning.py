"""Choosing an approximate index's knobs by what a classifier needs: predictions
that agree with exact search (FORMULAS.md 7, *Approximate search quality*)."""

from __future__ import annotations

import time
import warnings

import numpy as np
from sklearn.utils import Bunch

from skknn._validation import check_float, check_int


def agreement(pred: np.ndarray, reference: np.ndarray) -> float:
    """Share of queries predicted alike (every level alike, for several)."""
    same = pred == reference
    return float(np.mean(same if same.ndim == 1 else same.all(axis=1)))


def recall_at_k(ids: np.ndarray, true_ids: np.ndarray) -> float:
    """Mean share of each query's exact ``k`` neighbours that were found."""
    k = true_ids.shape[1]
    hits = [np.intersect1d(a[a >= 0], b).size for a, b in zip(ids, true_ids)]
    return float(np.sum(hits) / (k * len(true_ids)))


def check_request(voter, target, max_memory_bytes) -> None:
    """``tune_index``'s arguments, and whether the voter's memory can be tuned
    (raises ValueError before anything is measured)."""
    check_float(voter, "target_agreement", target, low=0, low_inclusive=False)
    if target > 1:
        raise ValueError(
            "The 'target_agreement' parameter of KNNVoter.tune_index must be "
            f"in (0, 1]. Got {target!r} instead."
        )
    if max_memory_bytes is not None:
        check_int(voter, "max_memory_bytes", max_memory_bytes, low=1)
    memory = voter.memory_
    sharded = getattr(memory, "sharded", False)
    if memory.auto:
        if sharded or memory.storage_folder is not None:
            raise ValueError(
                "index='auto' tunes by rebuilding the memory in RAM; this one is "
                "on disk or in Dask shards. Fit with index=<a faiss.index_factory "
                "string> and tune its knobs instead."
            )
        return
    if max_memory_bytes is not None:
        raise ValueError(
            "max_memory_bytes chooses among index families: it applies with "
            f"index='auto' only (this memory is index={voter.engine_!r})."
        )
    if memory.tuning_grid() is None:
        raise ValueError(
            f"index={voter.engine_!r} is an exact search: it has no knobs to "
            "tune. tune_index is for approximate indexes ('IVF1024,PQ32', "
            "'HNSW32,SQ8')."
        )


def tune(voter, X: np.ndarray, target: float, k: int, predict) -> Bunch:
    """Measure the voter's index at the knob settings of its grid (cheapest
    first; per refine factor, stop raising the knob once ``target`` is met) and
    return the table with the fastest setting that met it.

    ``predict(neighbors)`` turns a record into predictions. The memory's own
    ``index_params`` never change here, so threads predicting meanwhile keep
    them (the caller applies the choice): a local memory searches each setting
    for this call only (``search(index_params=...)``); a sharded memory, whose
    shards take knobs only by ``set_index_params``, is held for writing while
    the grid is measured and set back, so its readers wait instead.
    """
    store = voter.memory_
    knobs, refines = store.tuning_grid()
    exact = store.search_exact(X, k, batch_size=voter.batch_size)
    reference = predict(exact)

    def score(found):
        return agreement(predict(found), reference), recall_at_k(found.ids, exact.ids)

    if getattr(store, "sharded", False):
        with store.editing():
            original = dict(store.index_params)
            try:
                search = _published(store, X, k, voter)
                rows = measure_grid(knobs, refines, len(X), target, search, score)
            finally:
                store.set_index_params(original)
    else:

        def search(params):
            return store.search(X, k, batch_size=voter.batch_size, index_params=params)

        rows = measure_grid(knobs, refines, len(X), target, search, score)
    return _chosen(store, rows, target, X, k)


def _published(store, X, k: int, voter):
    """A search at given knobs by setting them on the store (held for writing)."""

    def search(params):
        store.set_index_params(params)
        return store.search(X, k, batch_size=voter.batch_size)

    return search


def measure_grid(knobs, refines, n_queries: int, target: float, search, score):
    """One row per setting tried: its knobs, agreement, recall and speed.
    ``search(params)`` searches the queries at a setting; ``score(found)``
    gives its ``(agreement, recall)``."""
    rows = []
    # A setting with more refinement and no fewer probes than one that met the
    # target costs more: each refine factor only tries knobs below the last one
    # that met it.
    limit = len(knobs)
    for refine in refines:
        if limit == 0:
            break
        for j, knob in enumerate(knobs[:limit]):
            params = {**knob, **({"refine": refine} if refine > 1 else {})}
            with warnings.catch_warnings():
                # Few probes may find fewer than k: that is what is measured.
                warnings.simplefilter("ignore", UserWarning)
                start = time.perf_counter()
                found = search(params)
                seconds = time.perf_counter() - start
            agree, recall = score(found)
            rows.append(
                {
                    "params": params,
                    "agreement": agree,
                    "recall": recall,
                    "seconds": seconds,
                    "queries_per_s": n_queries / max(seconds, 1e-9),
                }
            )
            if rows[-1]["agreement"] >= target:
                limit = j
                break
    return rows


def _chosen(store, rows, target, X, k):
    """The tuning table, with the fastest row that met ``target`` chosen (the
    most accurate, with a warning, when none did)."""
    met = [i for i, r in enumerate(rows) if r["agreement"] >= target]
    if met:
        chosen = min(met, key=lambda i: rows[i]["seconds"])
    else:
        chosen = max(range(len(rows)), key=lambda i: rows[i]["agreement"])
        warnings.warn(
            f"No setting of index={store.engine_name!r} reached a prediction "
            f"agreement of {target:.3f} with exact search on these queries (best "
            f"{rows[chosen]['agreement']:.4f}, set). Use more inverted lists' "
            "probes, a finer code (more PQ bytes, SQ8) or index='flat'.",
            UserWarning,
            stacklevel=4,
        )
    table = {
        name: [r[name] for r in rows]
        for name in ("params", "agreement", "recall", "seconds", "queries_per_s")
    }
    return Bunch(
        **table,
        chosen=chosen,
        target_agreement=float(target),
        n_queries=len(X),
        n_neighbors=k,
    )


def tuning_table(tuning: Bunch) -> list[list[str]]:
    """Rows of a printed tuning table: settings, agreement, recall, speed."""
    out = []
    for i, params in enumerate(tuning.params):
        knobs = ", ".join(f"{k}={v}" for k, v in params.items()) or "(defaults)"
        out.append(
            [
                knobs + (" *" if i == tuning.chosen else ""),
                f"{100 * tuning.agreement[i]:.2f}",
                f"{100 * tuning.recall[i]:.2f}",
                f"{tuning.queries_per_s[i]:,.0f}",
            ]
        )
    return out
