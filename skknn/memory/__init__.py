"""The memory: one front over row backends (issue 24)."""
