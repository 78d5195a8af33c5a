"""Docstrings tell the truth about defaults (each documented ``default=`` equals
the signature's) and pass numpydoc's validation with the checks the documentation
build enforces (``docs/conf.py``): every public class and function has a
Parameters, Returns and Examples section, every public method documents its
parameters and return value."""

from __future__ import annotations

import ast
import inspect
import re

import pytest

import skknn

PUBLIC = [
    skknn.KNNVoter,
    skknn.JointKNNClassifier,
    skknn.MemoryPruner,
    skknn.TorchFeatureExtractor,
    skknn.VectorStore,
]
_PARAM = re.compile(r"^    (\w+) : .*\bdefault=(.+)$", re.MULTILINE)


@pytest.mark.parametrize("cls", PUBLIC, ids=lambda c: c.__name__)
def test_documented_defaults_match_the_signature(cls):
    signature = inspect.signature(cls.__init__).parameters
    documented = dict(_PARAM.findall(cls.__doc__))
    assert documented, "no documented defaults found"
    for name, text in documented.items():
        assert name in signature, f"{name} is documented but not a parameter"
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            continue  # prose such as "default=auto-detected"
        assert signature[name].default == value, (
            f"{cls.__name__}({name}=...) documents {text!r} but defaults to "
            f"{signature[name].default!r}"
        )


# -- numpydoc's validation over the API reference (docs/api.rst) ----------------------
def _docs_conf():
    import importlib.util
    from pathlib import Path

    conf = Path(__file__).parents[1] / "docs" / "conf.py"
    spec = importlib.util.spec_from_file_location("skknn_docs_conf", conf)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _own_members(cls) -> dict:
    """What a class's API page documents: the members it defines itself and
    those of the private mixins it is composed of (docs/conf.py)."""
    members = {}
    for part in reversed([cls, *_docs_conf().composing_mixins(cls)]):
        members.update(vars(part))
    return members


def _api_objects():
    """Dotted names of every object the API reference documents: the names in
    docs/api.rst and the public methods each class defines itself or takes from
    the mixins it is composed of."""
    import importlib
    from pathlib import Path

    api = Path(__file__).parents[1] / "docs" / "api.rst"
    names, module = [], "skknn"
    for line in api.read_text().splitlines():
        if line.startswith(".. currentmodule:: "):
            module = line.split("::")[1].strip()
        elif line.startswith("   ") and not line.strip().startswith(":"):
            names.append(f"{module}.{line.strip()}")
    out = []
    for name in names:
        mod, attr = name.rsplit(".", 1)
        obj = getattr(importlib.import_module(mod), attr)
        out.append(name)
        if inspect.isclass(obj):
            for member, value in _own_members(obj).items():
                if member.startswith("_") or member.endswith("_request"):
                    continue
                if callable(value) or isinstance(value, (classmethod, staticmethod)):
                    out.append(f"{name}.{member}")
    return out


def _enforced_checks():
    module = _docs_conf()
    skipped = set(module.numpydoc_validation_checks) - {"all"}
    return skipped, [re.compile(p) for p in module.numpydoc_validation_exclude]


@pytest.mark.parametrize("name", _api_objects())
def test_numpydoc_validation(name):
    validate = pytest.importorskip("numpydoc.validate").validate
    skipped, excluded = _enforced_checks()
    if any(p.search(name) for p in excluded):
        return
    errors = [
        f"{code}: {message}"
        for code, message in validate(name)["errors"]
        if code not in skipped
    ]
    assert not errors, "\n".join(errors)


_SUBMODULES = ("evaluation", "datasets", "pruning", "rerankers", "distributed")


def _classes_and_functions():
    """Public classes and functions (not methods) of the API reference."""
    return [
        n
        for n in _api_objects()
        if n.count(".") == 1 or (n.split(".")[1] in _SUBMODULES and n.count(".") == 2)
    ]


@pytest.mark.parametrize("name", _classes_and_functions())
def test_public_classes_and_functions_have_examples(name):
    validate = pytest.importorskip("numpydoc.validate").validate
    codes = {code for code, _ in validate(name)["errors"]}
    assert "EX01" not in codes, f"{name} has no Examples section"
