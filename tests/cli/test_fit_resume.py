"""`vitlab fit --resume true`: the run's own config.yaml is the default; a given option that changes it is refused."""

from __future__ import annotations

import pytest
import yaml

from vitlab.cli.main import main

CONFIG = {
    "name": "r",
    "model": {"name": "vit_vitlab_tiny_patch4_32", "kwargs": {"depth": 1, "embed_dim": 32, "num_heads": 2}},
    "data": {"name": "digits", "batch_size": 64, "options": {"limit_train": 256}}, "optim": {"lr": 0.003},
    "trainer": {"max_epochs": 1, "accelerator": "cpu", "enable_progress_bar": False, "limit_train_batches": 2,
                "limit_val_batches": 1, "limit_test_batches": 1,
                "logger": [{"class_path": "TensorBoardLogger", "init_args": {"name": "tb"}}]},
}


def test_resume_from_the_command_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    out = ["--output_dir", str(tmp_path)]
    assert main(["fit", "--config", str(config), *out]) == 0
    assert list((tmp_path / "r" / "tb").rglob("events.out.tfevents.*"))  # the YAML's logger list reached Lightning
    # no --config: the saved config.yaml fills every option; only max_epochs grows
    assert main(["fit", "--name", "r", "--resume", "true", "--trainer.max_epochs", "2", *out]) == 0
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["trainer"]["max_epochs"] == 2 and saved["optim"]["lr"] == 0.003
    assert saved["data"]["options"] == {"limit_train": 256}
    capsys.readouterr()
    assert main(["fit", "--name", "r", "--resume", "true", "--optim.lr", "0.1", *out]) == 1
    err = capsys.readouterr().err.strip()
    assert "optim.lr: 0.003 -> 0.1" in err and len(err.splitlines()) == 1
    assert main(["fit", "--name", "rr", "--resume", "true", *out]) == 1
    assert "runs in" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("model:\n  name: [unclosed\n", "is not valid YAML at line 3"),
    ("", "is empty: a config file is a mapping"),
    ("- a\n- b\n", "is a list: a config file is a mapping"),
])
def test_malformed_empty_or_list_configs_name_the_file(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["fit", "--config", str(path), "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(path) in err and message in err and len(err.splitlines()) == 1


def test_lightning_cli_ckpt_path_is_refused_naming_the_resume_command(tmp_path, capsys):
    run_dir = tmp_path / "out" / "myrun"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("name: myrun\n")
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    code = main(["fit", "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"`vitlab fit --name myrun --output_dir {tmp_path / 'out'} --resume true`" in err
    assert main(["fit", "--ckpt_path", "last", "--output_dir", "elsewhere"]) == 1
    assert "`vitlab fit --name NAME --output_dir elsewhere --resume true`" in capsys.readouterr().err


def test_an_output_dir_under_home_written_with_a_tilde_is_the_home_folder(tmp_path, monkeypatch):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "output_dir": "~/runs",
                                      "trainer": {**CONFIG["trainer"], "logger": False}}))
    assert main(["fit", "--config", str(config)]) == 0  # Lightning expanded `~` and vitlab did not: the end failed
    assert (home / "runs" / "r" / "model.safetensors").is_file() and not list(cwd.iterdir())
    assert main(["fit", "--name", "r", "--output_dir", "~/runs", "--resume", "true", "--trainer.max_epochs", "2"]) == 0
    assert yaml.safe_load((home / "runs" / "r" / "config.yaml").read_text())["trainer"]["max_epochs"] == 2
    assert not list(cwd.iterdir())
