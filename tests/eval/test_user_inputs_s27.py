"""Evaluation reports written from Python (round 27)."""

import json

import pytest

from vitlab.eval.evaluate import diagnose_checkpoint


def test_a_report_written_from_python_has_no_empty_command_line(checkpoint, tmp_path):
    out = tmp_path / "out"
    diagnose_checkpoint(checkpoint, n=8, kinds=["shuffle"], out=out)  # command="" by default
    markdown = (out / "diagnose_negatives_digits.md").read_text()
    assert "Command:" not in markdown  # was "Command: ``"
    diagnose_checkpoint(checkpoint, n=8, kinds=["shuffle"], out=tmp_path / "cli", command="vitlab diagnose-negatives")
    assert "Command: `vitlab diagnose-negatives`" in (tmp_path / "cli" / "diagnose_negatives_digits.md").read_text()
    assert json.loads((out / "diagnose_negatives_digits.json").read_text())["command"] == ""


def test_a_non_str_command_is_refused_before_the_evaluation(checkpoint, tmp_path, monkeypatch):
    import vitlab.eval.evaluate
    from vitlab.eval.evaluate import robustness_report

    def loaded(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the command was checked")

    monkeypatch.setattr(vitlab.eval.evaluate, "load_checkpoint_and_test_data", loaded)
    for report in (diagnose_checkpoint, robustness_report):  # "Command: `None`" in the report, or refused after it
        with pytest.raises(ValueError, match=r"command must be the command line that reproduces the report"):
            report(checkpoint, n=8, out=tmp_path, command=None)
