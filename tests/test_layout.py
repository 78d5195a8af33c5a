"""The package's shape: imports go one way.

Every import counts, those inside functions too (a deferred import is still a
dependency, only hidden). ``from skknn.voting import _rules`` is an import of
``skknn.voting._rules``, not of the package's ``__init__``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "skknn"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _edges(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            subs = [f"{module}.{a.name}" for a in node.names]
            named = [s for s in subs if s in modules]
            found.update(named if len(named) == len(subs) else [module, *named])
    return {m for m in found if m in modules and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _edges(name, path, modules) for name, path in modules.items()}


def test_no_import_cycles_anywhere_in_the_package():
    assert _cycle(_graph()) is None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [
        "a",
        "b",
        "c",
        "a",
    ]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_persistence_layers_point_down():
    graph = _graph()
    assert graph["skknn._file_classes"] == set()
    assert graph["skknn._archive"] == set()
    estimators = {"skknn.voter", "skknn.joint", "skknn.pruning", "skknn.finetune"}
    assert not graph["skknn.io"] & estimators
    for low in ("skknn.memory.folder", "skknn._archive", "skknn.memory.state"):
        assert "skknn.io" not in graph[low]


def test_the_archive_imports_nothing_of_skknn():
    """``_archive`` is the lowest floor of the files: no import of skknn's at
    all, deferred ones included, and it runs with skknn unimportable."""
    assert _graph()["skknn._archive"] == set()
    script = (
        "import importlib.abc, importlib.util, sys\n"
        "class NoSkknn(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'skknn' or name.startswith('skknn.'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, NoSkknn())\n"
        "spec = importlib.util.spec_from_file_location('archive', sys.argv[1])\n"
        "archive = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(archive)\n"
        "assert issubclass(archive.ModelFileError, ValueError)\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(PACKAGE / "_archive.py")], check=True
    )


def test_model_file_error_is_one_class_wherever_it_is_imported():
    import pickle

    import skknn
    from skknn import _archive, exceptions

    assert skknn.ModelFileError is exceptions.ModelFileError is _archive.ModelFileError
    err = pickle.loads(pickle.dumps(exceptions.ModelFileError("f", "part", "why")))
    assert type(err) is exceptions.ModelFileError
    assert (err.path, err.part, err.reason) == ("f", "part", "why")


def test_documented_and_pickled_paths_stay_after_the_moves():
    """Modules moved into subpackages keep the paths users and pickles name."""
    import importlib

    import skknn
    from skknn.app import cli
    from skknn.heads import _head
    from skknn.voting import _rerankers

    assert importlib.import_module("skknn.cli").main is cli.main
    assert importlib.import_module("skknn.rerankers").ProbeReranker is (
        _rerankers.ProbeReranker
    )
    assert importlib.import_module("skknn._heads").Head is _head.Head
    assert skknn.features.TorchFeatureExtractor.__module__ == "skknn.features"
    assert skknn.ModelFileError.__module__ == "skknn.exceptions"


def test_the_memory_imports_no_estimator():
    # skknn/memory/ sits below the estimators (issue 24): it may use low-level
    # helpers (devices, labels, the archive), never what calls it.
    graph = _graph()
    above = {
        "skknn.voter",
        "skknn.joint",
        "skknn.pruning",
        "skknn.finetune",
        "skknn.transformer",
        "skknn.distributed",
        "skknn.io",
        "skknn.features",
        "skknn.cli",
        "skknn.evaluation",
    }
    for name, edges in graph.items():
        if name.startswith("skknn.memory"):
            assert not edges & above, (name, edges & above)


def test_estimator_mixins_sit_below_their_estimator():
    """``skknn/_voter_*.py`` and ``skknn/_joint_*.py`` hold pieces of
    ``KNNVoter`` and ``JointKNNClassifier``: they never import an estimator,
    and hold no ``__init__`` (``get_params`` reads the class's signature)."""
    import importlib

    graph = _graph()
    mixins = [n for n in graph if n.startswith(("skknn._voter_", "skknn._joint_"))]
    assert len(mixins) >= 5
    estimators = {"skknn.voter", "skknn.joint", "skknn.pruning", "skknn.finetune"}
    for name in mixins:
        assert not graph[name] & estimators, (name, graph[name] & estimators)
        for value in vars(importlib.import_module(name)).values():
            if isinstance(value, type) and value.__module__ == name:
                assert "__init__" not in vars(value), value


def test_pickles_name_the_estimators_where_they_always_were():
    import pickle

    import skknn
    from skknn import joint, voter

    assert voter.KNNVoter is skknn.KNNVoter
    assert joint.JointKNNClassifier is skknn.JointKNNClassifier
    assert b"skknn.voter" in pickle.dumps(skknn.KNNVoter())
    assert b"skknn.joint" in pickle.dumps(skknn.JointKNNClassifier())


def _spans(kind) -> list[tuple[int, str]]:
    out = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, kind):
                size = node.end_lineno - node.lineno + 1
                out.append((size, f"{path.relative_to(PACKAGE)}:{node.name}"))
    return out


def test_sizes_a_reader_can_hold():
    """No class over 700 lines, no function over 100 (issue 24), docstrings
    included."""
    classes = [s for s in _spans(ast.ClassDef) if s[0] > 700]
    functions = [
        s for s in _spans((ast.FunctionDef, ast.AsyncFunctionDef)) if s[0] > 100
    ]
    assert not classes, sorted(classes)
    assert not functions, sorted(functions)


def test_no_module_under_memory_reads_another_objects_private_attributes():
    """Issue 24: the front, its backends and their storages talk through
    written methods. A function may set up an object of its own class that it
    builds (``cls(...)``, ``cls.__new__(cls)``: a classmethod opening a
    file); a named tuple's ``_replace`` is public API."""
    public = {"_replace", "_fields", "_asdict", "_make"}
    offenders = []
    for path in sorted((PACKAGE / "memory").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            own = {"self", "cls"}
            for node in ast.walk(fn):
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                    f = node.value.func
                    base = f.value if isinstance(f, ast.Attribute) else f
                    if isinstance(base, ast.Name) and base.id == "cls":
                        own |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            for node in ast.walk(fn):
                if (
                    isinstance(node, ast.Attribute)
                    and node.attr.startswith("_")
                    and not node.attr.startswith("__")
                    and node.attr not in public
                    and not (isinstance(node.value, ast.Name) and node.value.id in own)
                ):
                    offenders.append((path.name, node.lineno, ast.unparse(node)))
    assert offenders == []
