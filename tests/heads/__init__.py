"""Tests of skknn/heads/ (the layout mirrors the package)."""
