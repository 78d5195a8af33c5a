"""Tests of skknn/voting/ (the layout mirrors the package)."""
