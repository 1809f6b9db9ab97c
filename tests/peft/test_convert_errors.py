"""`vitlab peft convert` on bad input: one CheckpointError / ConfigError line naming the fix (issue 13's audit)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.peft.test_export import KWARGS, NAME, _legacy_names, _trained
from vitlab.checkpoint import CheckpointError, MissingWeightsError, save_checkpoint
from vitlab.errors import ConfigError, MissingFileError
from vitlab.peft import build_peft_transform, convert_adapter

OLD_OPTIONS = {"n": 8, "bias": True, "head_modules": None}


def _old_file(tmp_path, peft=None, tensors=None, name="adapter.safetensors"):
    """A vitlab 0.1 kadaptation adapter file (the real tensors), with ``peft`` as its ``extra.peft`` record."""
    _, adapted = _trained("kadaptation", n=8)
    legacy = _legacy_names("kadaptation", adapted.state_dict())
    peft = {"method": "kadaptation", "target_modules": None, "options": dict(OLD_OPTIONS)} if peft is None else peft
    return save_checkpoint(tmp_path / name, tensors or legacy, kind="adapter", model_name=NAME, model_kwargs=KWARGS,
                           base_sha256="0" * 64, extra={"peft": peft})


def test_out_must_be_a_new_or_empty_folder(tmp_path):
    old = _old_file(tmp_path)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError, match="a_file is a file; the converted adapter is a folder: pass a new folder"):
        convert_adapter(old, tmp_path / "a_file")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="is a folder that is not empty; pass a new or empty folder"):
        convert_adapter(old, tmp_path / "full")
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["notes.txt"]  # nothing written or mixed in
    (tmp_path / "empty").mkdir()
    assert (convert_adapter(old, tmp_path / "empty") / "adapter_config.json").is_file()


def test_cli_refuses_an_existing_out_file_in_one_line(tmp_path, capsys):
    from vitlab.cli.main import main

    old = _old_file(tmp_path)
    (tmp_path / "a_file").write_text("x")
    assert main(["peft", "convert", str(old), "--out", str(tmp_path / "a_file")]) != 0
    err = capsys.readouterr().err
    assert "is a file; the converted adapter is a folder" in err and "Traceback" not in err


def test_missing_source_and_peft_folder_get_convert_advice(tmp_path):
    with pytest.raises(MissingFileError, match="pass an adapter.safetensors written by vitlab 0.1 .*or the run "
                                               "folder that holds one"):
        convert_adapter(tmp_path / "nope" / "adapter.safetensors", tmp_path / "o")
    with pytest.raises(MissingWeightsError, match="no adapter file at .*empty_run/adapter.safetensors"):
        (tmp_path / "empty_run").mkdir()
        convert_adapter(tmp_path / "empty_run", tmp_path / "o")
    folder = convert_adapter(_old_file(tmp_path), tmp_path / "converted")
    for again in (folder, folder / "adapter_model.safetensors"):
        with pytest.raises(CheckpointError, match="already in peft format .*load it with PeftModel.from_pretrained"):
            convert_adapter(again, tmp_path / "o")


@pytest.mark.parametrize("peft, match", [
    ({"method": "kadaptation", "target_modules": None, "options": "x"},
     "extra.peft.options must be a mapping of option names to values, got 'x'"),
    ({"method": "kadaptation", "target_modules": None, "options": ["n", 8]}, "extra.peft.options must be a mapping"),
    ({"method": "kadaptation", "target_modules": None}, r"extra.peft lacks \['options'\]"),
    ({"method": "kadaptation", "options": dict(OLD_OPTIONS)}, r"extra.peft lacks \['target_modules'\]"),
    ({"method": "kadaptation"}, r"extra.peft lacks \['target_modules', 'options'\]"),
    ({"method": "kadaptation", "target_modules": 5, "options": dict(OLD_OPTIONS)},
     "extra.peft.target_modules must be null, a string or a list of module names, got 5"),
    ({"method": 3, "target_modules": None, "options": {}}, r"\(method 3\); nothing to convert"),
    ("kadaptation", "has no extra.peft record"),
    ({"method": "kadaptation", "target_modules": None, "options": {"n": "8"}},
     "recorded 'kadaptation' settings .* do not build the adapter: n must be an int"),
    ({"method": "kadaptation", "target_modules": None, "options": {"n": 8, "bogus": 1}},
     r"do not build the adapter: unknown option\(s\) \['bogus'\]"),
])
def test_damaged_metadata_is_a_checkpoint_error_naming_the_field(tmp_path, peft, match):
    old = _old_file(tmp_path, peft=peft)
    with pytest.raises(CheckpointError, match=match) as info:
        convert_adapter(old, tmp_path / "o")
    assert "not a vitlab 0.1 adapter" in str(info.value) and not (tmp_path / "o").exists()


def test_non_float_tensors_are_refused(tmp_path):
    _, adapted = _trained("kadaptation", n=8)
    legacy = {k: v.to(torch.int32) for k, v in _legacy_names("kadaptation", adapted.state_dict()).items()}
    with pytest.raises(CheckpointError, match="are not floating point"):
        convert_adapter(_old_file(tmp_path, tensors=legacy), tmp_path / "o")


def test_vitlab_01_option_names_say_what_they_were_renamed_to(tmp_path):
    with pytest.raises(ValueError, match=r"\['bias'\] are no longer accepted: 'bias' was renamed to 'delta_bias'"):
        build_peft_transform("kadaptation", None, n=8, bias=True)
    with pytest.raises(ValueError, match="'head_modules' was renamed to 'modules_to_save'"):
        build_peft_transform("kadaptation", None, n=8, head_modules=["head"])
    folder = convert_adapter(_old_file(tmp_path), tmp_path / "converted")  # the converter renames them itself
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["delta_bias"] is True and "bias" not in json.loads((folder / "vitlab.json").read_text())["peft"][
        "options"]


def test_load_adapter_of_a_vitlab_01_run_folder_names_the_converter(tmp_path):
    """load_adapter(<0.1 run folder>) said 'no adapter in ...'; the folder's adapter.safetensors is read, as from
    the file itself, so the message names `vitlab peft convert` (convert_adapter takes the folder too)."""
    from vitlab.peft import load_adapter

    run = tmp_path / "run"
    run.mkdir()
    _old_file(run)
    base, _ = _trained("kadaptation", n=8)
    with pytest.raises(CheckpointError, match=r"vitlab 0\.1 'kadaptation' adapter file.*vitlab peft convert"):
        load_adapter(run, base)
