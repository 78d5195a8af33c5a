"""Alias of :mod:`skknn.memory.metric`: moved there by issue 24, kept for pickles
and code that import the old path."""

from skknn.memory.metric import (  # noqa: F401
    METRICS,
    RADIUS_TOL,
    Metric,
)
