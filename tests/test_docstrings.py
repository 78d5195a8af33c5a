"""Docstrings tell the truth about defaults: each documented ``default=`` equals
the signature's."""

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
