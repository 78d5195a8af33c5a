"""Tests of skknn/features/ (the layout mirrors the package)."""
