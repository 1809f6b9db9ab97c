import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from vitlab.cli.fit import parse_run_config
from vitlab.cli.main import main

REPO = Path(__file__).resolve().parents[2]
ALL_CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
STUDIES = [p for p in ALL_CONFIGS if "backbones" in yaml.safe_load(p.read_text())]  # `vitlab study` configs
CONFIGS = [p for p in ALL_CONFIGS if p not in STUDIES]  # `vitlab fit` / `vitlab intrinsic-dim` run configs


@pytest.mark.parametrize("command", [[], ["fit"], ["eval"], ["predict"], ["data"], ["data", "install"], ["demo"],
                                     ["peft-study"], ["intrinsic-dim"], ["robustness"], ["diagnose-negatives"]])
def test_help_for_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: vitlab" in out or "usage:" in out
    assert len(out) > 200


def test_python_dash_m_vitlab_runs_the_same_command():
    out = subprocess.run([sys.executable, "-m", "vitlab", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith("vitlab ")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_file_loads(path):
    config, resume = parse_run_config(["--config", str(path)])
    raw = yaml.safe_load(path.read_text())
    assert config.name == raw["name"] and resume is False
    for section in ("model", "data", "optim", "negatives", "peft"):
        for key, value in (raw.get(section) or {}).items():
            assert asdict(getattr(config, section))[key] == (list(value) if isinstance(value, tuple) else value)
    for key, value in (raw.get("trainer") or {}).items():
        assert config.trainer[key] == value


@pytest.mark.parametrize("path", STUDIES, ids=[p.name for p in STUDIES])
def test_every_study_config_loads_with_and_without_full(path):
    from vitlab.cli.study_config import load_study_config

    for full in (False, True):
        study = load_study_config(path, full=full)
        for label in study.used_backbones():
            assert Path(study.backbones[label].pretrain).is_file()
            assert parse_run_config(["--config", study.backbones[label].pretrain])[0].model.name
        assert parse_run_config(["--config", study.intrinsic_dim.config])[0].peft.method == "subspace"
    assert len(STUDIES) >= 2  # configs/study.yaml and configs/demo_study.yaml


def test_overrides_win_over_the_file(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("name: x\nmodel:\n  name: vitlab_vit_tiny_32\noptim:\n  lr: 0.1\ntrainer:\n  max_epochs: 3\n")
    config, _ = parse_run_config(["--config", str(cfg), "--optim.lr", "0.5", "--trainer.max_epochs", "1",
                                  "--peft.method", "kadaptation", "--data.options", '{"limit_train": 10}'])
    assert config.optim.lr == 0.5 and config.trainer["max_epochs"] == 1 and config.peft.method == "kadaptation"
    assert config.data.options == {"limit_train": 10} and config.model.name == "vitlab_vit_tiny_32"


@pytest.mark.parametrize(
    ("text", "key"),
    [("optim:\n  lrr: 0.1\n", "lrr"), ("trainer:\n  max_epoch: 3\n", "max_epoch"), ("modle:\n  name: x\n", "modle")],
)
def test_misspelt_key_fails_naming_it(tmp_path, capsys, text, key):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(SystemExit) as exc:
        parse_run_config(["--config", str(cfg)])
    assert exc.value.code != 0
    assert key in capsys.readouterr().err


def test_errors_print_one_line_and_exit_1(tmp_path, capsys):
    code = main(["eval", "--checkpoint", str(tmp_path / "missing"), "--data", "digits"])
    err = capsys.readouterr().err
    assert code == 1 and "no weights at" in err and "Traceback" not in err
