"""Study and evaluation inputs a user gets wrong (round 27): each was taken silently or named the wrong fix."""

import pytest
import yaml

from vitlab.study.config import load_study_config, study_config_from_dict

from ..study.test_study import _write_configs

BACKBONES = {"vit": {"pretrain": "x"}}


def test_estimate_only_writes_nothing(tmp_path, monkeypatch, capsys):
    import vitlab.study.estimate
    from vitlab.cli.main import main

    monkeypatch.chdir(tmp_path)
    path = _write_configs(tmp_path)
    rows = [{"stage": "pretrain", "runs": 1, "estimated_s": 60.0}]  # the measurement itself takes seconds
    monkeypatch.setattr(vitlab.study.estimate, "estimate_study", lambda config: rows)
    assert main(["study", "--config", str(path), "--estimate_only"]) == 0
    assert "measured time estimate per stage" in capsys.readouterr().out
    assert not (tmp_path / "runs" / "tiny").exists()  # it wrote runs/tiny/study_config.yaml


def test_an_empty_output_dir_is_refused_not_the_current_folder(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"output_dir is empty: .*--output_dir runs"):
        study_config_from_dict({"backbones": BACKBONES, "output_dir": ""})  # was the study folder ./study
    path = _write_configs(tmp_path)
    with pytest.raises(ValueError, match=r"output_dir is empty"):
        load_study_config(path, output_dir=" ")


def test_a_home_relative_output_dir_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = study_config_from_dict({"backbones": BACKBONES, "output_dir": "~/runs"})
    assert config.folder == tmp_path / "runs" / "study"  # was ./~/runs/study: a folder named `~`


@pytest.mark.parametrize(("finetune", "message"), [
    ({"methods": ["full", "lora", "full"]}, r"finetune.methods lists a method twice"),
    ({"backbones": ["vit", "vit"]}, r"finetune.backbones lists a backbone twice"),
])
def test_a_method_or_backbone_listed_twice_is_refused_not_run_once(finetune, message):
    with pytest.raises(ValueError, match=message):
        study_config_from_dict({"backbones": BACKBONES, "finetune": finetune})


def test_an_intrinsic_backbone_listed_twice_is_refused():
    with pytest.raises(ValueError, match=r"intrinsic_dim.backbones lists a backbone twice"):
        study_config_from_dict({"backbones": BACKBONES, "intrinsic_dim": {"backbones": ["vit", "vit"]}})


@pytest.mark.parametrize("name", ["fashon_mnist", ""])
def test_a_misspelt_downstream_dataset_is_refused_when_the_config_is_read(name):
    # refused only when the fine-tuning stage built its data, after pretraining every backbone
    with pytest.raises(ValueError, match=r"downstream: unknown dataset .*valid names: .*fashion_mnist"):
        study_config_from_dict({"backbones": BACKBONES, "downstream": name})


def test_the_default_study_yaml_still_loads():
    config = load_study_config("configs/study.yaml")
    assert config.folder.as_posix() == "runs/study" and config.downstream == "fashion_mnist"
    assert list(config.finetune.methods) == list(yaml.safe_load(open("configs/study.yaml"))["finetune"]["methods"])


@pytest.mark.parametrize("source", ["timm", "hf-hub:timm/vit_tiny_patch16_224", "vit_tiny_patch16_224",
                                    "vit_tiny_patch16_224.augreg_in21k"])
def test_eval_of_a_pretrained_source_says_how_to_fine_tune_it(source, tmp_path, monkeypatch):
    from vitlab.eval.evaluate import evaluate_checkpoint

    monkeypatch.chdir(tmp_path)
    # said "no weights at timm: pass a model.safetensors file or a run folder"
    with pytest.raises(ValueError, match=r"is a source of pretrained weights .*model.pretrained timm.*--checkpoint "
                                         r"runs/<name>"):
        evaluate_checkpoint(source, "digits")


def test_a_missing_run_folder_still_says_no_weights(tmp_path, monkeypatch):
    from vitlab.eval.evaluate import evaluate_checkpoint

    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception, match=r"no weights at runs/vit"):
        evaluate_checkpoint("runs/vit", "digits")


def test_a_study_run_from_python_with_no_command_says_so(tmp_path, monkeypatch):
    import json

    import vitlab.study.estimate
    import vitlab.study.stages
    from vitlab.study.run import PYTHON_COMMAND, run_study

    def stop(*args, **kwargs):
        raise KeyboardInterrupt  # after study.json is first written, before any stage works

    monkeypatch.chdir(tmp_path)
    config = load_study_config(_write_configs(tmp_path))
    monkeypatch.setattr(vitlab.study.estimate, "estimate_study", lambda config: [
        {"stage": s, "runs": 0, "estimated_s": 0.0} for s in ("pretrain", "finetune", "evaluate", "intrinsic_dim",
                                                               "report")])
    monkeypatch.setattr(vitlab.study.stages, "pretrain_backbones", stop)
    with pytest.raises(KeyboardInterrupt):
        run_study(config, "")
    assert json.loads((config.folder / "study.json").read_text())["command"] == PYTHON_COMMAND  # the report's line
    with pytest.raises(TypeError, match="command must be the command line"):
        run_study(config, None)


def _intrinsic_config(tmp_path, **data):
    from dataclasses import replace

    from vitlab.train.arguments import load_run_config_file

    config = load_run_config_file("configs/intrinsic_dim_vit_digits.yaml")
    return replace(config, output_dir=str(tmp_path), data=replace(config.data, **data))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"per_module": "no"}, r"per_module must be True or False, got 'no'"),  # ran the per-module sweep
    ({"reuse_cached_as_is": "false"}, r"reuse_cached_as_is must be True or False"),
    ({"dims": "10"}, r"dims must be a list of positive ints .* got '10'"),  # named ['1', '0']
])
def test_intrinsic_dim_python_arguments_are_checked(kwargs, message, tmp_path):
    from vitlab.study.intrinsic import run_intrinsic_dim

    with pytest.raises(ValueError, match=message):
        run_intrinsic_dim(_intrinsic_config(tmp_path), **kwargs)
    assert not any(tmp_path.iterdir())  # refused before the sweep folder is written


def test_intrinsic_dim_takes_one_int_as_the_cli_does(tmp_path):
    from vitlab.study.intrinsic import run_intrinsic_dim

    config = _intrinsic_config(tmp_path, val_fraction=0.0)
    options = {**config.peft.options, "sweep": {**config.peft.options.get("sweep", {}), "metric": "val/acc"}}
    from dataclasses import replace

    config = replace(config, peft=replace(config.peft, options=options))
    # dims=10 was "TypeError: 'int' object is not iterable"; now it reaches the next check, as dims=[10] does
    for dims in (10, [10]):
        with pytest.raises(ValueError, match="need a validation split"):
            run_intrinsic_dim(config, dims=dims)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"output_dir": ""}, r"output_dir must be the study folder"),  # results.csv went into the current folder
    ({"keep_checkpoints": "no"}, r"keep_checkpoints must be True or False"),
    ({"reuse_cached_as_is": "false"}, r"reuse_cached_as_is must be True or False"),
])
def test_peft_study_python_arguments_are_checked(kwargs, message, tmp_path, monkeypatch):
    from vitlab.study.peft_study import run_peft_study

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        run_peft_study(**{"output_dir": "runs/p", **kwargs})
    assert not any(tmp_path.iterdir())


def test_peft_study_cli_refuses_an_empty_output_dir(tmp_path, monkeypatch, capsys):
    from vitlab.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(["peft-study", "--output_dir", "", "--methods", "[linear]"]) == 1
    assert "--output_dir is empty" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_run_study_flags_must_be_bools(tmp_path, monkeypatch):
    from vitlab.study.run import run_study

    monkeypatch.chdir(tmp_path)
    config = load_study_config(_write_configs(tmp_path))
    for flag in ("estimate_only", "reuse_cached_as_is"):
        with pytest.raises(TypeError, match=f"{flag} must be True or False, got 'false'"):
            run_study(config, "vitlab study", **{flag: "false"})
    assert not (tmp_path / "runs").exists()


def test_given_weights_missing_offline_are_refused_before_fine_tuning(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    from vitlab.checkpoint import MissingWeightsError
    from vitlab.study.stages import pretrain_backbones

    empty = tmp_path / "hub"
    empty.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(empty))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(empty))
    config = study_config_from_dict({"backbones": {"vit": {"model": "vit_tiny_patch16_224", "pretrained": "timm"}},
                                     "output_dir": str(tmp_path / "runs"), "downstream": "digits",
                                     "finetune": {"methods": ["linear"], "shots": [2], "full_data": False,
                                                  "seeds": [0]},
                                     "intrinsic_dim": {"backbones": []}})
    # each fine-tuning run failed in turn with this message, after the pretrain stage had passed
    with pytest.raises(MissingWeightsError, match=r"not in the Hugging Face cache .*hf download"):
        pretrain_backbones(config)
