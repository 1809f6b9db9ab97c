"""Users' mistakes with the ``vitlab`` command's own plumbing: Ctrl-C, ``VITLAB_DEBUG`` values, ``peft convert``
paths."""

import pytest
import torch

import vitlab
from vitlab.checkpoint import save_checkpoint
from vitlab.cli import main as cli_main
from vitlab.cli.main import main
from vitlab.data.install import dataset_dir, install_dataset, is_installed, list_datasets
from vitlab.data.registry import IDX_FILE_STEMS
from vitlab.errors import ConfigError


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


@pytest.mark.parametrize("args, expected", [
    (["peft", "convert", "x.safetensors", "--out", ""], "--out is empty"),
    (["peft", "convert", "", "--out", "new"], "the adapter path is empty"),
])
def test_peft_convert_empty_paths_are_named(tmp_path, monkeypatch, capsys, args, expected):
    """``--out ''`` used to be read as the current folder ("--out . is a folder that is not empty") and an empty path
    as ``./adapter.safetensors``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "something").write_text("x")  # the current folder is not empty
    assert main(args) == 1
    err = capsys.readouterr().err
    assert expected in err and "--out ." not in err and "at adapter.safetensors" not in err


def test_peft_convert_of_a_new_run_folder_says_its_adapter_is_peft_already(tmp_path, capsys):
    """A run folder written by today's vitlab (model.safetensors + a peft adapter/ folder) used to get "no adapter
    file at RUN/adapter.safetensors ... written by vitlab 0.1"; it now says adapter/ needs no conversion."""
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "model.safetensors").write_bytes(b"")
    assert main(["peft", "convert", str(run), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"{run / 'adapter'} is already in peft format" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, expected", [
    (["data", "install"], "vitlab data install: error: the following arguments are required: NAME "
     "(`vitlab data install --help` lists the options)"),
    (["peft", "convert", "old.safetensors"], "vitlab peft convert: error: the following arguments are required: "
     "--out (`vitlab peft convert --help` lists the options)"),
    (["data", "list", "extra"], "vitlab data list: error: unrecognized arguments: extra "
     "(`vitlab data list --help` lists the options)"),
    (["data"], "vitlab data: error: expected a subcommand to be one of {install,list}"),
])
def test_nested_command_parse_errors_name_that_command_and_its_options(capsys, args, expected):
    """These used to name jsonargparse's keys (``data.install.name``, ``peft.convert.out``) and send the user to
    ``vitlab data --help``, which does not list the nested command's options."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1
    assert "data.install." not in err and "peft.convert." not in err and "data_command" not in err


@pytest.mark.parametrize("command", [["data", "list"], ["data", "install", "mnist"]])
def test_data_root_given_as_a_dataset_folder_names_the_cache_above(tmp_path, capsys, command):
    """``--root CACHE/mnist`` (the folder ``data.root`` takes) used to list mnist as missing and install a second copy
    into CACHE/mnist/mnist; it is now refused, naming CACHE."""
    folder = tmp_path / "cache" / "mnist"
    folder.mkdir(parents=True)
    for stem in IDX_FILE_STEMS.values():
        (folder / stem).write_bytes(b"")  # presence is all `is_installed` looks at
    assert main([*command, "--root", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "the mnist dataset's own folder" in err and f"--root {tmp_path / 'cache'} " in err
    assert sorted(p.name for p in folder.iterdir()) == sorted(IDX_FILE_STEMS.values())  # nothing written


def test_debug_shows_the_traceback_of_a_refused_config_file(tmp_path, monkeypatch, capsys):
    """``--debug`` / ``VITLAB_DEBUG=1`` used to be ignored for a config file refused before parsing (malformed YAML):
    the one line was printed and no traceback, unlike every other error."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [\n")
    assert main(["fit", "--config", str(bad)]) == 2
    assert "is not valid YAML at line 2" in capsys.readouterr().err
    with pytest.raises(vitlab.errors.ConfigError, match="is not valid YAML at line 2"):
        main(["fit", "--config", str(bad), "--debug"])
    monkeypatch.setenv("VITLAB_DEBUG", "1")
    with pytest.raises(vitlab.errors.ConfigError, match="is not valid YAML at line 2"):
        main(["fit", "--config", str(bad)])


def test_peft_convert_of_a_full_model_says_there_is_nothing_to_convert(tmp_path, capsys):
    """A vitlab ``model.safetensors`` (or its run folder) used to get "holds a 'model' checkpoint but a 'adapter' one
    was expected" / "no adapter file ... written by vitlab 0.1"; both now say there is nothing to convert."""
    run = tmp_path / "run"
    weights = save_checkpoint(run, {"w": torch.zeros(2)}, kind="model", model_name="vit_vitlab_tiny_patch8_32",
                              model_kwargs={"num_classes": 10})
    assert main(["peft", "convert", str(weights), "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "is a vitlab 'model' file, not a vitlab 0.1 adapter: nothing to convert" in err
    assert f"vitlab eval --checkpoint {weights}" in err
    assert main(["peft", "convert", str(run), "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert f"{run} holds model.safetensors and no adapter.safetensors" in err and "nothing to convert" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("call", [lambda: install_dataset("digits", 5), lambda: list_datasets(5),
                                  lambda: list_datasets(b"/tmp")])
def test_data_cache_dir_of_a_wrong_type_is_refused_naming_it(call):
    """``list_datasets(5)`` used to fail inside pathlib; ``install_dataset("digits", 5)`` took the 5 silently."""
    with pytest.raises(TypeError, match="cache_dir must be a folder path"):
        call()


def test_data_empty_cache_dir_is_not_read_as_the_default_cache(tmp_path, monkeypatch):
    """``is_installed("mnist", "")`` used to answer about $VITLAB_DATA (an empty string read as 'not given')."""
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path))
    with pytest.raises(ConfigError, match="cache_dir is empty"):
        is_installed("mnist", "")
    with pytest.raises(ConfigError, match="cache_dir is empty"):
        dataset_dir("mnist", " ")
    assert dataset_dir("mnist") == tmp_path / "mnist"


@pytest.mark.parametrize("typo, meant", [("fitt", "fit"), ("evaluate", "eval"), ("predcit", "predict")])
def test_misspelt_subcommand_suggests_the_close_one(capsys, typo, meant):
    """A misspelt subcommand listed every command but, unlike a misspelt dataset name, suggested none."""
    assert main([typo]) == 2
    err = capsys.readouterr().err
    assert f"invalid choice: '{typo}'" in err and f"did you mean `vitlab {meant}`?" in err and err.count("\n") == 1


def test_unknown_subcommand_far_from_all_gets_no_suggestion(capsys):
    assert main(["xyz"]) == 2
    assert "did you mean" not in capsys.readouterr().err


@pytest.mark.parametrize("args", [[], ["--debug"]])
def test_no_command_lists_every_command(capsys, args):
    """``vitlab`` alone printed jsonargparse's 'expected "command" to be one of {fit,eval,...}' with the list cut
    short; it now names every command."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitlab: error: no command given; choose one of fit, eval, predict,") and "..." not in err
    assert all(name in err for name in cli_main.COMMANDS)
