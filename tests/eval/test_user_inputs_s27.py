"""Evaluation reports written from Python (round 27)."""

import json

from vitlab.eval.evaluate import diagnose_checkpoint


def test_a_report_written_from_python_has_no_empty_command_line(checkpoint, tmp_path):
    out = tmp_path / "out"
    diagnose_checkpoint(checkpoint, n=8, kinds=["shuffle"], out=out)  # command="" by default
    markdown = (out / "diagnose_negatives_digits.md").read_text()
    assert "Command:" not in markdown  # was "Command: ``"
    diagnose_checkpoint(checkpoint, n=8, kinds=["shuffle"], out=tmp_path / "cli", command="vitlab diagnose-negatives")
    assert "Command: `vitlab diagnose-negatives`" in (tmp_path / "cli" / "diagnose_negatives_digits.md").read_text()
    assert json.loads((out / "diagnose_negatives_digits.json").read_text())["command"] == ""
