"""A Hub config.json is untrusted: hostile model_args / num_classes are refused before anything is built (offline)."""

from __future__ import annotations

import json

import huggingface_hub.constants as constants
import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from vitlab.checkpoint import (
    CheckpointError,
    MissingWeightsError,
    create_model,
    load_pretrained,
    resolve_pretrained,
)

from ..hub_cache import HUB_ID, HUB_MODEL, REVISION, make_hub_cache

SMALL = dict(img_size=32, num_classes=10)
HOSTILE = [{"model_args": {"depth": 20000}}, {"model_args": {"embed_dim": 10**6, "num_heads": 1}},
           {"model_args": {"img_size": 10**6}}, {"num_classes": 10**8, "pretrained_cfg": {}}]  # no classifier named


@pytest.fixture
def hub_snapshot(tmp_path, monkeypatch):
    """A private offline cache (the session one must stay intact); returns (snapshot folder, state dict)."""
    state = make_hub_cache(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    return tmp_path / f"models--{HUB_ID.replace('/', '--')}" / "snapshots" / REVISION, state


@pytest.fixture
def no_real_hostile_build(monkeypatch):
    """Fail the test at once if a ViT is built off the meta device with a hostile size (the old code did that: it
    hung for minutes or ran out of memory); builds on the meta device (no memory) pass."""
    original = VisionTransformer.__init__

    def guarded(self, *args, **kwargs):
        sizes = (kwargs.get("depth", 0), kwargs.get("embed_dim", 0), kwargs.get("img_size", 0),
                 kwargs.get("num_classes", 0))
        if torch.empty(0).device.type != "meta" and max(s if isinstance(s, int) else 0 for s in sizes) >= 20000:
            pytest.fail(f"built the Hub config's hostile architecture for real: {kwargs}")
        original(self, *args, **kwargs)

    monkeypatch.setattr(VisionTransformer, "__init__", guarded)


def _write_config(snapshot, **changes):
    path = snapshot / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return path


@pytest.mark.parametrize("changes", HOSTILE, ids=["depth", "embed_dim", "img_size", "num_classes"])
def test_a_hub_config_declaring_a_huge_model_is_refused_naming_the_file_and_key(hub_snapshot, no_real_hostile_build,
                                                                                changes):
    config = _write_config(hub_snapshot[0], **changes)
    key = next(iter(changes.get("model_args", changes)))
    # was: the architecture built for real (depth 20000: minutes; embed_dim / img_size / num_classes: out of memory)
    with pytest.raises(CheckpointError, match=rf"^{config}: its model_args and num_classes .*'{key}'.*config\.json"):
        create_model(HUB_MODEL, resolve_pretrained(f"hf-hub:{HUB_ID}", HUB_MODEL), **SMALL)


def test_a_hub_config_describing_its_weights_still_loads_them(hub_snapshot):
    snapshot, state = hub_snapshot
    _write_config(snapshot, model_args={"embed_dim": 192, "depth": 12, "num_heads": 3, "img_size": 224})
    model, _, kwargs = create_model(HUB_MODEL, resolve_pretrained(f"hf-hub:{HUB_ID}", HUB_MODEL), **SMALL)
    assert kwargs == {"embed_dim": 192, "depth": 12, "num_heads": 3, **SMALL}
    assert torch.equal(model.blocks[11].mlp.fc2.weight, state["blocks.11.mlp.fc2.weight"])


def test_a_hub_config_naming_a_checkpoint_path_is_refused_before_timm_loads_it(hub_snapshot, tmp_path, monkeypatch):
    other = tmp_path / "other.pth"
    torch.save(timm.create_model(HUB_MODEL, depth=1).state_dict(), other)
    config = _write_config(hub_snapshot[0], model_args={"checkpoint_path": str(other)})
    loaded = []
    monkeypatch.setattr(timm.models._factory, "load_checkpoint", lambda *a, **k: loaded.append(a))
    # was: timm loaded the file the config names into the model (then a "do not fit" error about model.pretrained)
    with pytest.raises(CheckpointError, match=rf"^{config}: its model_args name checkpoint_path, which load weights "
                                              r"and are not model options: delete them from config\.json"):
        create_model(HUB_MODEL, resolve_pretrained(f"hf-hub:{HUB_ID}", HUB_MODEL), **SMALL)
    assert not loaded


def test_an_uncached_weights_file_offline_is_named_before_a_hostile_config_is_built(hub_snapshot,
                                                                                  no_real_hostile_build):
    snapshot, _ = hub_snapshot
    _write_config(snapshot, model_args={"depth": 20000})
    (snapshot / "model.safetensors").unlink()  # config.json fetched, the weights not (an interrupted download)
    # was: the 20000-block model built for real, and only then "not in the Hugging Face cache"
    with pytest.raises(MissingWeightsError, match=r"not in the Hugging Face cache .*hf download"):
        create_model(HUB_MODEL, resolve_pretrained(f"hf-hub:{HUB_ID}", HUB_MODEL), **SMALL)


@pytest.mark.parametrize(("config", "problem"), [
    ({"model_args": [1]}, r"is not a timm model config \(AttributeError: 'list' object has no attribute 'get'\)"),
    ({"model_args": "depth=2"}, r"is not a timm model config \(AttributeError"),
    ({"architecture": 5}, r"names architecture 5, not a timm model name"),
    ({"architecture": None}, r"names architecture None, not a timm model name"),
    ({"pretrained_cfg": [1]}, r"is not a timm model config \(AttributeError"),
])
def test_a_hub_config_of_another_shape_is_named_with_what_is_wrong(hub_snapshot, config, problem):
    path = _write_config(hub_snapshot[0], **config)
    # was: timm's parser's AttributeError ('list' object has no attribute 'get') or a "model.name is ... but the
    # weights are a 5" ConfigError
    with pytest.raises(CheckpointError, match=rf"^{path} {problem}.*fix or delete config\.json"):
        create_model(HUB_MODEL, resolve_pretrained(f"hf-hub:{HUB_ID}", HUB_MODEL), **SMALL)


def test_a_hub_config_that_is_not_a_json_object_is_named(hub_snapshot):
    path = hub_snapshot[0] / "config.json"
    path.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=rf"^{path} is not a timm model config \(TypeError"):
        resolve_pretrained(f"hf-hub:{HUB_ID}", HUB_MODEL).pretrained_cfg()


@pytest.mark.parametrize(("cfg", "problem"), [
    ({"input_size": [0, 224, 224]}, r"input_size \[0, 224, 224\], not \[channels, height, width\] of positive"),
    ({"input_size": "3x224x224"}, r"input_size 3x224x224, not \[channels"),
    ({"input_size": [3.5, 224, 224]}, r"input_size \[3.5, 224, 224\], not"),
    ({"std": [0, 0, 0]}, r"mean \[0.5, 0.5, 0.5\] and std \[0, 0, 0\], not per-channel lists of finite numbers"),
    ({"mean": [float("inf"), 0, 0]}, r"mean \[inf, 0, 0\] and std"),
    ({"mean": [0.5, 0.5]}, r"mean \[0.5, 0.5\] and std \[0.5, 0.5, 0.5\], not"),
    ({"mean": "imagenet"}, r"mean imagenet and std"),
])
def test_a_hub_pretrained_cfg_with_nonsense_data_statistics_is_refused_naming_the_entry(hub_snapshot, cfg, problem):
    path = hub_snapshot[0] / "config.json"
    config = json.loads(path.read_text())
    config["pretrained_cfg"].update(cfg)
    path.write_text(json.dumps(config))
    weights = resolve_pretrained(f"hf-hub:{HUB_ID}", HUB_MODEL)
    # was: in_chans() 0 / a ValueError from int('3'), normalization() std 0 (the data divided by zero) or inf mean
    for read in (weights.in_chans, weights.normalization):
        with pytest.raises(CheckpointError, match=rf"^{path} has pretrained_cfg {problem}.*fix or delete config\.json"):
            read()


def test_a_hub_pretrained_cfg_with_one_statistic_for_all_channels_is_read(hub_snapshot):
    path = hub_snapshot[0] / "config.json"
    config = json.loads(path.read_text())
    config["pretrained_cfg"].update(input_size=[3, 28, 28], mean=[0.25], std=[0.5])
    path.write_text(json.dumps(config))
    weights = resolve_pretrained(f"hf-hub:{HUB_ID}", HUB_MODEL)
    assert weights.in_chans() == 3 and weights.normalization() == ((0.25,), (0.5,))


@pytest.mark.parametrize("channels", [3000, 1])
def test_a_hub_input_size_contradicting_the_cached_stem_is_refused_before_the_data_is_built(hub_snapshot, channels):
    path = hub_snapshot[0] / "config.json"
    config = json.loads(path.read_text())
    config["pretrained_cfg"]["input_size"] = [channels, 224, 224]
    path.write_text(json.dumps(config))
    # was: in_chans() gave 3000 (then "the weights' normalisation has 3 channels but the model takes 3000: set
    # data.normalize: dataset", the wrong fix) or 1 (grey data fed to RGB weights until timm's loader refused)
    with pytest.raises(CheckpointError, match=rf"^{path} has pretrained_cfg input_size \[{channels}, 224, 224\], but "
                                              r"patch_embed.proj.weight in .*model.safetensors takes 3 channels"):
        resolve_pretrained(f"hf-hub:{HUB_ID}", HUB_MODEL).in_chans()


def test_a_hub_config_naming_a_vitlab_architecture_for_vit_weights_is_refused_by_name(hub_snapshot):
    path = _write_config(hub_snapshot[0], architecture="inception_transformer_tiny")
    name = f"hf-hub:{HUB_ID}"  # model.name is the Hub id: the config alone says which architecture to build
    # was: timm's "AttributeError: Stem has no attribute `proj`" from inside its loader
    with pytest.raises(CheckpointError, match=rf"^{path}: the weights file .* has a stem 'patch_embed.proj' "
                                              r"\(pretrained_cfg first_conv\), which inception_transformer_tiny has "
                                              r"not: the Hub config names an architecture these weights are not"):
        create_model(name, resolve_pretrained(name, name), **SMALL)


@pytest.mark.parametrize("classes", [-5, 10**8, 10.0, True])
def test_a_hub_num_classes_contradicting_the_cached_classifier_is_refused(hub_snapshot, no_real_hostile_build,
                                                                        classes):
    path = _write_config(hub_snapshot[0], num_classes=classes)
    # was: -5 built a 1000-class model whose trained head timm silently dropped (1000 != -5) for a random one;
    # 10**8 was built for real (out of memory)
    with pytest.raises(CheckpointError, match=rf"^{path}: its num_classes {classes!r} contradicts head.weight in "
                                              r".*model.safetensors, which has 1000 classes: fix or delete config"):
        create_model(HUB_MODEL, resolve_pretrained(f"hf-hub:{HUB_ID}", HUB_MODEL), img_size=32)


def test_load_pretrained_from_a_hub_config_whose_num_classes_contradicts_the_file_is_refused(hub_snapshot):
    path = _write_config(hub_snapshot[0], num_classes=-5)
    model = timm.create_model(HUB_MODEL, img_size=32)  # 1000 classes, like the file
    # was: timm dropped the file's trained head (1000 != -5) and left the model's random one, silently
    with pytest.raises(CheckpointError, match=rf"^{path}: its num_classes -5 contradicts head.weight"):
        load_pretrained(model, f"hf-hub:{HUB_ID}")


@pytest.mark.parametrize("zipfile", [True, False])
def test_a_cached_pytorch_model_bin_in_either_torch_format_still_loads(hub_snapshot, zipfile):
    snapshot, state = hub_snapshot
    (snapshot / "model.safetensors").unlink()  # a repo that ships only pytorch_model.bin
    torch.save(state, snapshot / "pytorch_model.bin", _use_new_zipfile_serialization=zipfile)
    # was (legacy format): "RuntimeError: mmap can only be used with files saved with ..." from the config check
    model, _, _ = create_model(HUB_MODEL, resolve_pretrained(f"hf-hub:{HUB_ID}", HUB_MODEL), **SMALL)
    assert torch.equal(model.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])


def test_a_cached_pytorch_model_bin_under_a_model_key_is_measured_inside_it(hub_snapshot, no_real_hostile_build):
    snapshot, state = hub_snapshot
    (snapshot / "model.safetensors").unlink()
    torch.save({"model": state, "epoch": torch.tensor(3)}, snapshot / "pytorch_model.bin")  # timm's filter unwraps
    model, _, _ = create_model(HUB_MODEL, resolve_pretrained(f"hf-hub:{HUB_ID}", HUB_MODEL), **SMALL)
    assert torch.equal(model.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])  # was: refused, "stores 1"
    config = _write_config(snapshot, model_args={"embed_dim": 10**6, "num_heads": 1})
    with pytest.raises(CheckpointError, match=rf"^{config}: its model_args .* stores 5,7"):
        create_model(HUB_MODEL, resolve_pretrained(f"hf-hub:{HUB_ID}", HUB_MODEL), **SMALL)


def test_a_hub_label_offset_counts_towards_the_classifier_rows(hub_snapshot):
    snapshot, state = hub_snapshot
    path = snapshot / "config.json"
    config = json.loads(path.read_text())
    config["num_classes"] = config["pretrained_cfg"]["num_classes"] = 999
    config["pretrained_cfg"]["label_offset"] = 1  # a background class first, as timm's 1001-row heads have
    path.write_text(json.dumps(config))
    model, _, _ = create_model(HUB_MODEL, resolve_pretrained(f"hf-hub:{HUB_ID}", HUB_MODEL), **SMALL)
    assert torch.equal(model.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])
    config["pretrained_cfg"]["label_offset"] = "1"
    path.write_text(json.dumps(config))
    # was: "TypeError: unsupported operand type(s) for +: 'int' and 'str'" from the check
    with pytest.raises(CheckpointError, match=r"its num_classes 999 \(label_offset '1'\) contradicts head.weight"):
        create_model(HUB_MODEL, resolve_pretrained(f"hf-hub:{HUB_ID}", HUB_MODEL), **SMALL)


def test_a_hub_config_naming_another_weights_file_is_the_file_hashed_and_checked(hub_snapshot):
    """pretrained_cfg.hf_hub_filename makes timm load that file; the recorded SHA-256 and the shape check read
    model.safetensors instead, so a run's base_weights described another file than the one it trained from."""
    from safetensors.torch import save_file

    from vitlab.checkpoint import file_sha256

    snapshot, state = hub_snapshot
    other = {k: torch.randn_like(v) for k, v in state.items()}
    save_file({k: v.contiguous() for k, v in other.items()}, str(snapshot / "other.safetensors"))
    cfg = json.loads((snapshot / "config.json").read_text())
    _write_config(snapshot, pretrained_cfg={**cfg["pretrained_cfg"], "hf_hub_filename": "other.safetensors"})
    weights = resolve_pretrained(f"hf-hub:{HUB_ID}", HUB_MODEL)
    assert weights.describe()["sha256"] == file_sha256(snapshot / "other.safetensors")
    model, _, _ = create_model(HUB_MODEL, weights)
    torch.testing.assert_close(model.state_dict()["blocks.0.attn.qkv.weight"], other["blocks.0.attn.qkv.weight"])


def test_weights_cached_under_their_hf_hub_filename_load_with_the_hub_unreachable(hub_snapshot, monkeypatch):
    """The unreachable-Hub check looked for model.safetensors only, so weights cached under the config's
    hf_hub_filename were refused as missing although timm reads them from the cache."""
    snapshot, state = hub_snapshot
    (snapshot / "model.safetensors").rename(snapshot / "other.safetensors")
    cfg = json.loads((snapshot / "config.json").read_text())
    _write_config(snapshot, pretrained_cfg={**cfg["pretrained_cfg"], "hf_hub_filename": "other.safetensors"})
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # refused at once: nothing leaves the machine
    model, _, _ = create_model(HUB_MODEL, resolve_pretrained(f"hf-hub:{HUB_ID}", HUB_MODEL))
    torch.testing.assert_close(model.state_dict()["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])
