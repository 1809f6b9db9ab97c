"""Run-config arguments: a key deep inside a mapping (``--peft.options.sweep.lr``) keeps the keys beside it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vitlab.cli import main as cli_main
from vitlab.cli.fit import parse_run_config
from vitlab.errors import ConfigError, MissingFileError
from vitlab.train.arguments import (
    apply_nested_overrides,
    load_run_config_file,
    run_config_from_args,
    split_nested_overrides,
)

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "intrinsic_dim_vit_digits.yaml"


def test_deep_key_keeps_siblings_and_reads_yaml():
    config = run_config_from_args(["--config", str(CONFIG), "--peft.options.sweep.lr", "0.03",
                                   "--peft.options.sweep.dims=[100, 1000]", "--data.options.limit_train", "50"])
    sweep = config.peft.options["sweep"]
    assert sweep["lr"] == 0.03 and isinstance(sweep["lr"], float)
    assert sweep["dims"] == [100, 1000]
    # the config file's other sweep keys survive (jsonargparse alone would replace the whole mapping)
    assert sweep["patience"] == 3 and sweep["metric"] == "test/acc" and sweep["stop_after_reached"] == 1
    assert config.peft.options["projection"] == "fastfood" and config.data.options == {"limit_train": 50}


def test_deep_key_creates_missing_mappings():
    config = run_config_from_args(["--config", str(CONFIG), "--data.options.few_shot.shots", "5",
                                   "--data.options.few_shot.seed", "1"])
    assert config.data.options["few_shot"] == {"shots": 5, "seed": 1}


def test_deep_key_through_a_scalar_is_refused():
    with pytest.raises(ConfigError, match=r"peft.options.dim is 1000, not a mapping"):
        run_config_from_args(["--config", str(CONFIG), "--peft.options.dim.x", "1"])


def test_split_leaves_other_arguments_alone():
    args = ["--config", "c.yaml", "--peft.options.dim", "5", "--optim.lr", "0.1", "--model.kwargs.a.b=2"]
    remaining, overrides = split_nested_overrides(args)
    assert remaining == ["--config", "c.yaml", "--peft.options.dim", "5", "--optim.lr", "0.1"]
    assert overrides == [("model.kwargs", ("a", "b"), "2")]
    with pytest.raises(ConfigError, match="needs a value"):
        split_nested_overrides(["--peft.options.sweep.lr"])
    with pytest.raises(ConfigError, match="empty key"):
        split_nested_overrides(["--peft.options..lr", "1"])
    with pytest.raises(ConfigError, match="is not valid YAML"):
        ns = cli_main.Namespace(peft=cli_main.Namespace(options={}))
        apply_nested_overrides(ns, [("peft.options", ("a", "b"), "[1,")])


def test_cli_applies_deep_keys(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli_main, "dispatch", lambda ns, argv: seen.update(ns=ns))
    status = cli_main.main(["intrinsic-dim", "--config", str(CONFIG), "--peft.options.sweep.lr", "0.05"])
    assert status == 0
    sweep = seen["ns"]["intrinsic-dim"].peft.options["sweep"]
    assert sweep["lr"] == 0.05 and sweep["num"] == 7 and sweep["d_max"] == 10000


def test_a_config_key_given_twice_is_refused_not_silently_dropped(tmp_path):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("name: x\noptim:\n  lr: 0.5\ndata:\n  name: digits\noptim:\n  weight_decay: 0.0\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml: key 'optim' is given twice \(line 2 and line 6\)"):
        run_config_from_args(["--config", str(cfg)])
    cfg.write_text("name: x\nmodel:\n  kwargs:\n    depth: 2\n    depth: 3\n")
    with pytest.raises(ConfigError, match=r"key 'model.kwargs.depth' is given twice \(line 4 and line 5\)"):
        run_config_from_args(["--config", str(cfg)])


@pytest.mark.parametrize(("option", "value", "key"), [
    ("--trainer.logger", "{class_path: CSVLogger, class_path: TensorBoardLogger}", "class_path"),
    ("--model.kwargs", "{depth: 2, depth: 3}", "depth"),
    ("--peft.options.sweep", "{lr: 0.1, lr: 0.2}", "lr"),
    ("--data.options.few_shot", "{shots: 5, shots: 1}", "shots"),
])
def test_an_option_value_giving_a_key_twice_is_refused(option, value, key):
    for args in ([option, value], [f"{option}={value}"]):
        with pytest.raises(ConfigError, match=rf"^{option} .*key '{key}' is given twice \(line 1, columns"):
            run_config_from_args(["--config", str(CONFIG), *args])


def test_a_key_inside_a_callback_or_logger_spec_keeps_the_rest_of_the_spec(tmp_path):
    cfg = tmp_path / "es.yaml"
    cfg.write_text("trainer:\n  callbacks:\n    class_path: EarlyStopping\n"
                   "    init_args: {monitor: val/acc, mode: max}\n")
    config = run_config_from_args(["--config", str(cfg), "--trainer.callbacks.init_args.patience", "3",
                                   "--trainer.logger", "TensorBoardLogger", "--trainer.logger.init_args.name=tb"])
    assert config.trainer["callbacks"] == {"class_path": "EarlyStopping",
                                           "init_args": {"monitor": "val/acc", "mode": "max", "patience": 3}}
    assert config.trainer["logger"] == {"class_path": "TensorBoardLogger", "init_args": {"name": "tb"}}
    with pytest.raises(ConfigError, match=r"trainer.logger is \['TensorBoardLogger'\], not one mapping"):
        run_config_from_args(["--trainer.logger", "[TensorBoardLogger]", "--trainer.logger.init_args.name", "tb"])


def test_print_config_shows_deep_keys_and_reruns_to_the_same_config(tmp_path, capsys):
    assert cli_main.main(["fit", "--config", str(CONFIG), "--peft.options.sweep.lr", "0.07",
                          "--trainer.callbacks.class_path", "EarlyStopping", "--print_config"]) == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    config, _ = parse_run_config(["--config", str(printed)])
    assert config.peft.options["sweep"]["lr"] == 0.07 and config.peft.options["sweep"]["num"] == 7
    assert config.trainer["callbacks"] == {"class_path": "EarlyStopping"}
    assert config == run_config_from_args(["--config", str(CONFIG), "--peft.options.sweep.lr", "0.07",
                                           "--trainer.callbacks.class_path", "EarlyStopping"])


def test_a_whole_spec_on_the_command_line_replaces_the_config_files_spec(tmp_path):
    cfg = tmp_path / "es.yaml"
    cfg.write_text("trainer:\n  callbacks:\n    class_path: EarlyStopping\n    init_args: {monitor: val/acc}\n")
    spec = "{class_path: ModelCheckpoint, init_args: {monitor: val/acc, mode: max}}"
    for args in (["--trainer.callbacks", spec], [f"--trainer.callbacks={spec}"]):  # jsonargparse: AttributeError
        config = run_config_from_args(["--config", str(cfg), *args])
        assert config.trainer["callbacks"] == {"class_path": "ModelCheckpoint",
                                               "init_args": {"monitor": "val/acc", "mode": "max"}}
    config = run_config_from_args(["--config", str(cfg), "--trainer.callbacks", "null",
                                   "--trainer.logger", "[TensorBoardLogger, CSVLogger]"])
    assert config.trainer.get("callbacks") is None and config.trainer["logger"] == ["TensorBoardLogger", "CSVLogger"]


@pytest.mark.parametrize(("content", "error", "message"), [
    ("- a\n- b\n", ConfigError, "is a list: a config file is a mapping"),  # was jsonargparse's "Unexpected config"
    ("", ConfigError, "is empty: a config file is a mapping"),
    (b"\xd0\x00\xff", ConfigError, "is not a text"),  # was a UnicodeDecodeError traceback
    (None, MissingFileError, "no YAML file at"),
])
def test_load_run_config_file_names_the_file_and_the_problem(tmp_path, content, error, message):
    path = tmp_path / "run.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(error, match=message):
        load_run_config_file(path)
    with pytest.raises(ConfigError, match="is a folder, not a YAML file"):
        load_run_config_file(tmp_path)


def test_a_printed_fit_config_loads_unless_it_asks_to_resume(tmp_path, capsys):
    assert cli_main.main(["fit", "--config", str(CONFIG), "--print_config"]) == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    assert load_run_config_file(printed) == run_config_from_args(["--config", str(CONFIG)])
    printed.write_text(printed.read_text().replace("resume: false", "resume: true"))
    with pytest.raises(ConfigError, match="resume / ckpt_path are options of the `vitlab fit` command"):
        load_run_config_file(printed)  # would have been dropped silently


@pytest.mark.parametrize("text", ["model: 3\n", "trainer: 5\n", "optim: [0.1]\n"])
def test_a_section_given_a_scalar_is_one_config_error(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    section = text.split(":")[0]
    with pytest.raises(ConfigError, match=rf"^{section} must be a mapping of its keys"):  # was an AttributeError
        load_run_config_file(path)


def test_an_empty_section_means_its_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: x\nnegatives:\ntrainer:\n")
    config = load_run_config_file(path)
    assert config.negatives == run_config_from_args([]).negatives
    assert config.trainer == {}  # vitlab's trainer defaults apply when the run starts (TRAINER_DEFAULTS)


@pytest.mark.parametrize("where", ["file", "command line"])
def test_logger_and_callbacks_false_as_lightningcli_writes_them(tmp_path, capsys, where):
    if where == "file":
        off = tmp_path / "off.yaml"
        off.write_text("trainer:\n  logger: false\n  callbacks: false\n")
        args = ["--config", str(CONFIG), "--config", str(off)]
    else:
        args = ["--config", str(CONFIG), "--trainer.logger", "false", "--trainer.callbacks", "false"]
    config = run_config_from_args(args)
    assert config.trainer["logger"] is False and config.trainer["callbacks"] is False
    # was a jsonargparse traceback (the file case: a refusal of `logger: false`)
    assert cli_main.main(["fit", *args, "--print_config"]) == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    assert run_config_from_args(["--config", str(printed)]) == config


@pytest.mark.parametrize("text, args, fix", [
    ("seed_everything: 3\n", [], "top-level key seed (--seed N)"),
    ("", ["--seed_everything", "3"], "top-level key seed (--seed N)"),
    ("optimizer:\n  class_path: torch.optim.SGD\n", [], "set in the optim section: optim.lr"),
    ("", ["--lr_scheduler.T_max", "3"], "set in the optim section: optim.lr"),
    ("model:\n  class_path: vitlab.train.ClassificationTask\n", [], "model.name (a timm model) and model.kwargs"),
])
def test_lightningcli_keys_are_refused_naming_vitlabs_own(tmp_path, capsys, text, args, fix):
    extra = tmp_path / "lightningcli.yaml"
    extra.write_text(text or "name: x\n")
    assert cli_main.main(["fit", "--config", str(CONFIG), "--config", str(extra), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert fix in err and len(err.splitlines()) == 1
    assert "set_parsing_settings" not in err  # jsonargparse's advice to the parser's author


def test_a_null_that_differs_from_lightnings_default_reaches_the_trainer():
    config = run_config_from_args(["--config", str(CONFIG), "--trainer.val_check_interval", "30",
                                   "--trainer.check_val_every_n_epoch", "null", "--trainer.gradient_clip_val", "null"])
    # Lightning's default is 1 (validate per epoch); null validates every val_check_interval batches across epochs.
    # It was dropped, so Lightning refused val_check_interval > batches per epoch and named this very setting.
    assert "check_val_every_n_epoch" in config.trainer and config.trainer["check_val_every_n_epoch"] is None
    assert config.trainer["val_check_interval"] == 30
    assert "gradient_clip_val" not in config.trainer  # Lightning's default is null too: nothing to pass


def test_print_config_shows_each_section_as_the_run_builds_it(tmp_path, capsys):
    """A negatives section switched on by its keys prints `enabled: true` (it printed the raw `enabled: null`), and the
    top-level temperature beside options.temperature: the printed file is the same run."""
    path = tmp_path / "neg.yaml"
    path.write_text("name: neg\nnegatives: {kinds: [shuffle], patch_size: 8, loss: contrastive, weight: 1.0, "
                    "temperature: 0.1}\n")
    for printer in (lambda: cli_main.main(["fit", "--config", str(path), "--print_config"]),
                    lambda: run_config_from_args(["--config", str(path), "--print_config"])):
        try:
            code = printer()
        except SystemExit as done:  # run_config_from_args exits as jsonargparse does
            code = done.code
        assert code in (0, None)
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["negatives"]["enabled"] is True
        assert printed["negatives"]["options"] == {"temperature": 0.1}
    (tmp_path / "printed.yaml").write_text(yaml.safe_dump(printed))
    assert run_config_from_args(["--config", str(tmp_path / "printed.yaml")]) == run_config_from_args(
        ["--config", str(path)])
