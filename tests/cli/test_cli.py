import importlib
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import timm
import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException

from vitlab.cli import main as cli_main
from vitlab.cli.fit import build_fit_parser, parse_run_config
from vitlab.cli.intrinsic_dim import build_intrinsic_dim_parser
from vitlab.cli.main import COMMANDS, is_user_error, main
from vitlab.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]
ALL_CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
STUDIES = [p for p in ALL_CONFIGS if "backbones" in yaml.safe_load(p.read_text())]  # `vitlab study` configs
CONFIGS = [p for p in ALL_CONFIGS if p not in STUDIES]  # `vitlab fit` / `vitlab intrinsic-dim` run configs


# each subcommand's help must describe its own options (a placeholder parser or a wrong one would not)
HELP_MUST_SHOW = {
    (): ["fit", "eval", "predict", "robustness", "diagnose-negatives", "data", "demo", "intrinsic-dim",
         "peft-study", "study", "--debug"],
    ("fit",): ["--optim.lr", "--model.name", "--trainer.max_epochs", "--trainer.accelerator", "--resume"],
    ("eval",): ["--checkpoint", "--data", "--split"], ("predict",): ["--checkpoint", "--topk", "images"],
    ("data",): ["install", "list"], ("data", "install"): ["name"], ("demo",): ["--estimate_only", "--config"],
    ("peft-study",): ["--methods", "--shots", "--reuse_cached_as_is"],
    ("intrinsic-dim",): ["--per_module", "--dims", "--trainer.max_epochs", "--reuse_cached_as_is"],
    ("robustness",): ["--corruptions", "--alexnet_normalise"], ("diagnose-negatives",): ["--kinds", "--patch_size"],
    ("study",): ["--reuse_cached_as_is", "--estimate_only"],
}


@pytest.mark.parametrize("command", list(HELP_MUST_SHOW), ids=lambda c: " ".join(c) or "vitlab")
def test_help_for_every_subcommand_describes_its_options(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: vitlab")
    missing = [word for word in HELP_MUST_SHOW[command] if word not in out]
    assert not missing, f"`vitlab {' '.join(command)} --help` lacks {missing}"


@pytest.mark.parametrize("build", [build_fit_parser, build_intrinsic_dim_parser])
def test_quick_help_parser_lists_the_same_trainer_options_as_the_real_one(build):
    def trainer_options(parser):
        # jsonargparse adds helpers such as --trainer.accelerator.help and --trainer.devices+; compare the keys
        return {o for a in parser._actions for o in a.option_strings if re.fullmatch(r"--trainer\.\w+", o)}

    quick, real = trainer_options(build(help_only=True)), trainer_options(build())
    assert len(real) > 30 and quick == real


def test_every_option_of_every_subcommand_uses_underscores():
    hyphenated = {}
    for name, (module, builder, _) in COMMANDS.items():
        parser = getattr(importlib.import_module(module), builder)()
        for action in parser._actions:
            primary = next((o for o in action.option_strings if o.startswith("--")), None)
            if primary and "-" in primary[2:]:
                hyphenated.setdefault(name, []).append(primary)
    assert hyphenated == {}


_HELP_PROBE = """
import sys, time
start = time.perf_counter()
from vitlab.cli.main import main
try:
    main(sys.argv[1:] + ["--help"])
except SystemExit:
    pass
print(f"{time.perf_counter() - start:.2f}", " ".join(sorted(sys.modules)), file=sys.stderr)
"""


@pytest.mark.parametrize("command", [[], ["fit"]], ids=["vitlab", "fit"])
def test_help_builds_only_the_chosen_parser_and_reports_its_time(command):
    """The seconds are reported (`pytest -s` shows them), not asserted: this machine's load varies. Asserted: only the
    chosen subcommand's module is imported, and `vitlab --help` imports no Lightning."""
    proc = subprocess.run([sys.executable, "-c", _HELP_PROBE, *command], capture_output=True, text=True, check=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds, modules = proc.stderr.strip().splitlines()[-1].split(" ", 1)
    modules = set(modules.split())
    print(f"`vitlab {' '.join(command)} --help`: {seconds} s (torch imported: {'torch' in modules}, lightning "
          f"imported: {'lightning' in modules})")
    assert proc.stdout.startswith("usage: vitlab")
    cli_modules = {m for m in modules if m.startswith("vitlab.cli.")}
    assert cli_modules == ({"vitlab.cli.main", "vitlab.cli.fit"} if command else {"vitlab.cli.main"})
    if not command:
        assert "lightning" not in modules and "vitlab.train" not in modules


_TORCH_FREE_HELP_PROBE = """
import sys
sys.argv[0] = "vitlab"  # as the console script: vitlab registers its models only once a subcommand runs
from vitlab.cli.main import main
try:
    main(sys.argv[1:] + ["--help"])
except SystemExit:
    pass
print(" ".join(sorted(sys.modules)), file=sys.stderr)
"""


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommands_help_imports_no_torch(command):
    """`vitlab robustness --help` / `diagnose-negatives` / `demo` / `peft-study` took 6-10 s: their parsers imported
    torch (through vitlab.eval's package imports and vitlab.metrics) for a default shown in the help."""
    proc = subprocess.run([sys.executable, "-c", _TORCH_FREE_HELP_PROBE, *command.split()], capture_output=True,
                          text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    modules = set(proc.stderr.strip().splitlines()[-1].split())
    assert proc.stdout.startswith("usage: vitlab") and "torch" not in modules and "timm" not in modules


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
    from vitlab.study.config import load_study_config

    has_full = "full" in yaml.safe_load(path.read_text())
    for full in (False, True):
        if full and not has_full:  # --full would change nothing: refused
            with pytest.raises(ValueError, match="has none: drop --full"):
                load_study_config(path, full=True)
            continue
        study = load_study_config(path, full=full)
        for label in study.used_backbones():
            spec = study.backbones[label]
            if spec.given_weights:  # a backbone that names its weights (e.g. timm's ViT-B/16) is not pretrained here
                assert timm.is_model(spec.model) and spec.pretrained
                continue
            assert Path(spec.pretrain).is_file()
            assert parse_run_config(["--config", spec.pretrain])[0].model.name
        if study.intrinsic_dim.backbones:
            assert parse_run_config(["--config", study.intrinsic_dim.config])[0].peft.method == "subspace"
    assert len(STUDIES) >= 2  # configs/study.yaml and configs/demo_study.yaml


def test_overrides_win_over_the_file(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("name: x\nmodel:\n  name: vit_vitlab_tiny_patch4_32\noptim:\n  lr: 0.1\ntrainer:\n  max_epochs: 3\n")
    config, _ = parse_run_config(["--config", str(cfg), "--optim.lr", "0.5", "--trainer.max_epochs", "1",
                                  "--peft.method", "kadaptation", "--data.options", '{"limit_train": 10}'])
    assert config.optim.lr == 0.5 and config.trainer["max_epochs"] == 1 and config.peft.method == "kadaptation"
    assert config.data.options == {"limit_train": 10} and config.model.name == "vit_vitlab_tiny_patch4_32"


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
    assert code == 1 and "no weights at" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_unknown_model_name_is_one_line_with_close_names_before_any_data_is_read(monkeypatch, tmp_path, capsys):
    def no_data(*args, **kwargs):
        raise AssertionError("the data was built before the model name was checked")

    monkeypatch.setattr("vitlab.train.run.build_run_datamodule", no_data)
    code = main(["fit", "--model.name", "inception_transformer_smal", "--output_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "unknown model 'inception_transformer_smal'; did you mean ['inception_transformer_small'" in err
    assert not any(tmp_path.iterdir())  # no run folder left behind


def test_a_file_where_a_folder_is_needed_is_one_line_naming_the_fix(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    code = main(["peft-study", "--methods", "[linear]", "--shots", "[1]", "--seeds", "[0]", "--full_data", "false",
                 "--backbone", "none", "--model", "vit_vitlab_tiny_patch8_32", "--output_dir", str(blocker)])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Not a directory" in err
    assert "a file stands where a folder is needed; move it, or choose another path" in err


def _failing_eval(monkeypatch, error):
    def run(sub):
        raise error

    monkeypatch.setattr(cli_main, "_run_eval", run)
    return ["eval", "--checkpoint", "x", "--data", "digits"]


@pytest.mark.parametrize("error", [ConfigError("optim.lr must be > 0: set a positive optim.lr"),
                                   DataError("a.idx is truncated:\nreplace it"), FileNotFoundError("no file b.png"),
                                   MisconfigurationException("No supported gpu backend found!")])
def test_user_errors_are_one_line_and_debug_shows_the_traceback(monkeypatch, capsys, error):
    args = _failing_eval(monkeypatch, error)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vitlab eval: error: ") and "Traceback" not in err
    assert " ".join(str(error).split()) in err and "--debug shows the traceback" in err
    for debug in (["--debug", *args], [*args, "--debug"]):
        with pytest.raises(type(error)):
            main(debug)
    monkeypatch.setenv("VITLAB_DEBUG", "1")
    with pytest.raises(type(error)):
        main(args)


def test_a_corrupt_file_refused_by_a_library_is_a_user_error(monkeypatch, tmp_path, capsys):
    from safetensors.torch import load_file

    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(Exception) as raised:  # what safetensors itself raises, whatever its type
        load_file(bad)
    assert main(_failing_eval(monkeypatch, raised.value)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and type(raised.value).__name__ in err


@pytest.mark.parametrize("make", [lambda: AttributeError("'NoneType' object has no attribute 'shape'"),
                                  lambda: TypeError("unsupported operand"),
                                  lambda: _value_error_from_torch()])
def test_bugs_are_not_disguised_as_user_errors(monkeypatch, make):
    error = make()
    with pytest.raises(type(error)):
        main(_failing_eval(monkeypatch, error))
    assert not is_user_error(error)


def _value_error_from_torch() -> ValueError:
    import torch

    try:
        torch.nn.functional.cross_entropy(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    except ValueError as err:  # raised inside torch: an internal bug, not the user's input
        return err
    raise AssertionError("torch accepted a batch-size mismatch")


def test_value_errors_raised_by_vitlab_are_user_errors():
    from vitlab.eval.evaluate import parse_n

    with pytest.raises(ValueError) as raised:
        parse_n("-3")
    assert is_user_error(raised.value)


def test_output_dir_is_the_parent_of_the_named_folder_in_every_command(monkeypatch, tmp_path, capsys):
    from vitlab.cli import peft_study

    seen = {}
    monkeypatch.setattr("vitlab.study.peft_study.run_peft_study", lambda **options: seen.update(options))
    assert main(["peft-study", "--output_dir", str(tmp_path), "--name", "s1", "--shots", "[5]"]) == 0
    assert seen["output_dir"] == str(tmp_path / "s1") and seen["shots"] == [5]
    assert main(["peft-study", "--output_dir", str(tmp_path), "--name", "../up"]) == 1
    assert "--name must be a plain folder name" in capsys.readouterr().err
    for parser in (build_fit_parser(), peft_study.build_peft_study_parser()):
        assert {"--output_dir", "--name"} <= {o for a in parser._actions for o in a.option_strings}


@pytest.mark.parametrize(("args", "message"), [
    (["eval", "--checkpoint", "x", "--data", "digits", "--batch_size", "abc"], 'Parser key "batch_size"'),
    (["fit", "--optim.lrr", "3"], "unrecognized arguments: --optim.lrr 3"),
    (["evl"], "invalid choice: 'evl'"), (["eval"], "required: eval.checkpoint"),
])
def test_a_bad_option_is_one_line_naming_it(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "--help` lists the options" in err


def test_quick_help_falls_back_to_the_real_trainer_section(monkeypatch):
    from vitlab.train import arguments

    def moved(parser):
        raise FileNotFoundError("lightning/pytorch/trainer/trainer.py")  # a Lightning laid out differently

    monkeypatch.setattr(arguments, "_add_trainer_help", moved)
    parser = build_fit_parser(help_only=True)
    assert parser.parse_args(["--trainer.max_epochs", "3"]).trainer.max_epochs == 3  # the real, typed section
    with pytest.raises(SystemExit):
        parser.parse_args(["--trainer.max_epochs", "three"])


def test_a_config_with_a_key_twice_is_one_line_naming_key_and_lines(tmp_path, capsys):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("name: x\noptim:\n  lr: 0.5\ndata:\n  name: digits\noptim:\n  lr: 0.01\n")
    code = main(["fit", "--config", str(cfg), "--output_dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{cfg}: key 'optim' is given twice (line 2 and line 6)" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("value", "message"), [
    ("missing.yaml", "no YAML file at missing.yaml"),
    (".", ". is a folder, not a YAML file"),
    ("{optim: {lr: 0.1, lr: 0.2}}", "key 'optim.lr' is given twice"),
])
def test_a_config_path_that_is_missing_a_folder_or_inline_with_a_key_twice_is_one_line(value, message, capsys):
    code = main(["fit", "--config", value])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err


def test_an_inline_config_still_parses(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli_main, "dispatch", lambda ns, argv: seen.update(ns=ns))
    assert main(["fit", "--config", "{name: inline, optim: {lr: 0.25}}"]) == 0
    assert seen["ns"].fit.name == "inline" and seen["ns"].fit.optim.lr == 0.25


@pytest.mark.parametrize(("args", "reason"), [
    (["--trainer.enable_checkpointing", "false"], "every run keeps checkpoints/last.ckpt"),
    (["--trainer.default_root_dir", "x"], "set --output_dir and --name"),
    (["--config", "{trainer: {plugins: x}}"], "trainer.plugins is set by vitlab"),
])
def test_a_trainer_keyword_vitlab_sets_itself_says_why(args, reason, capsys):
    assert main(["fit", *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and reason in err


def test_boolean_options_take_a_bare_flag_as_true():
    """`vitlab study --full` (the issue's spelling) failed with 'expected one argument'; a bare flag now means true
    and an explicit value still works, in every command."""
    from vitlab.cli.peft_study import build_peft_study_parser
    from vitlab.cli.study import build_study_parser

    study = build_study_parser()
    ns = study.parse_args(["--full", "--estimate_only", "--reuse_cached_as_is", "--name", "s"])
    assert ns.full is True and ns.estimate_only is True and ns.reuse_cached_as_is is True and ns.name == "s"
    assert study.parse_args(["--full", "false"]).full is False and study.parse_args([]).full is False
    peft = build_peft_study_parser().parse_args(["--full_data", "false", "--keep_checkpoints"])
    assert peft.full_data is False and peft.keep_checkpoints is True
    assert build_fit_parser().parse_args(["--resume", "--name", "r"]).resume is True
    assert build_intrinsic_dim_parser().parse_args(["--reuse_cached_as_is"]).reuse_cached_as_is is True
