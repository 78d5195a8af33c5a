"""Tests of skknn/memory/: the front, its row backends, engines and files."""
