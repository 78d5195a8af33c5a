"""The classes a model file may name, and estimator parameters as JSON.

Low level on purpose: the storage folder (which records its estimator's class
and parameters) and :mod:`skknn.io` both use it, and it imports nothing of
skknn's, so neither has to import the other.
"""

from __future__ import annotations

import json
import os

# Estimator classes a file may name, by class name: filled by @register.
_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: let :func:`skknn.load` rebuild ``cls`` from a file.

    The class implements ``__skknn_save__() -> (meta, arrays)`` (JSON-able
    scalars, NumPy arrays), ``__skknn_load__(meta, arrays, version)`` and
    ``__skknn_reading__()`` (a context holding its state while it is written);
    only registered classes can be named in a file, so loading runs no foreign
    code.
    """
    _REGISTRY[cls.__name__] = cls
    return cls


# Classes a file may name as a *parameter* only: rebuilt from their JSON
# parameters (a TorchFeatureExtractor inside a fine-tuned classifier).
_PARAM_CLASSES: dict[str, type] = {}


def register_params(cls: type) -> type:
    """Class decorator: let files hold ``cls`` as a nested parameter, rebuilt
    from its (JSON) parameters alone; such a class is never saved on its own."""
    _PARAM_CLASSES[cls.__name__] = cls
    return cls


def saved_class(name) -> type | None:
    """The registered estimator class a file may be of, by name; None for any
    other name (parameter-only classes included: they are never saved alone)."""
    return _REGISTRY.get(name) if isinstance(name, str) else None


def registered(name: str) -> type:
    """The registered class of this name; ValueError for any other."""
    if name in _PARAM_CLASSES:
        return _PARAM_CLASSES[name]
    if name not in _REGISTRY:
        raise ValueError(
            f"{name!r} is not a skknn estimator that files can hold; known: "
            f"{sorted(_REGISTRY)}."
        )
    return _REGISTRY[name]


def params_to_json(est) -> dict:
    """``get_params(deep=False)`` as JSON; nested skknn estimators recursively."""
    from sklearn.base import BaseEstimator

    out = {}
    for name, value in est.get_params(deep=False).items():
        if isinstance(value, BaseEstimator):
            known = _REGISTRY.get(type(value).__name__) or _PARAM_CLASSES.get(
                type(value).__name__
            )
            if known is not type(value):
                raise TypeError(
                    f"save() can store skknn estimators only; parameter {name!r} is "
                    f"a {type(value).__name__}. Use joblib.dump for this model."
                )
            value = {
                "__estimator__": type(value).__name__,
                "params": params_to_json(value),
            }
        elif callable(value):
            raise TypeError(
                f"save() stores no code, and parameter {name!r} is a callable. "
                "Use joblib.dump for this model, or a named option."
            )
        elif isinstance(value, tuple):
            value = {"__tuple__": list(value)}
        elif isinstance(value, os.PathLike):
            value = os.fspath(value)
        try:
            json.dumps(value)
        except TypeError as exc:
            raise TypeError(
                f"save() cannot store parameter {name!r}={value!r} as JSON."
            ) from exc
        out[name] = value
    return out


def params_from_json(params: dict) -> dict:
    out = {}
    for name, value in params.items():
        if isinstance(value, dict) and "__estimator__" in value:
            cls = registered(value["__estimator__"])
            value = cls(**params_from_json(value["params"]))
        elif isinstance(value, dict) and "__tuple__" in value:
            value = tuple(value["__tuple__"])
        out[name] = value
    return out
