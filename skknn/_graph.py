"""Alias of :mod:`skknn.memory.graph`: moved there by issue 24, kept for pickles
and code that import the old path."""

from skknn.memory.graph import (  # noqa: F401
    GRAPH_MODES,
    neighbors_graph,
)
