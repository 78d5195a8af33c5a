"""scikit-learn's parameter validation: the one module skknn imports it from.

Each estimator declares ``_parameter_constraints``, one table of every
``__init__`` parameter's allowed types, ranges and options (``Interval``,
``StrOptions``, ``"boolean"``, ``None``, a type, ...), and checks it with
:func:`check_params` where a fit starts. A bad value raises sklearn's
``InvalidParameterError`` (both a ``ValueError`` and a ``TypeError``) in
sklearn's words: "The 'n_neighbors' parameter of KNNVoter must be an int in
the range [1, inf). Got 0 instead." Rules a table cannot state (one parameter
depending on another, a FAISS factory string, a layer the model must have)
stay explicit code after it, in each estimator.

The names below come from sklearn's private ``sklearn.utils._param_validation``,
not from a copy of it: ``BaseEstimator._validate_params`` and the estimator
check ``check_param_validation`` accept only sklearn's own constraint objects
(``make_constraint`` refuses others), so a copy would drift from the checks
that test it. The module has kept this API since scikit-learn 1.2; these
imports were compared across 1.6.1, 1.7.2, 1.8.0 and 1.9.1 (the releases that
``scikit-learn>=1.6`` in pyproject.toml admits today), and
tests/test_param_validation.py fails, naming this file, when a release moves
them. A break is then mended here alone, for instance with a copy of the few
classes, as imbalanced-learn keeps (``imblearn/utils/_param_validation.py``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import sklearn

try:
    from sklearn.utils._param_validation import (
        HasMethods,
        Interval,
        InvalidParameterError,
        StrOptions,
        validate_parameter_constraints,
    )
except ImportError as exc:
    raise ImportError(
        "skknn validates its parameters with scikit-learn's "
        "sklearn.utils._param_validation (Interval, StrOptions, HasMethods, "
        "InvalidParameterError, validate_parameter_constraints), tested with "
        f"scikit-learn 1.6 to 1.9; scikit-learn {sklearn.__version__} does not "
        f"offer them ({exc}). Install a scikit-learn release from that range, "
        "or update skknn/_param_validation.py, the one module that imports them."
    ) from exc

__all__ = [
    "HasMethods",
    "Interval",
    "InvalidParameterError",
    "StrOptions",
    "check_params",
    "check_values",
]


def check_params(est, names: Iterable[str] | None = None) -> None:
    """Check ``est``'s parameters against its ``_parameter_constraints``.

    sklearn's ``BaseEstimator._validate_params`` (same table, same function,
    same errors) with two additions: ``names`` checks only some parameters
    (those a prediction reads again, since ``set_params`` may change them
    after fit), and a parameter named in the class's ``_parameter_hints`` gets
    that sentence after sklearn's message, saying what to pass instead.
    """
    names = est._parameter_constraints if names is None else names
    check_values(est, {name: getattr(est, name) for name in names})


def check_values(est, values: dict) -> None:
    """Check candidate values (``{name: value}``) of ``est``'s parameters, as
    :func:`check_params` checks the values it holds (before ``set_params``
    hands a value on to a fitted memory, say)."""
    table = est._parameter_constraints
    hints = getattr(est, "_parameter_hints", {})
    owner = type(est).__name__
    for name, value in values.items():
        _refuse_bool_as_number(owner, name, value, table[name])
        try:
            validate_parameter_constraints(
                {name: table[name]}, {name: value}, caller_name=owner
            )
        except InvalidParameterError as exc:
            if name not in hints:
                raise
            raise InvalidParameterError(f"{exc} {hints[name]}") from None


def _refuse_bool_as_number(owner: str, name: str, value, constraints) -> None:
    """A bool where the table wants a number: sklearn's ``Interval`` takes
    ``True`` as the int 1 (``KNeighborsClassifier(n_neighbors=True)`` fits,
    then fails inside its tree search); skknn refuses it at once, as its
    prediction-time checks do."""
    if not isinstance(value, (bool, np.bool_)):
        return
    if any(c in ("boolean", bool) for c in constraints):
        return
    if not any(isinstance(c, Interval) for c in constraints):
        return
    wanted = [c for c in constraints if not isinstance(c, Interval)]
    try:  # another constraint may still take a bool ("array-like", None, ...)
        if wanted:
            validate_parameter_constraints({name: wanted}, {name: value}, owner)
            return
    except InvalidParameterError:
        pass
    allowed = " or ".join(str(c) if c is not None else "None" for c in constraints)
    raise InvalidParameterError(
        f"The {name!r} parameter of {owner} must be {allowed}. Got {value!r} instead."
    )
