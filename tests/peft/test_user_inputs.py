"""What peft users do wrong with vitlab's adapters: each call below once failed deep inside peft / safetensors or
with a message naming the wrong fix; now it is refused with a message that names the fix."""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import pytest
import timm
import torch
from peft import PeftModel
from torch import nn

from vitlab.checkpoint import CheckpointError
from vitlab.errors import ConfigError
from vitlab.peft import (
    KAdaptationConfig,
    adapter_layers,
    apply_kadaptation,
    build_peft_transform,
    load_adapter,
    save_adapter,
)

KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 4}


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", **KWARGS).eval()


@pytest.fixture
def adapter_folder(tmp_path: Path) -> Path:
    """A KAdaptation adapter folder written by ``save_adapter`` (its factors moved off their initial values)."""
    model = apply_kadaptation(tiny_vit(), KAdaptationConfig(n=8))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    return save_adapter(tmp_path / "adapter", model)


def _copy_without(folder: Path, tmp_path: Path, name: str) -> Path:
    damaged = tmp_path / f"without_{name}"
    shutil.copytree(folder, damaged)
    (damaged / name).unlink()
    return damaged


def test_folder_without_weights_is_refused_naming_the_file(adapter_folder: Path, tmp_path: Path) -> None:
    damaged = _copy_without(adapter_folder, tmp_path, "adapter_model.safetensors")  # was a repo-id error
    with pytest.raises(CheckpointError, match=r"no adapter_model\.safetensors.*save the adapter again"):
        load_adapter(damaged, tiny_vit())


def test_folder_without_config_is_refused_naming_the_file(adapter_folder: Path, tmp_path: Path) -> None:
    damaged = _copy_without(adapter_folder, tmp_path, "adapter_config.json")  # was "no weights at model.safetensors"
    with pytest.raises(CheckpointError, match=r"without adapter_config\.json"):
        load_adapter(damaged, tiny_vit())


def test_a_folder_with_no_adapter_is_refused_naming_what_to_pass(tmp_path: Path) -> None:
    empty = tmp_path / "empty"  # was read_metadata's "pass a model.safetensors file or a run folder"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"no adapter in .*empty: pass a peft adapter folder \(adapter_config"):
        load_adapter(empty, tiny_vit())


def test_a_run_folder_holding_an_adapter_file_loads_from_the_folder(tmp_path: Path) -> None:
    adapted = build_peft_transform("adapter")(tiny_vit())
    with torch.no_grad():
        for p in adapted.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    save_adapter(tmp_path / "run" / "adapter.safetensors", adapted)
    loaded = load_adapter(tmp_path / "run", tiny_vit())  # the folder, as for a run's model.safetensors
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), adapted.eval()(x))


def test_corrupt_adapter_weights_are_refused_naming_the_file(adapter_folder: Path) -> None:
    (adapter_folder / "adapter_model.safetensors").write_bytes(b"garbage")  # was safetensors' SafetensorError
    with pytest.raises(CheckpointError, match=r"adapter_model\.safetensors is not a readable safetensors file"):
        load_adapter(adapter_folder, tiny_vit())


def test_loading_onto_an_adapted_model_is_refused(adapter_folder: Path) -> None:
    adapted = load_adapter(adapter_folder, tiny_vit())
    assert isinstance(adapted, PeftModel)
    with pytest.raises(ValueError, match=r"already carries peft adapters.*load_adapter\(folder, adapter_name="):
        load_adapter(adapter_folder, adapted)  # was KeyError "attribute 'kadaptation_A' already exists"
    with pytest.raises(ValueError, match="already carries peft adapters"):
        load_adapter(adapter_folder, adapted.get_base_model())  # the inner model still holds adapter layers


@pytest.mark.parametrize("method", ["kadaptation", "lora_qv"])
def test_mixed_adapter_batch_is_refused_not_silently_ignored(method: str) -> None:
    from vitlab.peft import build_peft_transform

    options = {"n": 8} if method == "kadaptation" else {"r": 2}
    model = build_peft_transform(method, **options)(tiny_vit())
    x = torch.randn(2, 3, 32, 32)
    # peft dropped adapter_names and ran every sample through the active adapter (a silently wrong mixed batch)
    with pytest.raises(ValueError, match=r"does not support adapter_names=.*set_adapter"):
        model(x, adapter_names=["default", "__base__"])
    assert torch.equal(model(x), model(x, adapter_names=None))  # the plain call is unchanged


@pytest.mark.parametrize("bottleneck", [True, 0, 4.0, "4"])
def test_bottleneck_adapter_width_must_be_an_int(bottleneck: object) -> None:
    from vitlab.peft import apply_bottleneck_adapters, build_peft_transform

    # True was taken as an int and failed inside torch.empty with a TypeError
    with pytest.raises(ValueError, match=r"bottleneck must be an int >= 1.*hidden width"):
        build_peft_transform("adapter", bottleneck=bottleneck)(tiny_vit())
    with pytest.raises(ValueError, match=r"bottleneck must be an int >= 1"):
        apply_bottleneck_adapters(tiny_vit(), bottleneck=bottleneck)


def test_kadaptation_rank_larger_than_its_factor_is_refused() -> None:
    # n=8 on width 32: B_i is 4 x 4, so rank 5 only added parameters (the count of a PEFT study grew, the update not)
    with pytest.raises(ValueError, match=r"rank=5 exceeds the size of B_i.*4 x 4.*rank <= 4"):
        apply_kadaptation(tiny_vit(), KAdaptationConfig(n=8, rank=5))
    full = apply_kadaptation(tiny_vit(), KAdaptationConfig(n=8, rank=4, train_head=False))
    # shared A (2 roles x a_i, c_i of n x n) + per layer (2 slices x u_i, v_i of n x 4 x 4, one bias of 32)
    assert full.get_nb_trainable_parameters()[0] == 2 * 2 * 8 * 8 + 2 * (2 * 2 * 8 * 4 * 4 + 32)


def test_lora_qv_rank_larger_than_the_layer_is_refused() -> None:
    from vitlab.peft import apply_lora_qv

    with pytest.raises(ValueError, match=r"r=33 exceeds the adapted block .*32 x 32.*r <= 32"):
        apply_lora_qv(tiny_vit(), r=33)
    assert apply_lora_qv(tiny_vit(), r=32, train_head=False).get_nb_trainable_parameters()[0] == 2 * 2 * 2 * 32 * 32


def _tiny_transformers_vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                       patch_size=8, num_labels=3)
    return ViTForImageClassification(config).eval()


def test_seq_cls_task_type_of_a_transformers_vit_trains_its_classifier() -> None:
    from peft import get_peft_model

    # peft appends ["classifier", "score"] to modules_to_save before building the tuner for SEQ_CLS; the missing
    # "score" was refused as "head_modules ['score'] are not modules" (an option the user never set)
    plain = get_peft_model(_tiny_transformers_vit(), KAdaptationConfig(n=8))
    model = get_peft_model(_tiny_transformers_vit(), KAdaptationConfig(n=8, task_type="SEQ_CLS"))
    assert model.peft_config["default"].modules_to_save == ["classifier"]
    assert model.get_nb_trainable_parameters() == plain.get_nb_trainable_parameters()
    assert model.base_model.model.classifier.modules_to_save["default"].weight.requires_grad


def test_task_type_keeps_checking_the_users_own_modules_to_save() -> None:
    with pytest.raises(ValueError, match=r"\['haed'\] are not modules"):
        apply_kadaptation(tiny_vit(), KAdaptationConfig(n=8, task_type="SEQ_CLS", modules_to_save=["haed"]))


def test_modules_to_save_typo_is_refused_naming_modules_to_save() -> None:
    # the message named head_modules, an option of build_peft_transform that the config has not
    with pytest.raises(ValueError, match=r"^modules_to_save \['haed'\] are not modules of VisionTransformer.*'head'"):
        apply_kadaptation(tiny_vit(), KAdaptationConfig(n=8, modules_to_save=["haed"]))


@pytest.mark.parametrize(("method", "options", "adaptation"), [
    ("linear", {"head_modules": ["2"]}, 0),
    ("lora", {"r": 2, "head_modules": ["2"]}, 2 * 16 + 32 * 2),  # A (2 x 16), B (32 x 2) on Linear(16, 32)
    ("adapter", {"bottleneck": 2, "head_modules": ["2"]}, 2 * 32 + (32 * 2 + 2) + (2 * 32 + 32)),  # norm, down, up
    ("kadaptation", {"n": 8, "modules_to_save": ["2"]}, 2 * 8 * 8 + 8 * 4 + 8 * 2 + 32),  # A; u, v (32/8, 16/8); bias
])
def test_count_parameters_finds_the_head_a_plain_sequential_was_given(method: str, options: dict,
                                                                      adaptation: int) -> None:
    from vitlab.peft import build_peft_transform, count_parameters

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    adapted = build_peft_transform(method, None if method == "linear" else ["0"], **options)(model)
    counts = count_parameters(adapted)
    # the head (32 * 4 + 4) was counted as adaptation: a plain Sequential has no get_classifier() / `head`
    assert (counts["head"], counts["adaptation"]) == (32 * 4 + 4, adaptation)
    assert counts["trainable"] == counts["head"] + counts["adaptation"]


@pytest.mark.parametrize("call", ["merge_adapters", "unmerge_adapters", "disable_adapter", "adapter_layers"])
def test_control_functions_refuse_what_is_not_a_model(call: str) -> None:
    import vitlab.peft

    function = getattr(vitlab.peft, call)
    with pytest.raises(TypeError, match=r"expected an adapted nn\.Module.*got str"):  # was AttributeError named_modules
        result = function("runs/my_run")
        if call == "disable_adapter":
            result.__enter__()


def test_merge_adapters_refuses_a_string_flag() -> None:
    from vitlab.peft import merge_adapters

    model = apply_kadaptation(tiny_vit(), KAdaptationConfig(n=8))
    with pytest.raises(ValueError, match="unload must be True or False, got 'False'"):  # "False" was truthy: unloaded
        merge_adapters(model, unload="False")
    assert isinstance(model, PeftModel) and not any(layer.merged for _, layer in adapter_layers(model))


@pytest.mark.parametrize("apply", ["apply_kadaptation", "apply_lora", "apply_lokr", "apply_lora_qv"])
def test_apply_functions_refuse_what_is_not_a_model(apply: str) -> None:
    import vitlab.peft

    with pytest.raises(TypeError, match=r"model must be the nn\.Module to adapt.*got str"):  # was AttributeError
        getattr(vitlab.peft, apply)("vit_tiny_patch16_224")


@pytest.mark.parametrize("apply", ["apply_kadaptation", "apply_lora_qv"])
def test_adapting_an_adapted_model_again_is_refused_naming_add_adapter(apply: str) -> None:
    import vitlab.peft

    function = getattr(vitlab.peft, apply)
    model = function(tiny_vit())
    with pytest.raises(ValueError, match=r"already carries peft adapter layers.*add_adapter"):
        function(model)  # KAdaptation: KeyError "attribute 'kadaptation_A' already exists"
    with pytest.raises(ValueError, match=r"already carries peft adapter layers.*add_adapter"):
        function(model.get_base_model())  # silently replaced the trained 'default' adapter of the inner model


def test_get_peft_model_on_the_inner_model_does_not_overwrite_its_adapter() -> None:
    from peft import get_peft_model

    model = apply_kadaptation(tiny_vit(), KAdaptationConfig(n=8))
    layer = model.base_model.model.blocks[0].attn.qkv
    trained = layer.kadaptation_v["default"]["q"]
    with pytest.raises(ValueError, match=r"already has an adapter named 'default'.*add_adapter"):
        get_peft_model(model.get_base_model(), KAdaptationConfig(n=8, seed=1))
    assert layer.kadaptation_v["default"]["q"] is trained


@pytest.mark.parametrize(("name", "error"), [(3, TypeError), ("", ValueError), ("a.b", ValueError)])
def test_apply_kadaptation_checks_the_adapter_name(name: object, error: type) -> None:
    with pytest.raises(error, match="adapter_name must be"):  # was TypeError 'in <string>' / KeyError from torch
        apply_kadaptation(tiny_vit(), KAdaptationConfig(n=8), adapter_name=name)


@pytest.mark.parametrize("targets", [5, [], ["blocks.0.mlp", 3]])
def test_bottleneck_adapter_targets_are_checked_when_the_transform_is_built(targets: object) -> None:
    from vitlab.peft import build_peft_transform

    with pytest.raises(ValueError, match=r"target_modules must be None, a regex string"):  # 5: TypeError not iterable
        build_peft_transform("adapter", targets, bottleneck=4)


@pytest.mark.parametrize("call", ["export_adapted_model", "adapter_state_dict", "get_peft_spec",
                                  "apply_bottleneck_adapters"])
def test_functions_of_an_adapted_model_refuse_a_path(call: str, tmp_path: Path) -> None:
    import vitlab.peft

    function = getattr(vitlab.peft, call)
    args = (tmp_path, "runs/my_run") if call == "export_adapted_model" else ("runs/my_run",)
    kwargs = {"model_name": "vit_tiny_patch16_224", "model_kwargs": {}} if call == "export_adapted_model" else {}
    with pytest.raises(TypeError, match=r"nn\.Module.*got str"):  # was AttributeError: 'str' has no '__dict__'
        function(*args, **kwargs)


@pytest.mark.parametrize("method", ["linear", "full"])
def test_merging_a_linear_probe_returns_the_plain_model(method: str) -> None:
    from vitlab.peft import build_peft_transform, get_peft_spec, merge_adapters

    model = build_peft_transform(method)(tiny_vit())
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    # was refused: "has no vitlab or peft adapter layers ... build it with build_peft_transform" (it was built so)
    assert merge_adapters(model, unload=False) is model and get_peft_spec(model)["method"] == method
    merged = merge_adapters(model)
    assert merged is model and torch.equal(merged(x), before)
    with pytest.raises(ValueError, match="not adapted by vitlab.peft"):  # a plain model now, as after an unload
        get_peft_spec(merged)


def test_tilde_paths_mean_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vitlab.peft import build_peft_transform, convert_adapter, export_adapted_model, load_run_model

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    model = build_peft_transform("kadaptation", n=8)(tiny_vit())
    x = torch.randn(2, 3, 32, 32)
    # a peft folder was written to ./~/adapter and not found again under ~
    assert save_adapter("~/adapter", model) == home / "adapter"
    assert torch.equal(load_adapter("~/adapter", tiny_vit())(x), model(x))
    export_adapted_model("~/run", model, model_name="vit_tiny_patch16_224", model_kwargs=KWARGS)
    assert (home / "run" / "model.safetensors").is_file()
    assert torch.allclose(load_run_model("~/run")[0](x), model.eval()(x), atol=1e-6)
    assert not (tmp_path / "~").exists()
    with pytest.raises(FileNotFoundError, match=str(home / "old.safetensors")):  # the message named ./~/old...
        convert_adapter("~/old.safetensors", "~/converted")
    with pytest.raises(TypeError, match="path must be a path"):  # was os.fspath's TypeError
        convert_adapter(3, "~/converted")


@pytest.mark.parametrize("method", ["kadaptation", "lora_qv"])
def test_one_config_adapts_a_timm_and_a_transformers_vit(method: str) -> None:
    from peft import get_peft_model

    from vitlab.peft import LoraQVConfig

    config = LoraQVConfig(r=2) if method == "lora_qv" else KAdaptationConfig(n=8)
    timm_model = get_peft_model(tiny_vit(), config)
    # the head found on the timm model (['head']) stayed in the config and was refused on the transformers ViT
    hf_model = get_peft_model(_tiny_transformers_vit(), config)
    assert hf_model.peft_config["default"].modules_to_save == ["classifier"]
    assert timm_model.base_model.model.head.modules_to_save["default"].weight.requires_grad
    assert hf_model.base_model.model.classifier.modules_to_save["default"].weight.requires_grad
    with pytest.raises(ValueError, match=r"modules_to_save \['head'\] are not modules"):  # a name the user gave
        get_peft_model(_tiny_transformers_vit(), KAdaptationConfig(n=8, modules_to_save=["head"]))


@pytest.mark.parametrize("names", [["defualt"], "default"])
def test_merging_an_unknown_adapter_name_is_refused(names: object) -> None:
    model = apply_kadaptation(tiny_vit(), KAdaptationConfig(n=8))
    with torch.no_grad():
        model.base_model.model.blocks[0].attn.qkv.kadaptation_u["default"]["q"].add_(0.5)
    x = torch.randn(2, 3, 32, 32)
    adapted = model(x)
    # peft skipped the unknown name: merge_and_unload returned the base model with the trained adapter dropped
    with pytest.raises((ValueError, TypeError), match="adapter_names"):
        model.merge_and_unload(adapter_names=names)
    with pytest.raises((ValueError, TypeError), match="adapter_names"):
        model.merge_adapter(adapter_names=names)
    assert torch.equal(model(x), adapted)  # nothing merged or unloaded
    assert torch.allclose(model.merge_and_unload(adapter_names=["default"])(x), adapted, atol=1e-5)


@pytest.mark.parametrize(("keyword", "new"), [("bias", "delta_bias"), ("head_modules", "modules_to_save")])
def test_vitlab_01_keywords_of_the_config_name_their_new_spelling(keyword: str, new: str) -> None:
    """KAdaptationConfig(bias=True) raised Python's 'unexpected keyword argument' (the CLI option named the rename)."""
    with pytest.raises(ConfigError, match=rf"\['{keyword}'\] are no longer accepted: '{keyword}' is now '{new}'"):
        KAdaptationConfig(**{keyword: True})
    assert KAdaptationConfig(delta_bias=False).delta_bias is False  # the new spelling, and the signature, unchanged
    assert "delta_bias" in inspect.signature(KAdaptationConfig).parameters
