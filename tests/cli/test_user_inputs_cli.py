"""Users' mistakes with the ``vitlab`` command's own plumbing: Ctrl-C, ``VITLAB_DEBUG`` values, ``peft convert``
paths."""

import pytest

import vitlab
from vitlab.cli import main as cli_main
from vitlab.cli.main import main


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("target", ["build_parser", "register"])
def test_ctrl_c_before_the_command_runs_is_one_line_and_status_130(monkeypatch, capsys, target):
    """Ctrl-C while the parser's libraries import, or while timm/peft register (seconds), used to raise a traceback."""
    monkeypatch.setattr(*(((cli_main, target)) if target == "build_parser" else (vitlab, target)), _interrupt)
    assert main(["data", "list"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "vitlab data: interrupted"


@pytest.mark.parametrize("value, shows_traceback", [("off", False), ("OFF", False), ("no", False), ("1", True)])
def test_vitlab_debug_off_means_off(monkeypatch, capsys, value, shows_traceback):
    """``VITLAB_DEBUG=off`` used to switch the traceback on (only '', 0, false and no were read as off)."""
    monkeypatch.setenv("VITLAB_DEBUG", value)
    if shows_traceback:
        with pytest.raises(vitlab.errors.ConfigError, match="unknown dataset"):
            main(["data", "install", "no_such_data"])
        return
    assert main(["data", "install", "no_such_data"]) == 1
    assert "unknown dataset 'no_such_data'" in capsys.readouterr().err
