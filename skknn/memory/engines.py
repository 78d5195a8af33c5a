"""Search engines behind :class:`~skknn.VectorStore`.

Two families, one protocol (:class:`skknn.SearchEngine`):

* :class:`TorchExactEngine`: blocked matrix product + running top-k in torch, on the
  CPU or a CUDA device ([VM] searched exactly this way, in blocks).
* :class:`FaissFlatEngine` and :class:`FaissIndexEngine`: FAISS exact search over
  the memory's own array, and any ``faiss.index_factory`` index (IVF, HNSW, PQ...)
  with its knobs (``nprobe``, ``efSearch``) set by their FAISS names.

Engines return *keys*: row positions in the memory (``keys_are_ids = False``) or
sample ids (approximate indexes, which FAISS addresses by id). Missing neighbours
have key -1. Distances follow :class:`~skknn.memory.metric.Metric`, the one place that
converts scores to distances.
"""

from __future__ import annotations

import numbers
import re
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from skknn._device import DeviceWarning, faiss_gpu_count, import_faiss
from skknn.memory.merge import merge_top
from skknn.memory.metric import Metric

# Rows widened to float32 at a time when the store keeps float16 (16 MB at d=64,
# 100 MB at d=384): bounded working memory, near-peak GEMM and FAISS speed.
WIDEN_BLOCK = 65536


# An IVF index trains when the memory first holds this many samples per
# inverted list (FAISS warns below it); until then its searches are exact.
TRAIN_PER_LIST = 39


def train_sample_size(nlist: int) -> int:
    """Training rows of a FAISS index with trained parts, at most: 64 per
    inverted list (FAISS's k-means would take up to 256, at four times the cost;
    30 to 256 is its documented range) and at least 65,536 (PQ codebooks)."""
    return max(64 * nlist, 65536)


# -- factory strings ---------------------------------------------------------------
# FAISS sizes an index from its factory string's numbers the moment it is made,
# before any data arrives ("IVF100000000,Flat" asks for 10^8 empty lists and
# ends in std::bad_alloc), so skknn reads the string first and bounds them.
# 4M lists: the most FAISS's guidelines use (billions of vectors). A list costs
# ~48 bytes when the index is made and d floats once trained.
MAX_NLIST = 1 << 22
# HNSW draws a node's level with 1 / log(M): M = 1 divides by zero. Level 0
# keeps 2M links (8M bytes) per vector: past 512 the graph outweighs vectors of
# any usual width, and FAISS's guidelines stop at 64.
HNSW_M_RANGE = (2, 512)
# 2**nbits centroids per PQ sub-quantizer: FAISS's codebooks stop at 16 bits.
PQ_NBITS_RANGE = (1, 16)
# Widths of PCA / OPQ outputs and PQ sub-quantizer counts: no embedding is wider.
MAX_WIDTH = 1 << 16
# Search knobs reach FAISS as C ints.
MAX_KNOB = 2**31 - 1
# Knobs per index family, applied per search (SearchParametersIVF / HNSW).
KNOBS = {"ivf": ("nprobe", "max_codes"), "hnsw": ("efSearch",), "codes": ()}

_DIGITS = r"(\d{1,10})"  # longer runs are absurd and refused as unreadable
_TRANSFORM = re.compile(rf"OPQ{_DIGITS}(?:_{_DIGITS})?|PCA(?:W|R|WR)?{_DIGITS}|L2norm")
_IVF = re.compile(rf"IVF{_DIGITS}(?:_HNSW{_DIGITS})?")
_IMI = re.compile(rf"IMI2x{_DIGITS}")
_HNSW = re.compile(rf"HNSW{_DIGITS}")
_CODE = re.compile(
    rf"Flat|SQ(?:4|6|8|fp16|bf16)|PQ{_DIGITS}(?:x{_DIGITS})?(fs|fsr|np)?"
)
_FORMS = (
    "[transforms,]IVF<nlist>[_HNSW<M>],<code>, [transforms,]IMI2x<bits>,<code>, "
    "HNSW<M>[,<code>] or a <code> alone, where <code> is Flat, PQ<m>[x<bits>]"
    "[fs|fsr|np] or SQ4/SQ6/SQ8/SQfp16/SQbf16 and the transforms OPQ<m>[_<d>], "
    "PCA[W|R|WR]<d> or L2norm"
)


@dataclass(frozen=True)
class FactorySpec:
    """What skknn reads off a ``faiss.index_factory`` string before FAISS sees
    it: the knob family, the inverted lists, and what must fit the data width."""

    factory: str
    family: str  # "ivf", "hnsw" or "codes": which knobs it has (KNOBS)
    nlist: int = 0  # inverted lists (IVF, IMI); 0 for none
    transforms: tuple = ()  # ("PCA", d_out) or ("OPQ", m, d_out or 0)
    pq_m: int = 0  # PQ sub-quantizers, which must divide the coded width

    def check_data(self, d: int, n: int | None = None) -> None:
        """Refuse, before FAISS allocates, an index the data cannot fill: PQ / OPQ
        sub-quantizers that do not divide the width, a PCA wider than its input,
        more inverted lists than the ``n`` training samples."""
        width = d
        for step in self.transforms:
            if step[0] == "PCA" and step[1] > width:
                self._refuse(
                    f"PCA to {step[1]} dimensions needs as many input dimensions; "
                    f"it gets {width}"
                )
            if step[0] == "PCA":
                width = step[1]
            elif step[0] == "OPQ":
                width = step[2] or width
                if width % step[1]:
                    self._refuse(
                        f"OPQ{step[1]} needs a width divisible by {step[1]}; it "
                        f"gets {width}"
                    )
        if self.pq_m and width % self.pq_m:
            self._refuse(
                f"PQ{self.pq_m} splits each vector into {self.pq_m} "
                f"parts, which must divide its width {width}"
            )
        if n is not None and self.nlist > n:
            self._refuse(
                f"{self.nlist} inverted lists need at least as many "
                f"training samples; there are {n}"
            )

    def _refuse(self, why: str):
        raise ValueError(f"index={self.factory!r} does not fit the data: {why}.")


def parse_factory(factory) -> FactorySpec:
    """Read and bound a ``faiss.index_factory`` string (without FAISS).

    Parameters
    ----------
    factory : str
        The ``index`` parameter, as given or as read from a saved memory.

    Returns
    -------
    spec : FactorySpec
        Its knob family, inverted lists and width constraints.

    Raises
    ------
    ValueError
        The string is not one of the forms skknn uses, or one of its numbers is
        out of bounds (``MAX_NLIST``, ``HNSW_M_RANGE``, ``PQ_NBITS_RANGE``).
    """
    if not isinstance(factory, str) or not 0 < len(factory) <= 200:
        _unreadable(factory, "expected a non-empty str of at most 200 characters")
    tokens = factory.split(",")
    transforms = []
    while len(tokens) > 1 and (m := _TRANSFORM.fullmatch(tokens[0])):
        transforms.append(_transform(factory, m))
        tokens.pop(0)
    head, codes = tokens[0], tokens[1:]
    family, nlist = "codes", 0
    if m := _IVF.fullmatch(head):
        family, nlist = "ivf", int(m.group(1))
        if m.group(2) is not None:
            _hnsw_m(factory, int(m.group(2)))
    elif m := _IMI.fullmatch(head):
        bits = int(m.group(1))
        family, nlist = "ivf", 1 << min(2 * bits, 64)
    elif m := _HNSW.fullmatch(head):
        family = "hnsw"
        _hnsw_m(factory, int(m.group(1)))
    elif codes:  # no index type known by that name, or a number over 10 digits
        _unreadable(factory, f"cannot read {head!r}")
    else:
        codes = tokens  # a code alone: "PQ16", "SQ8", "Flat"
    if family == "ivf" and not 1 <= nlist <= MAX_NLIST:
        raise ValueError(
            f"index={factory!r} asks for {nlist} inverted lists; nlist must be in "
            f"[1, {MAX_NLIST}] (FAISS allocates every list when the index is made, "
            "before any data arrives)."
        )
    if len(codes) != (0 if family == "hnsw" and not codes else 1):
        _unreadable(factory, f"expected one code after {head!r}")
    pq_m = _code(factory, codes[0]) if codes else 0
    return FactorySpec(factory, family, nlist, tuple(transforms), pq_m)


def _unreadable(factory, why: str):
    raise ValueError(
        f"index={factory!r} is not a valid faiss.index_factory string skknn can "
        f"use ({why}). The forms taken: {_FORMS}."
    )


def _transform(factory: str, m: re.Match) -> tuple:
    if m.group(0) == "L2norm":
        return ("L2norm",)
    if m.group(3) is not None:
        d_out = int(m.group(3))
        _bounded(factory, "PCA output width", d_out, 1, MAX_WIDTH)
        return ("PCA", d_out)
    parts = int(m.group(1))
    d_out = 0 if m.group(2) is None else int(m.group(2))
    _bounded(factory, "OPQ sub-quantizers", parts, 1, MAX_WIDTH)
    if d_out:
        _bounded(factory, "OPQ output width", d_out, 1, MAX_WIDTH)
    return ("OPQ", parts, d_out)


def _hnsw_m(factory: str, M: int) -> None:
    _bounded(factory, "HNSW's M (links per node)", M, *HNSW_M_RANGE)


def _code(factory: str, token: str) -> int:
    """The PQ sub-quantizers of a code token (0 for Flat and SQ), bounded."""
    m = _CODE.fullmatch(token)
    if m is None:
        _unreadable(factory, f"cannot read {token!r}")
    if m.group(1) is None:
        return 0
    parts = int(m.group(1))
    _bounded(factory, "PQ sub-quantizers", parts, 1, MAX_WIDTH)
    if m.group(2) is not None:
        _bounded(factory, "PQ bits per code", int(m.group(2)), *PQ_NBITS_RANGE)
    return parts


def _bounded(factory: str, what: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(
            f"index={factory!r}: {what} must be in [{low}, {high}]; got {value}."
        )


def check_knobs(spec: FactorySpec, params: dict) -> dict:
    """The index's search knobs, validated against its family: known names
    only (``KNOBS``), int values in range. Returns a plain copy.

    Parameters
    ----------
    spec : FactorySpec
        The index they are for.
    params : dict
        ``index_params`` without ``"refine"``.

    Returns
    -------
    knobs : dict
        ``{name: int}``.
    """
    knobs = {}
    for name, value in dict(params or {}).items():
        if name not in KNOBS[spec.family]:
            known = ", ".join(repr(k) for k in KNOBS[spec.family]) or "none"
            raise ValueError(
                f"index_params: FAISS index {spec.factory!r} has no parameter "
                f"{name!r}; its search knobs are {known} (and 'refine'): 'nprobe' "
                "and 'max_codes' for IVF, 'efSearch' for HNSW."
            )
        low = 0 if name == "max_codes" else 1  # max_codes=0: no limit
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Integral)
            or not low <= value <= MAX_KNOB
        ):
            raise ValueError(
                f"index_params[{name!r}] must be an int in [{low}, {MAX_KNOB}]; "
                f"got {value!r}."
            )
        knobs[name] = int(value)
    return knobs


def float32_blocks(X: np.ndarray, size: int = WIDEN_BLOCK):
    """``(start, rows)`` of ``X`` as C-contiguous float32, ``size`` rows at a time
    (views when ``X`` already is float32: nothing is copied)."""
    for start in range(0, X.shape[0], size):
        yield start, np.ascontiguousarray(X[start : start + size], dtype=np.float32)


def flat_search(faiss, metric: Metric, X: np.ndarray, Q: np.ndarray, k: int):
    """Exact FAISS search of the rows ``X`` (widened a block at a time when they
    are float16): ``(scores, rows)``."""
    faiss_metric = metric.faiss_metric(faiss)
    if X.dtype == np.float32:
        return faiss.knn(Q, X, k, metric=faiss_metric)
    best = None
    for start, rows in float32_blocks(X):
        s, i = faiss.knn(Q, rows, min(k, rows.shape[0]), metric=faiss_metric)
        new = (s, i + start)
        best = (
            new
            if best is None
            else merge_top([best, new], k, largest=metric.inner_product, ties="stable")
        )
    return best


class _Untrained:
    """The edits of an exact engine: nothing is trained, so any removal works
    and is a rebuild on the kept rows, and there are no knobs to set."""

    name = "exact"
    keys_are_ids = False
    ready = True  # nothing to train

    def check_remove(self, n_features: int, n_kept: int, retrain: bool) -> None:
        return None

    def set_params(self, params: dict) -> None:
        _no_params(self.name, params)

    def remove(
        self,
        X_kept: np.ndarray,
        ids_kept: np.ndarray,
        ids_removed: np.ndarray,
        retrain: bool = False,
    ) -> None:
        self.build(X_kept, ids_kept)


class TorchExactEngine(_Untrained):
    """Exact search: query blocks x memory blocks, matrix product, running top-k.

    On the CPU it reads the store's array in place (no copy); on CUDA it mirrors
    the store on the device, with amortised headroom like the store's own
    buffers, so ``partial_fit`` of a small batch does not copy the mirror.

    On the CPU, with FAISS installed, the product and top-k are FAISS's
    brute-force kernel (:func:`flat_search`): the same exact search, where
    torch's matmul and ``topk`` took 1.3-1.7x as long as FAISS on the
    benchmark machine (benchmarks/RESULTS.md, "Speed ratios"). Either way the
    store recomputes each retrieved pair's distance and settles ties by id, so
    the answers do not depend on which arithmetic ranked the candidates.
    """

    def __init__(
        self,
        metric: Metric,
        device: torch.device,
        query_block: int = 1024,
        db_block: int = 16384,
    ):
        self.metric = metric
        self.device = torch.device(device)
        # 1024 x 16384 float32 scores = 64 MB per step: near-peak GEMM speed on
        # the CPU while the working set stays small beside the memory itself.
        self.query_block = query_block
        self.db_block = db_block
        self._mirror: torch.Tensor | None = None  # device rows, with headroom
        self._n = 0

    def build(self, X: np.ndarray, ids: np.ndarray) -> None:
        mirror = None
        if self.device.type != "cpu":
            cap = X.shape[0] + max(1024, X.shape[0] // 16)
            mirror = torch.zeros((cap, X.shape[1]), device=self.device)
            mirror[: X.shape[0]] = torch.from_numpy(np.ascontiguousarray(X))
        self._mirror, self._n = mirror, X.shape[0]

    def add(self, X_new: np.ndarray, ids_new: np.ndarray) -> None:
        n, m = self._n, X_new.shape[0]
        mirror = self._mirror
        if mirror is not None:
            if n + m > mirror.shape[0]:
                grown = torch.zeros(
                    (max(n + m, int(mirror.shape[0] * 1.5) + 16), mirror.shape[1]),
                    device=self.device,
                )
                grown[:n] = mirror[:n]
                mirror = grown
            mirror[n : n + m] = torch.from_numpy(np.ascontiguousarray(X_new))
        self._mirror, self._n = mirror, n + m

    def search(self, X: np.ndarray, Q: np.ndarray, k: int, params=None):
        _no_params("exact", params)
        faiss = _faiss_on_cpu(self.device)
        if faiss is not None:
            score, rows = flat_search(faiss, self.metric, X, Q, k)
            return self.metric.to_distance(score), rows
        if self._mirror is not None:
            db = self._mirror[: self._n]
        else:
            with warnings.catch_warnings():
                # A loaded memory's array is read-only; torch only reads it.
                warnings.filterwarnings("ignore", message=".*not writable.*")
                db = torch.from_numpy(X)
        parts = [
            self._search_block(db, Q[s : s + self.query_block], k)
            for s in range(0, Q.shape[0], self.query_block)
        ]
        return np.concatenate([p[0] for p in parts]), np.concatenate(
            [p[1] for p in parts]
        )

    def _search_block(self, db: torch.Tensor, Q: np.ndarray, k: int):
        n = db.shape[0]
        q = torch.from_numpy(Q).to(self.device)
        best_s = best_i = None
        largest = self.metric.inner_product
        with torch.inference_mode():
            for start in range(0, n, self.db_block):
                block = db[start : start + self.db_block]
                if block.dtype != torch.float32:  # float16 storage: widen a block
                    block = block.float()
                s = q @ block.T
                if not largest:
                    # ||q - x||^2 = ||q||^2 + ||x||^2 - 2 q.x; ||q||^2 is added after
                    # top-k, since it does not change the order within a query.
                    s = block.pow(2).sum(1) - 2.0 * s
                kb = min(k, s.shape[1])
                v, ix = torch.topk(s, kb, dim=1, largest=largest, sorted=False)
                ix += start
                if best_s is not None:
                    v = torch.cat([best_s, v], 1)
                    ix = torch.cat([best_i, ix], 1)
                    if v.shape[1] > k:
                        v, pos = torch.topk(v, k, dim=1, largest=largest, sorted=False)
                        ix = torch.gather(ix, 1, pos)
                best_s, best_i = v, ix
            best_s, order = torch.sort(best_s, dim=1, descending=largest)
            best_i = torch.gather(best_i, 1, order)
            if not largest:
                best_s = best_s + q.pow(2).sum(1, keepdim=True)
        score = best_s.cpu().numpy()
        return self.metric.to_distance(score), best_i.cpu().numpy().astype(np.int64)

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict, X: np.ndarray, ids: np.ndarray) -> None:
        self.build(X, ids)


def _faiss_on_cpu(device: torch.device):
    """FAISS for an exact search on the CPU, or None (a CUDA device, or no
    FAISS installed: torch searches)."""
    if device.type != "cpu":
        return None
    try:
        import faiss
    except ImportError:
        return None
    return faiss


class FaissFlatEngine(_Untrained):
    """Exact FAISS search over the store's own array (``faiss.knn``): no index,
    hence no second copy of the vectors on the host. With FAISS GPU support and a
    CUDA device, a ``GpuIndexFlat`` mirrors the store on the GPU instead."""

    name = "flat"

    def __init__(self, metric: Metric, device: torch.device):
        self.faiss = import_faiss("index='flat'")
        self.metric = metric
        self.device = torch.device(device)
        self._gpu_index = None
        self._res = None

    def _use_gpu(self) -> bool:
        return self.device.type == "cuda" and faiss_gpu_count() > 0

    def build(self, X: np.ndarray, ids: np.ndarray) -> None:
        gpu_index = None
        if self._use_gpu():
            faiss = self.faiss
            if self._res is None:
                self._res = faiss.StandardGpuResources()
            cfg = faiss.GpuIndexFlatConfig()
            cfg.device = self.device.index or 0
            cls = (
                faiss.GpuIndexFlatIP
                if self.metric.inner_product
                else faiss.GpuIndexFlatL2
            )
            gpu_index = cls(self._res, X.shape[1], cfg)
            for _, rows in float32_blocks(X):
                gpu_index.add(rows)
        self._gpu_index = gpu_index

    def add(self, X_new: np.ndarray, ids_new: np.ndarray) -> None:
        if self._gpu_index is not None:
            for _, rows in float32_blocks(X_new):
                self._gpu_index.add(rows)

    def search(self, X: np.ndarray, Q: np.ndarray, k: int, params=None):
        _no_params("flat", params)
        if self._gpu_index is not None:
            score, keys = self._gpu_index.search(Q, k)
        else:
            score, keys = flat_search(self.faiss, self.metric, X, Q, k)
        return self.metric.to_distance(score), keys

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict, X: np.ndarray, ids: np.ndarray) -> None:
        self.build(X, ids)


class FaissIndexEngine:
    """Any ``faiss.index_factory`` index, addressed by sample id.

    The index keeps its own codes (compressed for PQ/SQ, full vectors for
    ``IVF...,Flat`` and ``HNSW...``). An IVF index is trained when the memory
    first holds ``TRAIN_PER_LIST`` (39) samples per inverted list, on a random
    sample of at most :func:`train_sample_size` of them; until then it is not
    built (:attr:`ready` is False), the store rebuilds it at each add, and
    searches are exact over the store's rows. Removal
    with ``retrain=True`` trains a fresh index on the remaining vectors (centroids
    and codebooks fitted with the removed vectors would still carry them);
    otherwise it uses the index's ``remove_ids`` where FAISS supports it, or
    rebuilds the codes on the kept trained parts. An HNSW graph (FAISS cannot
    remove from one) marks the removed nodes dead instead: searches skip them
    (an ``IDSelector``) and the graph is compacted (rebuilt on the kept rows)
    when ``retrain=True``, when over ``COMPACT_SHARE`` of it is dead, and
    before its state is saved. Otherwise removed vectors' codes never stay.

    The factory string is read and bounded (:func:`parse_factory`) when the
    engine is made, from a fit or a file, and checked against the data
    (:meth:`FactorySpec.check_data`) before every FAISS index is made. Search
    knobs are applied per search (FAISS ``SearchParameters``), from the one
    dict :attr:`params` read once per call: setting them is atomic for readers.
    """

    def __init__(
        self, metric: Metric, device: torch.device, factory: str, params: dict
    ):
        self.faiss = import_faiss(f"index={factory!r}")
        self.metric = metric
        self.device = torch.device(device)
        self.factory = factory
        self.spec = parse_factory(factory)
        self.params = check_knobs(self.spec, params)
        self.index = None
        self._d: int | None = None
        self._res = None
        self._min_train: tuple[int, int] | None = None
        self._dead: _DeadNodes | None = None  # HNSW nodes removed, not compacted

    @property
    def ready(self) -> bool:
        """Whether the index is built (an IVF index waits for enough samples)."""
        return self.index is not None

    @property
    def keys_are_ids(self) -> bool:
        # The index answers with ids; before it is built, exact search of the
        # store's rows answers with rows.
        return self.index is not None

    # -- construction ---------------------------------------------------------
    def _new_index(self, d: int, n: int | None = None):
        """A fresh FAISS index for width ``d`` (to train on ``n`` samples), made
        only once the factory string is known to fit them."""
        self.spec.check_data(d, n)
        faiss = self.faiss
        try:
            index = faiss.index_factory(
                d, self.factory, self.metric.faiss_metric(faiss)
            )
        except RuntimeError as exc:
            raise ValueError(
                f"index={self.factory!r} is not a valid faiss.index_factory string: "
                f"{str(exc).strip().splitlines()[-1]}"
            ) from exc
        _skip_polysemous_training(faiss, index)
        if faiss.try_extract_index_ivf(index) is None:
            # Only IVF indexes store ids natively; the others get an id map.
            index = faiss.IndexIDMap2(index)
        return index

    def _train(self, index, X: np.ndarray) -> None:
        """Train on at most :func:`train_sample_size` rows, drawn evenly at random
        (seeded by the memory size, so equal memories train equally) and widened
        to float32: the memory is never copied whole."""
        if index.is_trained:
            return
        n_sample = train_sample_size(max(self.spec.nlist, 1))
        if X.shape[0] > n_sample:
            rng = np.random.default_rng(X.shape[0])
            rows = np.sort(rng.choice(X.shape[0], n_sample, replace=False))
            X = X[rows]
        # build() waits for TRAIN_PER_LIST samples a list, so IVF gets enough.
        X = np.ascontiguousarray(X, dtype=np.float32)
        try:
            index.train(X)
        except RuntimeError as exc:
            raise ValueError(
                f"Training index={self.factory!r} on {X.shape[0]} samples failed: "
                f"{str(exc).strip().splitlines()[-1]}"
            ) from exc

    def _mirror_params(self, index, knobs: dict) -> None:
        """Write the knobs into the index's own fields as well (FAISS's defaults
        for those left out). CPU searches pass their knobs per search and never
        read these; they serve a GPU index (searched without parameters), the
        saved index and anyone inspecting it. Called only with the store's write
        lock held, or on an index no reader sees yet."""
        faiss = self.faiss
        space = (
            faiss.GpuParameterSpace() if self._on_gpu(index) else faiss.ParameterSpace()
        )
        for name, value in {**self._defaults(), **knobs}.items():
            space.set_index_parameter(index, name, value)

    def _defaults(self) -> dict:
        """FAISS's default knobs of this index family, read off its
        ``SearchParameters`` (they equal a fresh index's own fields)."""
        faiss = self.faiss
        if self.spec.family == "ivf":
            fresh = faiss.SearchParametersIVF()
            return {"nprobe": int(fresh.nprobe), "max_codes": int(fresh.max_codes)}
        if self.spec.family == "hnsw":
            return {"efSearch": int(faiss.SearchParametersHNSW().efSearch)}
        return {}

    def set_params(self, params: dict) -> None:
        """Set the search knobs by their FAISS names, all or none (checked first:
        :func:`check_knobs`). A knob left out goes back to FAISS's default.
        Searches read :attr:`params` once, so each sees the old knobs or the new."""
        knobs = check_knobs(self.spec, params)
        if self.index is not None:
            self._mirror_params(self.index, knobs)
        self.params = knobs

    def _search_params(self, knobs: dict, sel=None):
        """FAISS ``SearchParameters`` carrying ``knobs`` (defaults for the rest)
        and an id selector, or None for an index without knobs."""
        faiss = self.faiss
        if self.spec.family == "ivf":
            return faiss.SearchParametersIVF(**knobs)
        if self.spec.family == "hnsw":
            if sel is None:
                return faiss.SearchParametersHNSW(**knobs)
            return faiss.SearchParametersHNSW(**knobs, sel=sel)
        return None

    def _on_gpu(self, index) -> bool:
        return index is not None and "Gpu" in type(index).__name__

    def _to_device(self, index):
        if self.device.type != "cuda" or faiss_gpu_count() == 0:
            return index
        faiss = self.faiss
        if self._res is None:
            self._res = faiss.StandardGpuResources()
        try:
            return faiss.index_cpu_to_gpu(self._res, self.device.index or 0, index)
        except RuntimeError as exc:
            # Not every index type runs on the GPU (HNSW does not). Searching on
            # the CPU still answers correctly, but far slower than the user
            # expects on a GPU: say so, once per build, rather than hide it.
            warnings.warn(
                f"index={self.factory!r} cannot run on {self.device} in FAISS "
                f"({str(exc).strip().splitlines()[-1]}); it searches on the CPU. "
                "Pass device='cpu' to silence this, or pick a GPU-capable index "
                "('flat', 'IVF...,Flat', 'IVF...,PQ...').",
                DeviceWarning,
                stacklevel=2,
            )
            return index

    def build(self, X: np.ndarray, ids: np.ndarray) -> None:
        self._d = X.shape[1]
        if X.shape[0] < self._build_rows(X.shape[1]):
            # Too few samples to train the lists well: exact search until then.
            # A string FAISS refuses fails now, if the data can fill its lists
            # (more lists than samples would be allocated for nothing).
            self.spec.check_data(X.shape[1])
            if self.spec.nlist <= X.shape[0]:
                self._new_index(X.shape[1], X.shape[0])
            self.index, self._dead = None, None
            return
        index = self._new_index(X.shape[1], X.shape[0])
        self._train(index, X)
        _add_blocks(index, X, ids)
        index = self._to_device(index)
        self._mirror_params(index, self.params)
        self.index, self._dead = index, None

    def add(self, X_new: np.ndarray, ids_new: np.ndarray) -> None:
        _add_blocks(self.index, X_new, ids_new)
        if self._dead is not None:  # new nodes are live
            self._dead = self._dead.grown(ids_new)

    def _build_rows(self, d: int) -> int:
        """Samples an index needs before it is built: ``TRAIN_PER_LIST`` per
        inverted list for IVF, else any."""
        return TRAIN_PER_LIST * self.spec.nlist

    def _min_train_samples(self, d: int) -> int:
        """0 when the index has no trained parts, else the fewest samples that can
        train it (IVF: one per list). Depends on the factory string and ``d`` only."""
        if self.spec.nlist:
            return self.spec.nlist  # without making lists to find out
        if self._min_train is None or self._min_train[0] != d:
            need = 0 if self._new_index(d).is_trained else 1
            self._min_train = (d, need)
        return self._min_train[1]

    def check_remove(self, n_features: int, n_kept: int, retrain: bool) -> None:
        """Nothing can fail before the store changes: a retrained index with too
        few samples left waits for more (exact search), as a fresh fit would."""
        return None

    def remove(
        self, X_kept: np.ndarray, ids_kept: np.ndarray, ids_removed, retrain=False
    ) -> None:
        if (
            not retrain
            and self.index is not None
            and self.spec.family == "hnsw"
            and self._mark_dead(ids_removed)
        ):
            return  # the graph keeps the nodes; searches skip them
        if self.index is None or not self._min_train_samples(X_kept.shape[1]):
            # Nothing trained (HNSW, PQ-less flat codes): a fresh build is as cheap
            # as re-adding into a clone, and equals a fresh fit (a clone would
            # carry the HNSW level generator's state on).
            self.build(X_kept, ids_kept)
            return
        if retrain and len(ids_kept):
            # A fresh index trained on what remains: centroids and codebooks
            # fitted while the removed vectors were present would still carry them.
            try:
                self.build(X_kept, ids_kept)
                return
            except ValueError as exc:
                warnings.warn(
                    f"{exc} The trained parts of index={self.factory!r} were kept: "
                    "they still reflect the unlearned samples.",
                    UserWarning,
                    stacklevel=4,
                )
        cpu = self._cpu_index()
        removable = (
            cpu is self.index and self.faiss.try_extract_index_ivf(cpu) is not None
        )
        if removable:
            n_removed = cpu.remove_ids(
                np.ascontiguousarray(ids_removed, dtype=np.int64)
            )
            if n_removed == len(ids_removed):
                return
        # Keep the trained quantizer, drop every stored code, add back the rest.
        index = self.faiss.clone_index(cpu)
        index.reset()
        _add_blocks(index, X_kept, ids_kept)
        index = self._to_device(index)
        self._mirror_params(index, self.params)
        self.index, self._dead = index, None

    def _mark_dead(self, ids_removed) -> bool:
        """Mark the live graph nodes of ``ids_removed`` dead (the vectors' bytes
        stay in the graph's storage until it is compacted). False, marking
        nothing, when the dead would pass ``COMPACT_SHARE`` of the graph or an
        id has no live node: the caller compacts instead."""
        dead = self._dead
        if dead is None:
            dead = _DeadNodes.of(self.faiss, self.index)
        ids_removed = np.asarray(ids_removed, dtype=np.int64)
        # A removed id may come back (a later add): only its live node goes.
        hit = np.isin(dead.ids, ids_removed) & ~dead.mask
        if int(hit.sum()) != ids_removed.size:
            return False
        mask = dead.mask | hit
        if mask.sum() > COMPACT_SHARE * mask.size:
            return False
        self._dead = _DeadNodes.from_mask(dead.ids, mask)
        return True

    def tuning_grid(self, n_features: int) -> tuple[list[dict], list[int]]:
        """``(knob settings, refine factors)`` worth measuring, cheapest first:
        ``nprobe`` in powers of two up to the number of lists for IVF,
        ``efSearch`` from 16 to 512 for HNSW; refinement only where the index
        keeps compact codes (PQ, SQ), since exact codes gain nothing from it."""
        faiss = self.faiss
        if self.index is None:
            raise ValueError(
                f"index={self.factory!r} is not built yet: the memory holds fewer "
                f"than {self._build_rows(n_features)} samples ({TRAIN_PER_LIST} per "
                "inverted list), and its searches are exact."
            )
        cpu = self._cpu_index()
        ivf = faiss.try_extract_index_ivf(cpu)
        inner = faiss.downcast_index(getattr(cpu, "index", cpu))
        if ivf is not None:
            nlist = int(ivf.nlist)
            knobs = [{"nprobe": p} for p in _powers_of_two(nlist)]
            code_size = int(ivf.code_size)
        elif hasattr(inner, "hnsw"):
            knobs = [{"efSearch": e} for e in (16, 32, 64, 128, 256, 512)]
            storage = faiss.downcast_index(inner.storage)
            code_size = int(storage.sa_code_size())
        else:
            knobs, code_size = [{}], int(cpu.sa_code_size())
        compact = code_size < 4 * n_features
        return knobs, [1, 2, 4, 8, 16, 32] if compact else [1]

    def _cpu_index(self):
        if self._on_gpu(self.index):
            return self.faiss.index_gpu_to_cpu(self.index)
        return self.index

    def search(self, X: np.ndarray, Q: np.ndarray, k: int, params=None):
        """``(distances, keys)`` of the ``k`` nearest; ``params`` overrides the
        knobs for this search only (what :meth:`KNNVoter.tune_index` measures)."""
        # Read once: a concurrent set_params swaps the dict, never edits it.
        knobs = self.params if params is None else check_knobs(self.spec, params)
        index, dead = self.index, self._dead
        if index is None:
            score, keys = flat_search(self.faiss, self.metric, X, Q, k)
        elif dead is not None:
            score, keys = self._search_live(index, dead, Q, k, knobs)
        elif self._on_gpu(index):  # knobs set on the index (GPU search params vary)
            score, keys = index.search(Q, k)
        else:
            score, keys = index.search(Q, k, params=self._search_params(knobs))
        return self.metric.to_distance(score), keys

    def _search_live(self, index, dead: _DeadNodes, Q: np.ndarray, k: int, knobs):
        """Search an HNSW graph with dead nodes, skipping them: the graph itself
        (under the id map) with a bitmap selector of the live nodes, and
        ``efSearch`` raised by the dead share so as many live candidates are
        kept. A query still short of ``k`` searches again with twice the
        ``efSearch``, up to the graph's size."""
        faiss = self.faiss
        graph = faiss.downcast_index(index.index)
        sel = faiss.IDSelectorBitmap(dead.bitmap.size, faiss.swig_ptr(dead.bitmap))
        ef = max(knobs.get("efSearch", self._defaults()["efSearch"]), k)
        ef = int(np.ceil(ef * dead.mask.size / max(dead.n_live, 1)))
        score = np.empty((Q.shape[0], k), np.float32)
        nodes = np.empty((Q.shape[0], k), np.int64)
        todo = np.arange(Q.shape[0])
        while todo.size:
            params = self._search_params({"efSearch": min(ef, MAX_KNOB)}, sel)
            score[todo], nodes[todo] = graph.search(Q[todo], k, params=params)
            short = (nodes[todo] < 0).any(axis=1) & (k <= dead.n_live)
            if ef >= dead.mask.size:
                break
            todo, ef = todo[short], 2 * ef
        keys = np.where(nodes >= 0, dead.ids[np.maximum(nodes, 0)], -1)
        return score, keys

    def state(self) -> dict:
        if self.index is None or self._dead is not None:
            # A graph with dead nodes holds removed vectors' bytes: the file
            # gets none, and the load rebuilds the index on the kept rows.
            return {}
        data = self.faiss.serialize_index(self._cpu_index())
        return {"faiss_index": np.asarray(data, dtype=np.uint8)}

    def load_state(self, state: dict, X: np.ndarray, ids: np.ndarray) -> None:
        try:
            index = self.faiss.deserialize_index(
                np.ascontiguousarray(state["faiss_index"], dtype=np.uint8)
            )
        except (RuntimeError, AssertionError, TypeError) as exc:
            # FAISS's own checks of a damaged or foreign blob
            raise ValueError(f"the saved index is unreadable ({exc})") from exc
        self._check_loaded(index, X.shape[0], X.shape[1])
        self._check_loaded_ids(index, ids)
        index = self._to_device(index)
        self._mirror_params(index, self.params)
        self.index, self._d, self._dead = index, X.shape[1], None

    def _check_loaded(self, index, n: int, d: int) -> None:
        """Refuse a saved index unlike the one its factory string describes for
        these rows (another width, number of lists or vectors)."""
        ivf = self.faiss.try_extract_index_ivf(index)
        found = (int(index.d), 0 if ivf is None else int(ivf.nlist), int(index.ntotal))
        if found != (d, self.spec.nlist, n):
            raise ValueError(
                f"The saved index of index={self.factory!r} has width {found[0]}, "
                f"{found[1]} inverted lists and {found[2]} vectors; the memory "
                f"needs {d}, {self.spec.nlist} and {n}."
            )

    def _check_loaded_ids(self, index, ids: np.ndarray) -> None:
        """Refuse a saved index whose sample ids are not the memory's: a search
        would name samples the memory does not hold."""
        held = _index_ids(self.faiss, index)
        if held is not None and not np.array_equal(np.sort(held), np.sort(ids)):
            raise ValueError(
                f"The saved index of index={self.factory!r} holds sample ids "
                "that are not the memory's (an index from another memory)."
            )


def _index_ids(faiss, index) -> np.ndarray | None:
    """The ids an index answers with (id map or inverted lists), or None where
    they are positions."""
    if hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return None
    lists = ivf.invlists
    parts = []
    for i in range(ivf.nlist):
        size = lists.list_size(i)
        if size:
            parts.append(faiss.rev_swig_ptr(lists.get_ids(i), size).copy())
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


# Share of an HNSW graph's nodes that may be dead (removed, skipped by searches)
# before remove() compacts it: searches raise efSearch by 1 / (1 - share), so
# past a fifth they would pay more than 25% for the dead.
COMPACT_SHARE = 0.2


class _DeadNodes(NamedTuple):
    """An HNSW graph's removed nodes, published as one value so a search reads
    one consistent set: each node's id (the id map's copy), which are dead, and
    the bitmap of the live ones for ``faiss.IDSelectorBitmap``."""

    ids: np.ndarray
    mask: np.ndarray
    bitmap: np.ndarray
    n_live: int

    @classmethod
    def of(cls, faiss, index) -> _DeadNodes:
        """None dead yet, for an ``IndexIDMap2`` around a graph."""
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        return cls.from_mask(ids, np.zeros(ids.size, dtype=bool))

    @classmethod
    def from_mask(cls, ids: np.ndarray, mask: np.ndarray) -> _DeadNodes:
        bitmap = np.packbits(~mask, bitorder="little")
        return cls(ids, mask, bitmap, int(mask.size - mask.sum()))

    def grown(self, ids_new: np.ndarray) -> _DeadNodes:
        """After an add: the new nodes, appended to the graph, are live."""
        ids = np.concatenate([self.ids, np.asarray(ids_new, dtype=np.int64)])
        mask = np.concatenate([self.mask, np.zeros(len(ids_new), dtype=bool)])
        return _DeadNodes.from_mask(ids, mask)


def _skip_polysemous_training(faiss, index) -> None:
    """Turn off the polysemous training ``index_factory`` asks of PQ codes.

    It only reorders each sub-quantizer's centroids so that Hamming distances
    between codes approximate real ones, for FAISS's polysemous filter
    (``polysemous_ht``), which skknn never sets: the same centroids in another
    order give the same ADC distances, so searches are unchanged, and it was
    most of a PQ index's training time (87 of 114 s for IVF4096,PQ32 on
    300k x 64 in benchmarks/bench_streaming.py).
    """
    ivf = faiss.try_extract_index_ivf(index)
    inner = faiss.downcast_index(ivf if ivf is not None else index)
    if hasattr(inner, "do_polysemous_training"):
        inner.do_polysemous_training = False


def _powers_of_two(top: int) -> list[int]:
    """1, 2, 4, ... up to ``top``, with ``top`` itself last."""
    values = [1 << i for i in range(max(top, 1).bit_length()) if 1 << i < top]
    return [*values, top]


def _add_blocks(index, X: np.ndarray, ids: np.ndarray) -> None:
    """Add in blocks of float32 rows: a float16 memory is widened a block at a
    time, never whole."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    graph = _hnsw_of(index)
    for start, rows in float32_blocks(X):
        if graph is not None:
            _reseed_levels(graph)
        index.add_with_ids(rows, ids[start : start + rows.shape[0]])


def _hnsw_of(index):
    """The HNSW graph an index adds to (inside an id map), or None."""
    import faiss

    inner = faiss.downcast_index(getattr(index, "index", index))
    return inner if hasattr(inner, "hnsw") else None


def _reseed_levels(graph) -> None:
    """Seed the generator that draws new nodes' levels from the graph's size.

    FAISS keeps that generator's state in the live index only: a serialized
    index (save, pickle, a new process) restarts it, so the same later adds
    would build a different graph and change approximate answers. Seeded from
    the node count, a round trip changes nothing.
    """
    import faiss

    graph.hnsw.rng = faiss.RandomGenerator(_LEVEL_SEED + int(graph.ntotal))


# FAISS's own default seed for HNSW levels, offset by the node count.
_LEVEL_SEED = 12345


def _no_params(name: str, params: dict) -> None:
    if params:
        raise ValueError(
            f"index={name!r} is an exact search and takes no index_params; got "
            f"{params!r}. Search knobs such as nprobe or efSearch belong to a "
            "faiss.index_factory index ('IVF1024,Flat', 'HNSW32')."
        )


# index="auto": exact search below AUTO_MIN_SAMPLES samples, compact codes with
# exact re-ranking from the stored vectors above. The knobs keep >= 99% of exact
# search's predictions on benchmarks/bench_large.py (RESULTS.md).
AUTO_MIN_SAMPLES = 1_000_000
AUTO_INDEX = "IVF4096,PQ32"
AUTO_PARAMS = {"nprobe": 32, "refine": 4, "far_quantile": 0.999}


def auto_engine(n_samples: int) -> tuple[str, dict]:
    """The engine and knobs ``index="auto"`` uses for a memory of this size."""
    if n_samples < AUTO_MIN_SAMPLES:
        return "flat", {}
    return AUTO_INDEX, dict(AUTO_PARAMS)


class Refinement(NamedTuple):
    """What the store does around the index's answer (``index_params`` keys
    that are not FAISS knobs).

    ``refine``: candidates fetched per neighbour, re-ranked by exact distance.
    ``far_quantile``: a query whose k-th candidate lies farther than this
    quantile of the memory's own k-th-neighbour distances is searched exactly
    (None: never). Inverted lists and graphs answer such out-of-distribution
    queries poorly, e.g. queries about a region whose samples were unlearned
    (``benchmarks/bench_streaming.py``)."""

    refine: int = 1
    far_quantile: float | None = None


def split_refine(engine: str, params: dict) -> tuple[Refinement, dict]:
    """``(Refinement, the FAISS knobs)`` of ``index_params``: ``"refine"`` and
    ``"far_quantile"`` are the store's, the rest go to the index."""
    params = dict(params or {})
    refine = params.pop("refine", 1)
    far = params.pop("far_quantile", None)
    if (
        isinstance(refine, bool)
        or not isinstance(refine, numbers.Integral)
        or refine < 1
    ):
        raise ValueError(
            f"index_params['refine'] must be an int >= 1 (candidates per neighbour "
            f"re-ranked exactly); got {refine!r}."
        )
    if far is not None and (
        isinstance(far, bool)
        or not isinstance(far, numbers.Real)
        or not 0 < float(far) <= 1
    ):
        raise ValueError(
            "index_params['far_quantile'] must be a number in (0, 1] (queries "
            "farther than this quantile of the memory's own k-th-neighbour "
            f"distances are searched exactly) or None; got {far!r}."
        )
    for name, value in (("refine", refine > 1), ("far_quantile", far is not None)):
        if value and engine in ("exact", "flat"):
            raise ValueError(
                f"index={engine!r} is an exact search: there is nothing to "
                f"refine. {name!r} belongs to approximate indexes ('IVF1024,PQ32')."
            )
    return Refinement(int(refine), None if far is None else float(far)), params


def make_engine(
    engine: str, metric: Metric, device: torch.device, index_params: dict | None
):
    """The engine for a resolved name: "exact", "flat" or a factory string."""
    if engine in ("exact", "flat"):
        _no_params(engine, index_params)
        if engine == "exact":
            return TorchExactEngine(metric, device)
        return FaissFlatEngine(metric, device)
    return FaissIndexEngine(metric, device, engine, index_params or {})


def keyed_by_rows(engine) -> bool:
    """Whether ``engine`` answers with row positions whatever it holds (exact
    search of the store's rows): it is built on the rows as they lie, and the
    order of equal distances is settled by id, not by row."""
    return isinstance(engine, (TorchExactEngine, FaissFlatEngine))


def engine_rows(engine, X, ids, n: int, order):
    """``(X, ids)`` of rows ``[0, n)`` to build ``engine`` on: as they lie for
    an engine keyed by rows, else in memory order (``order``: the rows in it,
    or None when they are), so an index trains and inserts as in RAM."""
    if order is None or keyed_by_rows(engine):
        return X[:n], ids[:n]
    return X[order], ids[order]
