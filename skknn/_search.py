"""Search engines behind :class:`~skknn.VectorStore`.

Two families, one protocol (:class:`skknn.SearchEngine`):

* :class:`TorchExactEngine`: blocked matrix product + running top-k in torch, on the
  CPU or a CUDA device ([VM] searched exactly this way, in blocks).
* :class:`FaissFlatEngine` and :class:`FaissIndexEngine`: FAISS exact search over
  the memory's own array, and any ``faiss.index_factory`` index (IVF, HNSW, PQ...)
  with its knobs (``nprobe``, ``efSearch``) set by their FAISS names.

Engines return *keys*: row positions in the memory (``keys_are_ids = False``) or
sample ids (approximate indexes, which FAISS addresses by id). Missing neighbours
have key -1. Distances follow :class:`~skknn._metric.Metric`, the one place that
converts scores to distances.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import torch

from skknn._device import DeviceWarning, faiss_gpu_count, import_faiss
from skknn._metric import Metric

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


def float32_blocks(X: np.ndarray, size: int = WIDEN_BLOCK):
    """``(start, rows)`` of ``X`` as C-contiguous float32, ``size`` rows at a time
    (views when ``X`` already is float32: nothing is copied)."""
    for start in range(0, X.shape[0], size):
        yield start, np.ascontiguousarray(X[start : start + size], dtype=np.float32)


def _merge_top(best, new, k: int, largest: bool):
    """Top ``k`` of two ``(scores, keys)`` candidate sets, per query, sorted."""
    if best is None:
        return new
    s = np.concatenate([best[0], new[0]], axis=1)
    i = np.concatenate([best[1], new[1]], axis=1)
    key = -s if largest else s
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)


def flat_search(faiss, metric: Metric, X: np.ndarray, Q: np.ndarray, k: int):
    """Exact FAISS search of the rows ``X`` (widened a block at a time when they
    are float16): ``(scores, rows)``."""
    faiss_metric = metric.faiss_metric(faiss)
    if X.dtype == np.float32:
        return faiss.knn(Q, X, k, metric=faiss_metric)
    best = None
    for start, rows in float32_blocks(X):
        s, i = faiss.knn(Q, rows, min(k, rows.shape[0]), metric=faiss_metric)
        best = _merge_top(best, (s, i + start), k, metric.inner_product)
    return best


class TorchExactEngine:
    """Exact search: query blocks x memory blocks, matrix product, running top-k.

    On the CPU it reads the store's array in place (no copy); on CUDA it mirrors
    the store on the device, with amortised headroom like the store's own
    buffers, so ``partial_fit`` of a small batch does not copy the mirror.
    """

    keys_are_ids = False
    ready = True  # nothing to train

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

    def check_remove(self, n_features: int, n_kept: int, retrain: bool) -> None:
        return None  # nothing trained: any removal works

    def set_params(self, params: dict) -> None:
        _no_params("exact", params)

    def remove(
        self,
        X_kept: np.ndarray,
        ids_kept: np.ndarray,
        ids_removed: np.ndarray,
        retrain: bool = False,
    ) -> None:
        self.build(X_kept, ids_kept)

    def search(self, X: np.ndarray, Q: np.ndarray, k: int):
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


class FaissFlatEngine:
    """Exact FAISS search over the store's own array (``faiss.knn``): no index,
    hence no second copy of the vectors on the host. With FAISS GPU support and a
    CUDA device, a ``GpuIndexFlat`` mirrors the store on the GPU instead."""

    keys_are_ids = False
    ready = True  # nothing to train

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

    def check_remove(self, n_features: int, n_kept: int, retrain: bool) -> None:
        return None  # nothing trained: any removal works

    def set_params(self, params: dict) -> None:
        _no_params("flat", params)

    def remove(
        self,
        X_kept: np.ndarray,
        ids_kept: np.ndarray,
        ids_removed: np.ndarray,
        retrain: bool = False,
    ) -> None:
        self.build(X_kept, ids_kept)

    def search(self, X: np.ndarray, Q: np.ndarray, k: int):
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
    rebuilds the codes on the kept trained parts. Removed vectors' codes never stay.
    """

    def __init__(
        self, metric: Metric, device: torch.device, factory: str, params: dict
    ):
        self.faiss = import_faiss(f"index={factory!r}")
        self.metric = metric
        self.device = torch.device(device)
        self.factory = factory
        self.params = dict(params or {})
        self.index = None
        self._d: int | None = None
        self._res = None
        self._min_train: tuple[int, int] | None = None

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
    def _new_index(self, d: int):
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
        ivf = self.faiss.try_extract_index_ivf(index)
        n_sample = train_sample_size(ivf.nlist if ivf is not None else 1)
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

    def _apply_params(self, index) -> None:
        faiss = self.faiss
        space = (
            faiss.GpuParameterSpace() if self._on_gpu(index) else faiss.ParameterSpace()
        )
        for name, value in self.params.items():
            try:
                space.set_index_parameter(index, name, value)
            except RuntimeError as exc:
                raise ValueError(
                    f"index_params: FAISS index {self.factory!r} has no parameter "
                    f"{name!r} (e.g. 'nprobe' for IVF, 'efSearch' for HNSW)."
                ) from exc

    def set_params(self, params: dict) -> None:
        """Apply search knobs by their FAISS names; all or none. A knob left out
        goes back to FAISS's default (read off a fresh index of the same kind)."""
        if self.index is None:  # checked on a fresh index; applied when built
            if self._d is not None:
                probe, self.index = self.index, self._new_index(self._d)
                old, self.params = self.params, dict(params)
                try:
                    self._apply_params(self.index)
                except ValueError:
                    self.params = old
                    raise
                finally:
                    self.index = probe
            self.params = dict(params)
            return
        old = self.params
        dropped = {name: self._default(name) for name in old if name not in params}
        self.params = {**dropped, **params}
        try:
            self._apply_params(self.index)
        except ValueError:
            self.params = old
            self._apply_params(self.index)
            raise
        self.params = dict(params)

    def _default(self, name: str):
        """FAISS's default value of a search knob, for the knobs skknn resets."""
        fresh = self._new_index(self._d)
        ivf = self.faiss.try_extract_index_ivf(fresh)
        if name == "nprobe" and ivf is not None:
            return int(ivf.nprobe)
        inner = self.faiss.downcast_index(getattr(fresh, "index", fresh))
        if name == "efSearch" and hasattr(inner, "hnsw"):
            return int(inner.hnsw.efSearch)
        raise ValueError(
            f"index_params: cannot put {name!r} of {self.factory!r} back to FAISS's "
            "default; give it a value explicitly."
        )

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
            self._new_index(X.shape[1])  # a bad factory string fails now
            self.index = None
            return
        index = self._new_index(X.shape[1])
        self._train(index, X)
        _add_blocks(index, X, ids)
        index = self._to_device(index)
        self._apply_params(index)
        self.index = index

    def add(self, X_new: np.ndarray, ids_new: np.ndarray) -> None:
        _add_blocks(self.index, X_new, ids_new)

    def _build_rows(self, d: int) -> int:
        """Samples an index needs before it is built: ``TRAIN_PER_LIST`` per
        inverted list for IVF, else any."""
        ivf = self.faiss.try_extract_index_ivf(self._new_index(d))
        return 0 if ivf is None else TRAIN_PER_LIST * int(ivf.nlist)

    def _min_train_samples(self, d: int) -> int:
        """0 when the index has no trained parts, else the fewest samples that can
        train it (IVF: one per list). Depends on the factory string and ``d`` only."""
        if self._min_train is None or self._min_train[0] != d:
            index = self._new_index(d)
            ivf = self.faiss.try_extract_index_ivf(index)
            need = 0 if index.is_trained else int(ivf.nlist) if ivf is not None else 1
            self._min_train = (d, need)
        return self._min_train[1]

    def check_remove(self, n_features: int, n_kept: int, retrain: bool) -> None:
        """Nothing can fail before the store changes: a retrained index with too
        few samples left waits for more (exact search), as a fresh fit would."""
        return None

    def remove(
        self, X_kept: np.ndarray, ids_kept: np.ndarray, ids_removed, retrain=False
    ) -> None:
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
        self._apply_params(index)
        self.index = index

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

    def search(self, X: np.ndarray, Q: np.ndarray, k: int):
        if self.index is None:
            score, keys = flat_search(self.faiss, self.metric, X, Q, k)
        else:
            score, keys = self.index.search(Q, k)
        return self.metric.to_distance(score), keys

    def state(self) -> dict:
        if self.index is None:
            return {}
        data = self.faiss.serialize_index(self._cpu_index())
        return {"faiss_index": np.asarray(data, dtype=np.uint8)}

    def load_state(self, state: dict, X: np.ndarray, ids: np.ndarray) -> None:
        index = self.faiss.deserialize_index(np.ascontiguousarray(state["faiss_index"]))
        index = self._to_device(index)
        self._apply_params(index)
        self.index = index


def _powers_of_two(top: int) -> list[int]:
    """1, 2, 4, ... up to ``top``, with ``top`` itself last."""
    values = [1 << i for i in range(max(top, 1).bit_length()) if 1 << i < top]
    return [*values, top]


def _add_blocks(index, X: np.ndarray, ids: np.ndarray) -> None:
    """Add in blocks of float32 rows: a float16 memory is widened a block at a
    time, never whole."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    for start, rows in float32_blocks(X):
        index.add_with_ids(rows, ids[start : start + rows.shape[0]])


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
AUTO_PARAMS = {"nprobe": 32, "refine": 4}


def auto_engine(n_samples: int) -> tuple[str, dict]:
    """The engine and knobs ``index="auto"`` uses for a memory of this size."""
    if n_samples < AUTO_MIN_SAMPLES:
        return "flat", {}
    return AUTO_INDEX, dict(AUTO_PARAMS)


def split_refine(engine: str, params: dict) -> tuple[int, dict]:
    """``(refine, the FAISS knobs)`` of ``index_params``: ``"refine"`` is the
    store's (candidates re-ranked exactly), the rest go to the index."""
    params = dict(params or {})
    refine = params.pop("refine", 1)
    if (
        isinstance(refine, bool)
        or not isinstance(refine, numbers.Integral)
        or refine < 1
    ):
        raise ValueError(
            f"index_params['refine'] must be an int >= 1 (candidates per neighbour "
            f"re-ranked exactly); got {refine!r}."
        )
    if refine > 1 and engine in ("exact", "flat"):
        raise ValueError(
            f"index={engine!r} is an exact search: there is nothing to refine. "
            "'refine' belongs to approximate indexes ('IVF1024,PQ32')."
        )
    return int(refine), params


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
