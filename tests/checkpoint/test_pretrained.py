"""Starting weights from plain files, the official iFormer layout, timm and the Hub (offline cache), and refusals."""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vitlab.checkpoint import (
    CheckpointError,
    MissingWeightsError,
    create_model,
    load_model,
    load_pretrained,
    read_weights_file,
    resolve_pretrained,
    save_checkpoint,
)
from vitlab.errors import ConfigError

from ..hub_cache import HUB_ID

FIXTURES = Path(__file__).parents[1] / "fixtures"
SMALL_VIT = dict(depth=2, img_size=32)  # vit_tiny_patch16_224 with 2 blocks at 32 px: 2x2 patches


def _vit_state(seed: int = 0, **kwargs) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", **SMALL_VIT, **kwargs).state_dict()


def _assert_backbone_equal(model, state, skip=("head.",)):
    own = model.state_dict()
    compared = [k for k in state if not k.startswith(skip)]
    assert compared, "nothing compared"
    for key in compared:
        assert torch.equal(own[key], state[key]), key


def test_plain_safetensors_loads_and_drops_a_head_of_another_class_count(tmp_path):
    state = _vit_state()
    path = tmp_path / "vit_tiny.safetensors"
    save_file(state, str(path))
    weights = resolve_pretrained(str(path), "vit_tiny_patch16_224")
    assert weights.source == "file" and weights.location == str(path.resolve())
    model, name, kwargs = create_model("vit_tiny_patch16_224", weights, num_classes=10, **SMALL_VIT)
    assert name == "vit_tiny_patch16_224" and kwargs == dict(num_classes=10, **SMALL_VIT)
    _assert_backbone_equal(model, state)
    assert model.head.weight.shape == (10, 192)
    assert "state_dict" not in model.pretrained_cfg  # the overlay's tensors are not kept on the model
    assert weights._state_dict is None  # nor on the weights object a run keeps
    # same class count: the head loads too
    same, _, _ = create_model("vit_tiny_patch16_224", weights, **SMALL_VIT)
    _assert_backbone_equal(same, state, skip=())


def test_pth_with_model_wrapper_and_module_prefix_adapts_to_one_channel(tmp_path):
    state = _vit_state(seed=1)
    path = tmp_path / "deit_like.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    model, _, _ = create_model("vit_tiny_patch16_224", resolve_pretrained(path, "vit_tiny_patch16_224"),
                               num_classes=10, in_chans=1, **SMALL_VIT)
    _assert_backbone_equal(model, state, skip=("head.", "patch_embed.proj.weight"))
    # timm's adapt_input_conv: an RGB stem summed over its input channels
    torch.testing.assert_close(model.patch_embed.proj.weight,
                               state["patch_embed.proj.weight"].sum(dim=1, keepdim=True), rtol=0, atol=1e-6)


def test_official_iformer_pth_gives_the_official_outputs(tmp_path):
    with safe_open(str(FIXTURES / "iformer_official_reference_tiny.safetensors"), "pt") as handle:
        config = json.loads(handle.metadata()["config"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    official = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    path = tmp_path / "iformer_official.pth"
    torch.save({"model": official}, path)  # the official release's layout: a "model" wrapper, official names
    from vitlab.train.config import DataConfig, ModelConfig, RunConfig
    from vitlab.train.run import build_run_model

    run = RunConfig(model=ModelConfig(name="inception_transformer_tiny", pretrained=str(path),
                                      kwargs={k: v for k, v in config.items() if k not in ("num_classes", "in_chans")}),
                    data=DataConfig(img_size=config["img_size"]))
    built = build_run_model(run, config["num_classes"], config["in_chans"])
    assert built.weights.source == "file"
    with torch.no_grad():
        logits = built.model.eval()(tensors["input_64"].float())
    torch.testing.assert_close(logits.double(), tensors["logits_64"], rtol=0, atol=1e-4)


def test_a_pickle_that_runs_code_is_refused_without_torch_advice(tmp_path):
    marker = tmp_path / "owned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pth"
    torch.save({"model": _vit_state(), "trap": Payload()}, path)
    weights = resolve_pretrained(path, "vit_tiny_patch16_224")
    with pytest.raises(CheckpointError) as info:
        create_model("vit_tiny_patch16_224", weights, **SMALL_VIT)
    message = str(info.value)
    assert "refused" in message and str(path) in message
    assert "weights_only=False" not in message and "\n" not in message
    assert not marker.exists()


def test_checkpoint_of_another_architecture_names_the_tensors_and_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "resnet.safetensors"
    save_file(timm.create_model("resnet10t").state_dict(), str(path))
    with pytest.raises(CheckpointError) as info:
        create_model("vit_tiny_patch16_224", resolve_pretrained(path, "vit_tiny_patch16_224"), **SMALL_VIT)
    message = str(info.value)
    assert str(path) in message and "blocks.0.attn.qkv.weight" in message
    # mis-shaped: a ViT of another width
    wide = tmp_path / "wide.safetensors"
    save_file(_vit_state(embed_dim=96, num_heads=3), str(wide))
    with pytest.raises(CheckpointError, match="size mismatch for .*pos_embed"):
        create_model("vit_tiny_patch16_224", resolve_pretrained(wide, "vit_tiny_patch16_224"), **SMALL_VIT)


def test_loader_keywords_in_model_kwargs_point_to_model_pretrained():
    with pytest.raises(CheckpointError, match="model.pretrained"):
        create_model("vit_tiny_patch16_224", None, pretrained=True, **SMALL_VIT)
    with pytest.raises(CheckpointError, match="pretrained_cfg_overlay"):
        create_model("vit_tiny_patch16_224", None, pretrained_cfg_overlay={"file": "x.pth"}, **SMALL_VIT)


@pytest.mark.parametrize("spec, error, match", [
    ("does/not/exist.safetensors", MissingWeightsError, "no file or folder"),
    ("hf-hub:no_slash", ConfigError, "hf-hub:ORG/NAME"),
    (".", MissingWeightsError, "folder without model.safetensors"),
])
def test_bad_specs_say_what_to_pass(spec, error, match):
    with pytest.raises(error, match=match):
        resolve_pretrained(spec, "vit_tiny_patch16_224")


@pytest.mark.parametrize("name", ["vit_vitlab_tiny_patch8_32", "inception_transformer_tiny"])
def test_timm_weights_of_a_model_timm_has_none_for_are_refused_up_front(name):
    with pytest.raises(ConfigError, match=f"timm has no pretrained weights for {name} .*train it with `vitlab fit`"):
        resolve_pretrained("timm", name)  # failed later, inside timm, as "weights ... do not fit"
    assert resolve_pretrained("timm", "inception_transformer_small").describe()["tag"] == "sail_in1k"  # has a url


def test_unknown_suffix_and_unknown_model_name(tmp_path):
    weird = tmp_path / "weights.npz"
    weird.write_bytes(b"0")
    with pytest.raises(ConfigError, match="unknown weights format"):
        resolve_pretrained(weird, "vit_tiny_patch16_224")
    with pytest.raises(ConfigError, match="unknown model 'vit_tinyy'; did you mean"):
        resolve_pretrained("timm", "vit_tinyy")


def test_corrupt_and_empty_safetensors_are_one_line_errors(tmp_path):
    for name, payload in (("empty.safetensors", b""), ("corrupt.safetensors", b"\x10" * 40)):
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(CheckpointError) as info:
            resolve_pretrained(path, "vit_tiny_patch16_224")
        assert str(path) in str(info.value) and "\n" not in str(info.value)
        with pytest.raises(CheckpointError):
            load_model(path)


def test_metadata_declaring_a_huge_model_is_refused_before_allocation(tmp_path):
    """A small file whose metadata declares a 4096-wide, 64-deep ViT (tens of GB) is refused on the meta device."""
    bomb = {"embed_dim": 4096, "depth": 64, "num_heads": 64}
    path = save_checkpoint(tmp_path / "bomb.safetensors", {"w": torch.zeros(4)}, kind="model",
                           model_name="vit_tiny_patch16_224", model_kwargs=bomb)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(CheckpointError, match="do not match the architecture"):
        load_model(path)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200, f"peak RSS grew by {grown_mib:.0f} MiB"


def test_loader_keyword_in_stored_kwargs_is_refused(tmp_path):
    kwargs = {**SMALL_VIT, "checkpoint_path": str(tmp_path / "other.pth")}
    with pytest.raises(CheckpointError, match="checkpoint_path"):  # vitlab never writes such a file ...
        save_checkpoint(tmp_path / "m.safetensors", _vit_state(), kind="model", model_name="vit_tiny_patch16_224",
                        model_kwargs=kwargs)
    path = tmp_path / "m.safetensors"  # ... but a hand-made (hostile) one is refused when read
    meta = {"format_version": 1, "kind": "model", "model_name": "vit_tiny_patch16_224", "model_kwargs": kwargs}
    save_file(_vit_state(), str(path), metadata={"vitlab": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="checkpoint_path"):
        load_model(path)


def test_vitlab_file_records_its_statistics_and_loads_into_an_existing_model(tmp_path):
    state = _vit_state(seed=2, num_classes=10, in_chans=1)
    path = save_checkpoint(tmp_path / "run", state, kind="model", model_name="vit_tiny_patch16_224",
                           model_kwargs=dict(SMALL_VIT, num_classes=10, in_chans=1),
                           extra={"data": {"mean": [0.25], "std": [0.5], "in_chans": 1}})
    weights = resolve_pretrained(tmp_path / "run", "vit_tiny_patch16_224")
    assert weights.source == "vitlab" and weights.in_chans() == 1
    assert weights.normalization() == ((0.25,), (0.5,))
    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, in_chans=1, **SMALL_VIT)
    load_pretrained(model, path)
    _assert_backbone_equal(model, state, skip=())
    assert resolve_pretrained(weights.describe(), "vit_tiny_patch16_224").location == str(path.resolve())


def test_recorded_file_that_changed_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(_vit_state(), str(path))
    described = resolve_pretrained(path, "vit_tiny_patch16_224").describe()
    save_file(_vit_state(seed=5), str(path))
    with pytest.raises(CheckpointError, match="changed since it was recorded"):
        resolve_pretrained(described, "vit_tiny_patch16_224")
    path.unlink()
    with pytest.raises(MissingWeightsError, match="put it back"):
        resolve_pretrained(described, "vit_tiny_patch16_224")


@pytest.mark.parametrize("spec", ["timm", f"hf-hub:{HUB_ID}"])
def test_hub_weights_load_through_timm_offline(offline_hub, spec):
    _, state = offline_hub
    weights = resolve_pretrained(spec, "vit_tiny_patch16_224")
    assert weights.normalization() == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) and weights.in_chans() == 3
    model, name, kwargs = create_model("vit_tiny_patch16_224", weights, num_classes=10, img_size=32)
    assert name == "vit_tiny_patch16_224" and "pretrained" not in kwargs
    _assert_backbone_equal(model, state, skip=("head.", "pos_embed"))
    # position embeddings resampled by timm from 14x14 to 2x2 (+ the class token, kept as is)
    assert model.pos_embed.shape == (1, 5, 192)
    torch.testing.assert_close(model.pos_embed[:, :1], state["pos_embed"][:, :1], rtol=0, atol=0)
    described = weights.describe()
    assert described["hub_id"] == HUB_ID and len(described["sha256"]) == 64


def test_hub_weights_missing_from_the_cache_say_what_to_fetch(offline_hub, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(MissingWeightsError, match=f"hf download {HUB_ID}"):
        create_model("vit_tiny_patch16_224", resolve_pretrained("timm", "vit_tiny_patch16_224"), img_size=32)


def test_create_model_refuses_an_unknown_name_naming_close_ones():
    from vitlab.checkpoint import check_model_name, create_model
    from vitlab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown model 'vit_tiny_patch16_22'; did you mean \['vit_tiny_patch16_224"):
        create_model("vit_tiny_patch16_22", None)
    for bad in ("", None, 3):
        with pytest.raises(ConfigError, match="model.name must be a timm model name"):
            check_model_name(bad)
    check_model_name("vit_tiny_patch16_224.augreg_in21k")  # a pretrained tag after the dot is a known name


@pytest.mark.parametrize("bad", [None, 3, ["runs/x"]])
def test_a_weights_path_of_another_type_is_a_type_error_naming_what_to_pass(bad):
    from vitlab.checkpoint import load_model, read_metadata

    for read in (load_model, read_metadata):
        with pytest.raises(TypeError, match="weights path must be a model.safetensors file or a run folder"):
            read(bad)  # was Path()'s "expected str, bytes or os.PathLike object, not NoneType"


def test_a_lightning_checkpoint_of_a_run_starts_a_model_from_its_network(tmp_path):
    state = _vit_state(seed=3, in_chans=1, num_classes=10)
    lightning = {"pytorch-lightning_version": "2.6.6", "epoch": 0, "optimizer_states": [],
                 "state_dict": {f"model.{key}": value for key, value in state.items()}}  # a LightningModule's .model
    path = tmp_path / "last.ckpt"
    torch.save(lightning, path)
    weights = resolve_pretrained(path, "vit_tiny_patch16_224")
    assert weights.in_chans() == 1  # read from the file's first conv (was 3: the prefixed keys hid it)
    model, _, _ = create_model("vit_tiny_patch16_224", weights, **SMALL_VIT, in_chans=1, num_classes=10)
    _assert_backbone_equal(model, state, skip=())
    torch.save({"state_dict": {f"model.{key}": value for key, value in state.items()}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match=r"lack 30 tensors .* carry the prefix .model\.. .*own state_dict"):
        create_model("vit_tiny_patch16_224", resolve_pretrained(tmp_path / "other.ckpt", "vit_tiny_patch16_224"),
                     **SMALL_VIT, in_chans=1, num_classes=10)


def test_a_timm_train_py_pth_tar_checkpoint_loads_its_ema_weights_as_timm_does(tmp_path):
    # timm's train.py writes checkpoint-N.pth.tar / model_best.pth.tar: {epoch, arch, state_dict, state_dict_ema, ...}
    state, ema = _vit_state(seed=0), _vit_state(seed=1)
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 3, "arch": "vit_tiny_patch16_224", "state_dict": state, "state_dict_ema": ema}, path)
    weights = resolve_pretrained(str(path), "vit_tiny_patch16_224")  # was refused: unknown weights format '.tar'
    assert weights.source == "file"
    model, _, _ = create_model("vit_tiny_patch16_224", weights, **SMALL_VIT)
    _assert_backbone_equal(model, ema, skip=())  # as timm.create_model(checkpoint_path=...) / load_checkpoint
    torch.save({"epoch": 3, "state_dict": state}, path)  # no EMA kept: the trained weights
    _assert_backbone_equal(create_model("vit_tiny_patch16_224", resolve_pretrained(str(path), "vit_tiny_patch16_224"),
                                        **SMALL_VIT)[0], state, skip=())


def test_the_lightning_checkpoint_of_a_run_with_ema_starts_from_its_ema_weights(tmp_path):
    from vitlab.train.config import OptimConfig
    from vitlab.train.module import ClassificationTask

    torch.manual_seed(0)
    task = ClassificationTask(timm.create_model("vit_tiny_patch16_224", **SMALL_VIT, num_classes=10), num_classes=10,
                              optim=OptimConfig(ema_decay=0.9))
    with torch.no_grad():
        for param in task.ema.module.parameters():
            param.add_(1.0)
    path = tmp_path / "last.ckpt"
    torch.save({"pytorch-lightning_version": "2.6.6", "epoch": 0, "state_dict": task.state_dict()}, path)
    # was refused: "lack 30 tensors ... (another architecture?)", the model. and ema.module. prefixes both present
    model, _, _ = create_model("vit_tiny_patch16_224", resolve_pretrained(path, "vit_tiny_patch16_224"), **SMALL_VIT,
                               num_classes=10)
    _assert_backbone_equal(model, task.ema.module.state_dict(), skip=())  # the weights the run evaluates and saves


def test_hub_weights_pinned_to_a_revision_load_and_record_that_revision(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    from ..hub_cache import make_hub_cache

    main_state = make_hub_cache(tmp_path)  # refs/main -> revision 000...0
    pinned = "1" * 40
    repo = tmp_path / f"models--{HUB_ID.replace('/', '--')}" / "snapshots"
    (repo / pinned).mkdir()
    pinned_state = {k: v + 1 for k, v in main_state.items()}
    save_file({k: v.contiguous() for k, v in pinned_state.items()}, str(repo / pinned / "model.safetensors"))
    (repo / pinned / "config.json").write_text((repo / ("0" * 40) / "config.json").read_text())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    weights = resolve_pretrained(f"hf-hub:{HUB_ID}@{pinned}", "vit_tiny_patch16_224")
    model, _, _ = create_model("vit_tiny_patch16_224", weights)
    _assert_backbone_equal(model, pinned_state, skip=())
    # describe() (what a run records as its base) crashed on the '@' (HFValidationError); it hashes the pinned file
    described = weights.describe()
    from vitlab.checkpoint.pretrained import file_sha256

    assert described["sha256"] == file_sha256(repo / pinned / "model.safetensors")
    assert described["sha256"] != resolve_pretrained(f"hf-hub:{HUB_ID}", "vit_tiny_patch16_224").describe()["sha256"]
    assert f"--revision {pinned}" in weights.fetch_hint()
    with pytest.raises(ConfigError, match="ORG/NAME@REVISION"):
        resolve_pretrained(f"hf-hub:{HUB_ID}@", "vit_tiny_patch16_224")


def test_hub_weights_of_another_architecture_than_model_name_are_refused(offline_hub):
    _, state = offline_hub
    weights = resolve_pretrained(f"hf-hub:{HUB_ID}", "inception_transformer_tiny")
    # built the Hub's ViT silently: a run named an iFormer trained a ViT
    with pytest.raises(ConfigError, match="model.name is inception_transformer_tiny but the weights .* are a "
                                          "vit_tiny_patch16_224"):
        create_model("inception_transformer_tiny", weights, num_classes=10)
    with pytest.raises(ConfigError, match="model.name is vit_small_patch16_224"):
        load_pretrained(timm.create_model("vit_small_patch16_224", depth=1, img_size=32), f"hf-hub:{HUB_ID}")
    model, name, _ = create_model(f"hf-hub:{HUB_ID}", resolve_pretrained("timm", f"hf-hub:{HUB_ID}"), img_size=32)
    assert name == "vit_tiny_patch16_224"
    _assert_backbone_equal(model, state, skip=("pos_embed",))


def test_a_symlinked_hub_snapshot_file_passed_as_a_path_loads(tmp_path):
    # huggingface_hub's cache: snapshots/REV/model.safetensors -> ../../blobs/<sha256> (no suffix); the path was
    # resolved to the blob and refused as "unknown weights format ''"
    state = _vit_state()
    blob = tmp_path / "blobs" / ("a" * 64)
    blob.parent.mkdir()
    save_file(state, str(blob))
    link = tmp_path / "snapshots" / ("0" * 40) / "model.safetensors"
    link.parent.mkdir(parents=True)
    link.symlink_to(Path("../..") / "blobs" / blob.name)
    weights = resolve_pretrained(str(link), "vit_tiny_patch16_224")
    assert weights.source == "file" and weights.location == str(link)
    model, _, _ = create_model("vit_tiny_patch16_224", weights, **SMALL_VIT)
    _assert_backbone_equal(model, state, skip=())


def test_read_weights_file_names_a_truncated_safetensors_file_and_expands_a_home_path(tmp_path, monkeypatch):
    state = _vit_state()
    whole = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(whole))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # header intact, tensors missing
    with pytest.raises(CheckpointError, match="cut.safetensors is not a readable weights file"):
        read_weights_file(cut)
    monkeypatch.setenv("HOME", str(tmp_path))
    loaded = read_weights_file("~/w.safetensors")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_features_only_models_start_from_a_weights_file_through_create_model_and_load_pretrained(tmp_path):
    name = "inception_transformer_tiny"
    source = timm.create_model(name).eval()
    path = tmp_path / "iformer.pth"
    torch.save({"model": source.state_dict()}, path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = source.forward_intermediates(x, intermediates_only=True)
    model, _, kwargs = create_model(name, resolve_pretrained(path, name), features_only=True)
    later = load_pretrained(timm.create_model(name, features_only=True), path)
    for built in (model, later):
        assert "state_dict" not in built.pretrained_cfg and "state_dict" not in built.model.pretrained_cfg
        with torch.no_grad():
            maps = built.eval()(x)
        assert len(maps) == 4 and all(torch.equal(a, b) for a, b in zip(maps, expected, strict=True))
    assert kwargs == {"features_only": True}
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("blocks4.")}
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="lack .* tensors of InceptionTransformer: blocks4"):
        create_model(name, resolve_pretrained(tmp_path / "partial.pth", name), features_only=True)
