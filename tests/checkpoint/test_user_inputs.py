"""What users pass to the vitlab.checkpoint API by mistake: each is refused naming the fix, or handled correctly."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vitlab.checkpoint import (
    CheckpointError,
    MissingWeightsError,
    build_model,
    file_sha256,
    has_vitlab_metadata,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
    state_dict_sha256,
)

STATE = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(2)}
BASE = state_dict_sha256(STATE)


def _save(path, **kwargs):
    args = {"kind": "model", "model_name": None, "model_kwargs": {}, **kwargs}
    return save_checkpoint(path, STATE, **args)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_metadata_is_refused_naming_the_key(tmp_path, value):
    with pytest.raises(CheckpointError, match=r"extra\.metrics\.loss is not finite"):
        _save(tmp_path, extra={"metrics": {"loss": value}})
    with pytest.raises(CheckpointError, match=r"model_kwargs\.drop_rate is not finite"):
        _save(tmp_path, model_kwargs={"drop_rate": value})
    assert not (tmp_path / "model.safetensors").exists() and not (tmp_path / "config.json").exists()


def test_config_json_is_standard_json(tmp_path):
    _save(tmp_path, extra={"metrics": {"acc": 0.5, "curve": [1.0, 2.0]}})
    text = (tmp_path / "config.json").read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert read_metadata(tmp_path)["extra"]["metrics"] == {"acc": 0.5, "curve": [1.0, 2.0]}


@pytest.mark.parametrize("extra", [[("a", 1)], "run", 3])
def test_extra_that_is_not_a_dict_is_refused(tmp_path, extra):
    with pytest.raises(CheckpointError, match="extra must be a dict"):
        _save(tmp_path, extra=extra)


def test_loader_keywords_and_non_str_names_are_refused_when_saving(tmp_path):
    # read_metadata refuses these, so a file written with them could never be read back
    with pytest.raises(CheckpointError, match="pretrained load weights"):
        _save(tmp_path, model_name="vit_vitlab_tiny_patch4_32", model_kwargs={"pretrained": True})
    with pytest.raises(CheckpointError, match="names must be strings; got 1"):
        _save(tmp_path, model_kwargs={1: 2})
    with pytest.raises(CheckpointError, match="model_name must be a timm model name"):
        _save(tmp_path, model_name="")
    assert not (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize("bad", [123, "abc", "g" * 64, BASE + "0", b"0" * 64])
def test_malformed_base_sha256_is_refused(tmp_path, bad):
    with pytest.raises(CheckpointError, match="64-digit hex SHA-256"):
        save_checkpoint(tmp_path, STATE, kind="adapter", model_name=None, model_kwargs={}, base_sha256=bad)
    path = save_checkpoint(tmp_path, STATE, kind="adapter", model_name=None, model_kwargs={}, base_sha256=BASE)
    with pytest.raises(CheckpointError, match="64-digit hex SHA-256"):
        load_checkpoint(path, base_sha256=bad)


def test_base_sha256_case_does_not_matter(tmp_path):
    path = save_checkpoint(tmp_path, STATE, kind="adapter", model_name=None, model_kwargs={}, base_sha256=BASE.upper())
    assert read_metadata(path)["base_sha256"] == BASE
    tensors, meta = load_checkpoint(path, expected_kind="adapter", base_sha256=BASE.upper())
    assert meta["kind"] == "adapter" and torch.equal(tensors["w"], STATE["w"])
    with pytest.raises(CheckpointError, match="was made for base weights"):
        load_checkpoint(path, base_sha256="0" * 64)


def test_base_hash_given_for_a_file_that_records_none(tmp_path):
    path = _save(tmp_path)
    with pytest.raises(CheckpointError, match="records no base weights.*base_sha256=None"):
        load_checkpoint(path, base_sha256=BASE)


@pytest.mark.parametrize("kind", ["modle", "Model", ["model"]])
def test_expected_kind_that_is_not_a_kind_is_refused(tmp_path, kind):
    path = _save(tmp_path)
    with pytest.raises(CheckpointError, match="is not a checkpoint kind; use one of"):
        load_checkpoint(path, expected_kind=kind)


def test_meta_and_sparse_tensors_are_refused(tmp_path):
    meta = {"w": torch.empty(3, device="meta")}
    for call in (lambda s: _save_state(tmp_path, s), state_dict_sha256):
        with pytest.raises(ValueError, match="meta device.*to_empty"):
            call(meta)
        with pytest.raises(ValueError, match=r"layout torch.sparse_coo.*to_dense\(\)"):
            call({"w": torch.eye(3).to_sparse()})


def _save_state(tmp_path, state):
    return save_checkpoint(tmp_path, state, kind="model", model_name=None, model_kwargs={})


def test_hash_of_conjugate_and_negative_views_equals_the_materialised_tensor():
    z = torch.tensor([1 + 2j, 3 - 1j])
    assert state_dict_sha256({"z": z.conj()}) == state_dict_sha256({"z": z.conj().resolve_conj()})
    assert state_dict_sha256({"z": z.conj()}) != state_dict_sha256({"z": z})
    x = torch.tensor([1.0, -2.0])
    assert state_dict_sha256({"x": x._neg_view()}) == state_dict_sha256({"x": -x})


def test_hash_is_independent_of_key_order_and_sees_dtype():
    reordered = dict(reversed(list(STATE.items())))
    assert state_dict_sha256(reordered) == BASE
    assert state_dict_sha256({k: v.double() for k, v in STATE.items()}) != BASE


def test_uppercase_suffixes(tmp_path):
    path = _save(tmp_path / "W.SAFETENSORS")
    assert path == tmp_path / "W.SAFETENSORS" and path.is_file()
    assert torch.equal(load_checkpoint(path)[0]["w"], STATE["w"])
    with pytest.raises(CheckpointError, match="writes safetensors, not W.PT"):
        _save(tmp_path / "W.PT")


def test_save_path_of_wrong_type_is_refused():
    with pytest.raises(TypeError, match="path must be a .safetensors file or a folder"):
        _save(3)


def test_has_vitlab_metadata_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _save(tmp_path / "run")
    assert has_vitlab_metadata("~/run/model.safetensors") is True
    with pytest.raises(MissingWeightsError, match="does not exist"):
        has_vitlab_metadata(tmp_path / "nope.safetensors")
    with pytest.raises(MissingWeightsError, match="is a folder"):
        has_vitlab_metadata(tmp_path / "run")
    with pytest.raises(TypeError, match="str or pathlib.Path"):
        has_vitlab_metadata(3)


def test_file_sha256_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "f.bin").write_bytes(b"abc")
    assert file_sha256("~/f.bin") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    with pytest.raises(MissingWeightsError, match="does not exist"):
        file_sha256(tmp_path / "missing.bin")
    with pytest.raises(MissingWeightsError, match="is a folder"):
        file_sha256(tmp_path)
    with pytest.raises(TypeError, match="str or pathlib.Path"):
        file_sha256(3)


@pytest.mark.parametrize("meta", [None, "vit_vitlab_tiny_patch4_32", ["model_name"]])
def test_build_model_needs_metadata(meta):
    with pytest.raises(TypeError, match=r"checkpoint metadata \(a dict from read_metadata"):
        build_model(meta)
