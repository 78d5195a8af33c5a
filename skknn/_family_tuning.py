"""Choosing the index *family* for ``index="auto"`` (issue 25, item 4).

:func:`skknn._tuning.tune` measures one index's knobs. Here each family worth
trying on the memory's size (exact flat search, IVF with exact, SQ8 or PQ
codes, an HNSW graph) is built on a copy of the memory's rows (the same ids,
labels and pre-processed vectors: :meth:`VectorStore.state` with another
engine), its knobs are measured as ``tune`` measures them, and every setting
becomes one row: index, knobs, prediction agreement with exact search,
neighbour recall, queries per second and bytes (the stored vectors plus the
index's own codes, as serialised). The fastest row that meets the target within
the memory budget is chosen; the non-dominated rows form the Pareto front.
Candidates are built and measured one at a time, so at most three copies of
the rows exist at once (the memory, the best candidate so far, the one being
measured). A candidate is the memory's next state: its version is one more.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
from sklearn.utils import Bunch

from skknn._tuning import agreement, measure_grid, recall_at_k
from skknn.memory.engines import TRAIN_PER_LIST

# Timings of each family's candidate setting: the median of this many.
RETIME = 3
COLUMNS = ("index", "params", "agreement", "recall", "queries_per_s", "bytes")


def candidate_families(n: int, d: int) -> list[str]:
    """The factory strings worth measuring for ``n`` samples of width ``d``:
    always exact flat search; IVF (``nlist`` the power of two nearest
    ``4 sqrt(n)``, with 39 samples a list to train on) with flat, SQ8 and PQ
    codes (``d / 4`` sub-quantizers of 8 bits, 4 bits below 10,000 samples,
    where 256 centroids a sub-space would not train); HNSW32.

    Examples
    --------
    >>> from skknn._family_tuning import candidate_families
    >>> candidate_families(100_000, 128)
    ['flat', 'IVF1024,Flat', 'IVF1024,SQ8', 'IVF1024,PQ32', 'HNSW32']
    >>> candidate_families(300, 16)
    ['flat', 'HNSW32']
    """
    out = ["flat"]
    nlist = 2 ** round(math.log2(max(4 * math.sqrt(n), 1)))
    while nlist >= 16 and nlist * TRAIN_PER_LIST > n:
        nlist //= 2
    if nlist >= 16:
        out += [f"IVF{nlist},Flat", f"IVF{nlist},SQ8"]
        m = next((m for m in (d // 4, d // 2, d) if m and d % m == 0 and m <= 64), 0)
        if m:
            out.append(f"IVF{nlist},PQ{m}" + ("" if n >= 10_000 else "x4"))
    return [*out, "HNSW32"]


def tune_family(voter, X, target: float, k: int, predict, max_memory_bytes=None):
    """Measure every family of :func:`candidate_families` on the voter's
    memory and return ``(table, best store)``: the table a Bunch of columns
    (:data:`COLUMNS`, ``seconds``), ``chosen`` and ``front`` (row numbers of
    the Pareto front); and a new store holding the memory's rows in the
    chosen row's index (its knobs not yet set)."""

    store = voter.memory_
    exact = store.search_exact(X, k, batch_size=voter.batch_size)
    reference = predict(exact)

    def score(found):
        return agreement(predict(found), reference), recall_at_k(found.ids, exact.ids)

    rebuild = rebuilder(store)
    rows, best, best_row = [], None, None
    families = candidate_families(store.n_samples, store.n_features)
    # The guard of index="auto" past its size (far queries searched exactly)
    # is kept on every approximate candidate, and so measured with it.
    far = (store.index_params or {}).get("far_quantile")
    for family in _progress(families, voter.verbose):
        cand = rebuild(family)
        found = _measure_family(cand, family, X, k, target, voter, score, far)
        rows += found
        i = _best(rows, target, max_memory_bytes)
        if i is not None and i >= len(rows) - len(found):
            best, best_row = cand, i  # this family holds the best row so far
    chosen = _best(rows, target, max_memory_bytes)
    if chosen is None:
        chosen = _fallback(rows, target, max_memory_bytes)
    if best_row != chosen:  # the fallback: rebuild its family
        family = rows[chosen]["index"]
        best = rebuild(family)
    table = {c: [r[c] for r in rows] for c in (*COLUMNS, "seconds")}
    return Bunch(
        **table,
        chosen=chosen,
        front=pareto_front(rows),
        target_agreement=float(target),
        max_memory_bytes=max_memory_bytes,
        n_queries=len(X),
        n_neighbors=k,
    ), best


def rebuilder(store):
    """``rebuild(family)``: a copy of ``store`` in RAM (same ids, labels,
    weights, flags, centre) searched by another index, as its next state
    (version + 1, no longer ``"auto"``). The state is read once for all."""
    from skknn.memory.front import VectorStore

    meta, arrays = store.state()
    meta = {**meta, "version": int(meta["version"]) + 1, "auto": False}
    arrays = {a: v for a, v in arrays.items() if not a.startswith("engine/")}

    def rebuild(family: str):
        new = {**meta, "engine": family, "index_params": {}}
        return VectorStore.from_state(new, arrays, store.device)

    return rebuild


def _measure_family(cand, family, X, k, target, voter, score, far=None):
    """The rows of one family: its knob grid as ``tune`` measures it (each
    knob with ``far_quantile=far`` when given), or one row for exact search
    (and for an index too small to be built yet)."""
    engine = cand.engine
    if family == "flat" or not getattr(engine, "ready", False):
        knobs, refines = [{}], [1]
    else:
        knobs, refines = engine.tuning_grid(cand.n_features)
        if far is not None:
            knobs = [{**knob, "far_quantile": far} for knob in knobs]

    def search(params):
        return cand.search(X, k, batch_size=voter.batch_size, index_params=params)

    found = measure_grid(knobs, refines, len(X), target, search, score)
    _retime(found, target, search)
    nbytes = int(cand.vector_nbytes) + sum(
        int(np.asarray(v).nbytes) for v in engine.state().values()
    )
    return [{"index": family, "bytes": nbytes, **r} for r in found]


def _retime(rows, target: float, search, repeats: int = RETIME) -> None:
    """Time the family's fastest setting that met ``target`` again, keeping the
    median: the families are compared by these, and one timing on a loaded
    machine can be off by more than the families differ."""
    met = [r for r in rows if r["agreement"] >= target]
    if not met:
        return
    row = max(met, key=lambda r: r["queries_per_s"])
    times = [row["seconds"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(repeats - 1):
            start = time.perf_counter()
            search(row["params"])
            times.append(time.perf_counter() - start)
    row["seconds"] = float(np.median(times))
    row["queries_per_s"] = row["queries_per_s"] * times[0] / max(row["seconds"], 1e-9)


def _best(rows, target, budget):
    ok = [
        i
        for i, r in enumerate(rows)
        if r["agreement"] >= target and (budget is None or r["bytes"] <= budget)
    ]
    return max(ok, key=lambda i: rows[i]["queries_per_s"]) if ok else None


def _fallback(rows, target, budget) -> int:
    """No row met both: the most accurate within the budget, with a warning,
    or an error naming the smallest when nothing fits it."""
    fits = [i for i, r in enumerate(rows) if budget is None or r["bytes"] <= budget]
    if not fits:
        small = min(range(len(rows)), key=lambda i: rows[i]["bytes"])
        raise ValueError(
            f"No index family fits max_memory_bytes={budget:,}: the smallest "
            f"measured, {rows[small]['index']!r}, takes {rows[small]['bytes']:,} "
            "bytes (the stored vectors included; storage_dtype='float16' halves "
            "them). Raise the budget."
        )
    chosen = max(fits, key=lambda i: (rows[i]["agreement"], rows[i]["queries_per_s"]))
    warnings.warn(
        f"No index family reached a prediction agreement of {target:.3f} with "
        f"exact search within the budget (best {rows[chosen]['agreement']:.4f}: "
        f"{rows[chosen]['index']!r}, {rows[chosen]['params']}, set).",
        UserWarning,
        stacklevel=4,
    )
    return chosen


def pareto_front(rows) -> list[int]:
    """Rows no other row beats on agreement, speed and bytes at once (no worse
    on all three, better on one), by row number.

    Examples
    --------
    >>> from skknn._family_tuning import pareto_front
    >>> rows = [
    ...     {"agreement": 1.0, "queries_per_s": 10, "bytes": 100},
    ...     {"agreement": 0.9, "queries_per_s": 50, "bytes": 100},
    ...     {"agreement": 0.9, "queries_per_s": 40, "bytes": 100},
    ... ]
    >>> pareto_front(rows)
    [0, 1]
    """
    keys = [(r["agreement"], r["queries_per_s"], -r["bytes"]) for r in rows]
    return [
        i
        for i, a in enumerate(keys)
        if not any(all(x >= y for x, y in zip(b, a)) and b != a for b in keys)
    ]


def front_frame(tuning: Bunch):
    """The Pareto front as a pandas DataFrame (a dict of columns without
    pandas): index, knobs, agreement, recall, queries/s, bytes."""
    cols = {c: [tuning[c][i] for i in tuning.front] for c in COLUMNS}
    try:
        import pandas as pd
    except ImportError:
        return cols
    return pd.DataFrame(cols).sort_values("queries_per_s", ascending=False)


def _progress(items, verbose):
    if not verbose:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="index families")
