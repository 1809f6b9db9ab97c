"""``vitlab fit`` with what LightningCLI users write (session 27's hunt)."""

from __future__ import annotations

import pytest

from vitlab.cli.fit import parse_run_config
from vitlab.cli.main import main
from vitlab.errors import ConfigError


@pytest.mark.parametrize(("text", "key", "meant"), [
    ("modle: {}\n", "'modle'", "'model'"),
    ("model:\n  name: vit_vitlab_tiny_patch4_32\ntrainer: {max_epoch: {}}\n", "'trainer.max_epoch'",
     "'trainer.max_epochs'"),
    ("optim:\n  lrr: {}\n", "'optim.lrr'", "'optim.lr'"),
])
def test_a_misspelt_key_given_an_empty_mapping_is_refused_naming_the_close_key(tmp_path, capsys, text, key, meant):
    """``modle: {}`` was dropped by jsonargparse without a word (a misspelt key with a value was refused)."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    code = main(["fit", "--config", str(cfg), "--print_config"])  # the old code printed the config (no modle)
    err = capsys.readouterr().err
    assert code == 2 and f"unknown key {key}" in err and f"did you mean {meant}?" in err
    with pytest.raises(ConfigError, match=f"unknown key {key}"):
        parse_run_config(["--config", str(cfg)])


@pytest.mark.parametrize("args", [["--config", "{modle: {}}"], ["--config={modle: {}}"], ["--model", "{nmae: {}}"]])
def test_an_empty_misspelt_mapping_on_the_command_line_is_refused(capsys, args):
    assert main(["fit", *args, "--print_config"]) == 2
    err = capsys.readouterr().err
    assert "(an empty mapping); did you mean" in err and "name:" not in capsys.readouterr().out


def test_empty_known_sections_and_empty_values_inside_free_form_mappings_are_kept(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("negatives: {}\ntrainer: {}\nmodel:\n  kwargs: {block_fn_kwargs: {}}\ndata:\n  options: {x: {}}\n")
    config, _ = parse_run_config(["--config", str(cfg)])
    assert config.model.kwargs == {"block_fn_kwargs": {}} and config.data.options == {"x": {}}
    assert config.negatives.enabled is False


def test_print_config_skip_null_keeps_max_epochs_null_so_the_printed_file_trains_the_same_steps(tmp_path, capsys):
    """``--print_config=skip_null`` dropped ``max_epochs: null``: the printed file, given back, trained vitlab's 10
    epochs instead of max_steps alone."""
    import yaml

    assert main(["fit", "--trainer.max_epochs", "null", "--trainer.max_steps", "100", "--print_config=skip_null"]) == 0
    printed = capsys.readouterr().out
    trainer = yaml.safe_load(printed)["trainer"]
    assert "max_epochs" in trainer and trainer["max_epochs"] is None and trainer["max_steps"] == 100
    assert "null" not in printed.replace("max_epochs: null", "")  # the other nulls are still skipped
    cfg = tmp_path / "printed.yaml"
    cfg.write_text(printed)
    config, _ = parse_run_config(["--config", str(cfg)])
    assert config.trainer["max_epochs"] is None and config.trainer["max_steps"] == 100
