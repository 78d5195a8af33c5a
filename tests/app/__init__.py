"""Tests of skknn/app/ (the layout mirrors the package)."""
