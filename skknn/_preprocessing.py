"""Alias of :mod:`skknn.memory.preprocessing`: moved there by issue 24, kept for pickles
and code that import the old path."""

from skknn.memory.preprocessing import (  # noqa: F401
    PREPROCESSING,
    SCALED_LIMIT,
    check_scaled,
    choose_scale,
    fit_center,
    largest_abs,
    prepared_queries,
    preprocess_inplace,
    preprocess_into,
    rescaled,
)
