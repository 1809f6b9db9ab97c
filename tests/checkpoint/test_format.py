import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from vitlab.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    read_metadata,
    save_checkpoint,
    state_dict_sha256,
)


def _tiny(num_classes=10):
    return timm.create_model("vit_vitlab_tiny_patch4_32", num_classes=num_classes, in_chans=1, depth=1, embed_dim=32,
                             num_heads=2)


def test_model_round_trip_rebuilds_same_outputs(tmp_path):
    model = _tiny().eval()
    kwargs = {"num_classes": 10, "in_chans": 1, "depth": 1, "embed_dim": 32, "num_heads": 2}
    path = save_checkpoint(tmp_path / "run", model.state_dict(), kind="model", model_name="vit_vitlab_tiny_patch4_32",
                           model_kwargs=kwargs, extra={"data": {"name": "digits"}})
    assert path == tmp_path / "run" / "model.safetensors"
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta == read_metadata(tmp_path / "run")
    assert meta["format_version"] == 1 and meta["kind"] == "model" and meta["model_kwargs"] == kwargs
    rebuilt, meta2 = load_model(tmp_path / "run")
    x = torch.randn(3, 1, 32, 32)
    torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
    assert meta2["extra"]["data"]["name"] == "digits"


def test_sha256_depends_on_values_names_and_not_order():
    a = {"w": torch.ones(2, 2), "b": torch.zeros(2)}
    assert state_dict_sha256(a) == state_dict_sha256({"b": torch.zeros(2), "w": torch.ones(2, 2)})
    assert state_dict_sha256(a) != state_dict_sha256({"w": torch.ones(2, 2), "b": torch.tensor([0.0, 1e-7])})
    assert state_dict_sha256(a) != state_dict_sha256({"w2": torch.ones(2, 2), "b": torch.zeros(2)})
    assert len(state_dict_sha256(a)) == 64


def test_sha256_hashes_zero_dim_tensors_of_any_dtype():
    counters = {"bn.num_batches_tracked": torch.tensor(3), "scale": torch.tensor(0.5)}  # 0-d int64 and float32
    assert state_dict_sha256(counters) != state_dict_sha256({**counters, "bn.num_batches_tracked": torch.tensor(4)})
    assert state_dict_sha256(counters) == state_dict_sha256({k: v.clone() for k, v in counters.items()})


def test_plain_safetensors_without_metadata_is_rejected(tmp_path):
    save_file({"w": torch.ones(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="no 'vitlab' metadata"):
        read_metadata(tmp_path / "model.safetensors")


def test_wrong_kind_and_base_hash_are_named(tmp_path):
    base = {"w": torch.ones(2)}
    path = save_checkpoint(tmp_path / "a.safetensors", {"delta": torch.zeros(2)}, kind="adapter",
                           model_name="vit_vitlab_tiny_patch4_32", model_kwargs={}, base_sha256=state_dict_sha256(base))
    with pytest.raises(CheckpointError, match="holds a 'adapter' checkpoint but a 'model' one was expected"):
        load_checkpoint(path, expected_kind="model")
    with pytest.raises(CheckpointError, match="made for base weights"):
        load_checkpoint(path, expected_kind="adapter", base_sha256=state_dict_sha256({"w": torch.zeros(2)}))
    tensors, meta = load_checkpoint(path, expected_kind="adapter", base_sha256=state_dict_sha256(base))
    assert meta["base_sha256"] == state_dict_sha256(base) and set(tensors) == {"delta"}


def test_derived_kind_needs_base_hash_and_missing_file_errors(tmp_path):
    with pytest.raises(CheckpointError, match="needs base_sha256"):
        save_checkpoint(tmp_path / "x.safetensors", {}, kind="subspace", model_name=None, model_kwargs={})
    with pytest.raises(CheckpointError, match="unknown checkpoint kind"):
        save_checkpoint(tmp_path / "x.safetensors", {}, kind="weights", model_name=None, model_kwargs={})
    with pytest.raises(CheckpointError, match="no weights at"):
        read_metadata(tmp_path / "nothing")
    (tmp_path / "m.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="never unpickles"):
        read_metadata(tmp_path / "m.pt")


def test_save_and_hash_refuse_entries_that_are_not_tensors_naming_them(tmp_path):
    from vitlab.checkpoint import save_checkpoint, state_dict_sha256

    for bad in ({"a": 3}, {1: torch.zeros(1)}):
        with pytest.raises(TypeError, match=r"expects a dict of name -> tensor .*entry .* is a"):
            save_checkpoint(tmp_path / "m.safetensors", bad, kind="model", model_name="vit_vitlab_tiny_patch8_32",
                            model_kwargs={})
        with pytest.raises(TypeError, match="state_dict_sha256 expects a dict of name -> tensor"):
            state_dict_sha256(bad)
    assert not (tmp_path / "m.safetensors").exists()


def test_a_file_of_another_checkpoint_format_says_what_to_do(tmp_path):
    for version, fix in [(2, r"format 2, this vitlab reads 1: upgrade vitlab \(pip install -U vitlab; this is "),
                         (0, r"format 0, this vitlab reads 1: load its tensors with safetensors.torch.load_file"),
                         (None, r"format None, this vitlab reads 1: load its tensors")]:
        path = tmp_path / f"v{version}.safetensors"
        meta = {"format_version": version, "kind": "model", "model_name": "vit_tiny_patch16_224", "model_kwargs": {}}
        save_file({"w": torch.zeros(1)}, str(path), metadata={"vitlab": json.dumps(meta)})
        with pytest.raises(CheckpointError, match=fix):  # named no fix: "has checkpoint format 2, this vitlab reads 1"
            read_metadata(path)


def test_resolve_weights_path_reads_tilde_and_names_the_way_for_a_lightning_ckpt(tmp_path, monkeypatch):
    from vitlab.checkpoint import resolve_weights_path

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.safetensors").write_bytes(b"")
    assert resolve_weights_path("~/run") == tmp_path / "run" / "model.safetensors"
    (tmp_path / "run" / "last.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is a Lightning checkpoint: pass its run folder .* also take a \.ckpt"):
        resolve_weights_path("~/run/last.ckpt")


def _with_metadata(tmp_path, name, **changes):
    """The tiny model's tensors under vitlab metadata with ``changes`` applied (a hand-edited or hostile file)."""
    kwargs = {"num_classes": 10, "in_chans": 1, "depth": 1, "embed_dim": 32, "num_heads": 2}
    meta = {"format_version": 1, "kind": "model", "model_name": "vit_vitlab_tiny_patch4_32", "model_kwargs": kwargs,
            "base_sha256": None, "extra": {}}
    meta.update({k: v for k, v in changes.items() if k != "model_kwargs"})
    meta["model_kwargs"] = dict(kwargs, **changes.get("model_kwargs", {}))
    path = tmp_path / f"{name}.safetensors"
    save_file(_tiny().state_dict(), str(path), metadata={"vitlab": json.dumps(meta)})
    return path


@pytest.mark.parametrize("option", ["act_layer", "norm_layer"])
def test_metadata_naming_an_unknown_layer_is_a_checkpoint_error_not_timms_key_error(tmp_path, option):
    path = _with_metadata(tmp_path, option, model_kwargs={option: "nosuch"})
    with pytest.raises(CheckpointError, match=rf"does not build vit_vitlab_tiny_patch4_32: {option} must .*'nosuch'"):
        load_model(path)


def test_metadata_declaring_a_huge_depth_is_refused_quickly_before_the_whole_skeleton_is_built(tmp_path):
    """depth 20000 took 220 s and 1.3 GB to build on the meta device before the shapes were compared."""
    path = _with_metadata(tmp_path, "deep", model_kwargs={"depth": 20000})
    with pytest.raises(CheckpointError, match="makes far more tensors than the 19 the file stores"):
        load_model(path)  # the skeleton's build stops at 100x the file's tensor count


def test_format_version_true_is_not_format_1(tmp_path):
    """JSON ``true`` equals 1 in Python, so a file claiming format ``true`` was read as format 1."""
    with pytest.raises(CheckpointError, match="format True, this vitlab reads 1"):
        read_metadata(_with_metadata(tmp_path, "bool", format_version=True))


def test_the_tensor_budget_admits_real_architectures(tmp_path):
    """The build budget must not refuse a genuine file: iFormer (BatchNorm, many small convs) round-trips."""
    import vitlab  # noqa: F401  (registers inception_transformer_*)

    model = timm.create_model("inception_transformer_small", num_classes=3)
    path = save_checkpoint(tmp_path / "iformer", model.state_dict(), kind="model",
                           model_name="inception_transformer_small", model_kwargs={"num_classes": 3})
    rebuilt, _ = load_model(path)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


def test_save_checkpoint_expands_tilde_as_reading_does(tmp_path, monkeypatch):
    """``save_checkpoint("~/run", ...)`` wrote ./~/run/ while load_model("~/run") read the home folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    kwargs = {"num_classes": 10, "in_chans": 1, "depth": 1, "embed_dim": 32, "num_heads": 2}
    path = save_checkpoint("~/run", _tiny().state_dict(), kind="model", model_name="vit_vitlab_tiny_patch4_32",
                           model_kwargs=kwargs)
    assert path == tmp_path / "home" / "run" / "model.safetensors" and not (tmp_path / "~").exists()
    assert load_model("~/run")[1]["model_kwargs"] == kwargs


@pytest.mark.parametrize(("changes", "match"), [
    ({"model_kwargs": None}, "model kwargs must be a mapping"),
    ({"model_name": 5}, "model_name must be a timm model name"),
    ({"path": "model.pt"}, "writes safetensors, not model.pt"),
])
def test_save_checkpoint_refuses_what_reading_would_refuse_and_writes_nothing(tmp_path, changes, match):
    """These wrote a file that read_metadata then refused, a folder named model.pt, or raised TypeError."""
    args = {"path": "out", "model_name": "vit_vitlab_tiny_patch4_32", "model_kwargs": {"num_classes": 10}, **changes}
    with pytest.raises(CheckpointError, match=match):
        save_checkpoint(tmp_path / args.pop("path"), _tiny().state_dict(), kind="model", **args)
    assert list(tmp_path.iterdir()) == []
