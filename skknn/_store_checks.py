"""Alias of :mod:`skknn.memory.checks`: moved there by issue 24, kept for pickles
and code that import the old path."""

from skknn.memory.checks import (  # noqa: F401
    MAX_ID,
    STORAGE_DTYPES,
    InvalidState,
    all_finite,
    check_state,
    checked_excluded,
    checked_ids,
    checked_new_ids,
    checked_reliability,
    checked_rows,
    checked_weights,
    label_paths,
    refuse_duplicates,
    refuse_rescaled,
)
