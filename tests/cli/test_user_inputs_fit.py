"""``vitlab fit`` with what users of Lightning write on the command line and in YAML."""

from __future__ import annotations

import pytest
import torch
import yaml

from vitlab.cli.main import main

TINY = "{depth: 1, embed_dim: 32, num_heads: 2}"


def _fit_args(tmp_path, name, *extra):
    return ["fit", "--name", name, "--output_dir", str(tmp_path), "--model.name", "vit_vitlab_tiny_patch4_32",
            "--model.kwargs", TINY, "--data.name", "digits", "--data.batch_size", "64",
            "--data.options", "{limit_train: 128}", "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
            "--trainer.limit_test_batches", "1",
            "--optim.warmup_epochs", "0", *extra]


def test_max_epochs_null_with_max_steps_trains_max_steps_not_vitlabs_ten_epochs(tmp_path):
    """``--trainer.max_epochs null`` was dropped, so vitlab's default of 10 epochs silently ended the run at step 10."""
    assert main(_fit_args(tmp_path, "steps", "--trainer.max_epochs", "null", "--trainer.max_steps", "12")) == 0
    run_dir = tmp_path / "steps"
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 12  # one batch per epoch: 12 epochs, past the default 10
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["trainer"]["max_epochs"] is None and saved["trainer"]["max_steps"] == 12


def test_logger_true_is_lightnings_default_logger_not_an_error(tmp_path):
    """LightningCLI configs say ``trainer.logger: true`` (Lightning's default logger); vitlab refused it."""
    assert main(_fit_args(tmp_path, "logged", "--trainer.max_epochs", "1", "--trainer.logger", "true")) == 0
    run_dir = tmp_path / "logged"
    assert list(run_dir.rglob("events.out.tfevents.*"))  # tensorboard is in the dev extra: Lightning picks it
    assert "val/loss" in (run_dir / "metrics.csv").read_text().splitlines()[0]


@pytest.mark.parametrize("form", [["--config=~/my configs/run.yaml"], ["--config", "~/my configs/run.yaml"]])
def test_a_config_path_with_a_tilde_the_shell_left_alone_is_under_home(tmp_path, monkeypatch, capsys, form):
    """``--config=~/x.yaml`` (the shell expands no ``~`` after ``=``, nor in quotes) was 'no YAML file at ~/x.yaml'."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "my configs").mkdir()
    (tmp_path / "my configs" / "run.yaml").write_text("name: from_home\noptim: {lr: 0.0123}\n")
    assert main(["fit", *form, "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["name"] == "from_home" and printed["optim"]["lr"] == 0.0123


def test_a_section_given_one_word_says_it_is_a_section_of_keys(tmp_path, capsys):
    """``optim: fast`` said only 'Unable to load config fast' (jsonargparse read the word as a config file)."""
    config = tmp_path / "run.yaml"
    config.write_text("optim: fast\n")
    assert main(["fit", "--config", str(config)]) == 2
    assert "optim is a section: a mapping of its keys (optim: {KEY: VALUE, ...}), not one value" in \
        capsys.readouterr().err
