"""The ``skknn`` command."""

from __future__ import annotations

import pytest

from skknn.cli import main


def test_demo_runs_end_to_end(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    for rule in ("plurality", "distance", "softmax", "rank"):
        assert rule in out
    assert "k=100" in out
    assert "0.0% before" in out  # the held-out class is unknown before it is added
    assert "every memory sample: 0" in out  # unlearned ids never reappear


def test_help_for_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    assert "--held-out-class" in capsys.readouterr().out
