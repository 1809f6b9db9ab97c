"""peft workflows on vitlab's peft methods (KAdaptation, lora_qv) as a peft user runs them: gradients of named
adapters, refused peft features, and vitlab's loaders given folders of the wrong kind."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import timm
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from vitlab.checkpoint import CheckpointError
from vitlab.errors import ConfigError
from vitlab.peft import (
    KAdaptationConfig,
    LoraQVConfig,
    apply_lokr,
    apply_lora,
    build_peft_transform,
    load_adapted_model,
    load_adapter,
    load_run_model,
)
from vitlab.peft.slice_tuner import AdapterShapeError, RowSliceLayer

CONFIGS = [
    ("kadaptation", lambda **kw: KAdaptationConfig(n=8, **kw)),
    ("lora_qv", lambda **kw: LoraQVConfig(r=2, **kw)),
]


def timm_vit(depth: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=depth,
                             num_heads=2, num_classes=5).eval()


def trainable(model: nn.Module) -> list[str]:
    return sorted(name for name, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize(("method", "config"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_set_requires_grad_switches_every_parameter_of_the_named_adapter(method, config):
    model = get_peft_model(timm_vit(), config(train_head=False))
    model.add_adapter("other", config(train_head=False, seed=1))
    before = trainable(model)
    assert before and all(".other" not in name for name in before)
    model.set_requires_grad("default", requires_grad=False)
    assert trainable(model) == []  # KAdaptation's shared A factors (on the tuner) were left trainable
    model.set_requires_grad(["default", "other"], requires_grad=True)
    both = trainable(model)
    assert set(before) < set(both) and any(".other" in name for name in both)
    model.set_requires_grad("other", requires_grad=False)
    assert trainable(model) == before


@pytest.mark.parametrize(("method", "config"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_add_weighted_adapter_is_refused_with_the_alternatives(method, config):
    model = get_peft_model(timm_vit(), config(train_head=False))
    model.add_adapter("other", config(train_head=False, seed=1))
    with pytest.raises(TypeError, match=r"does not support add_weighted_adapter.*set_adapter\(\['a', 'b'\]\)"
                                        r".*needs adapters made with train_head=False"):
        model.add_weighted_adapter(["default", "other"], [0.5, 0.5], "mix")
    assert sorted(model.peft_config) == ["default", "other"]
    # the alternative it names works for these head-less adapters, and is what peft refuses with trained heads
    model.base_model.set_adapter(["default", "other"])
    with_heads = get_peft_model(timm_vit(), config())
    with_heads.add_adapter("other", config(seed=1))
    with pytest.raises(ValueError, match="Only one adapter can be set at a time"):
        with_heads.base_model.set_adapter(["default", "other"])


@pytest.mark.parametrize(("text", "match"), [("{oops", r"vitlab.json is not valid JSON"),
                                             ("[1, 2]", r"vitlab.json holds a JSON list, not an object")])
def test_a_damaged_vitlab_json_is_a_checkpoint_error(tmp_path, text, match):
    model = get_peft_model(timm_vit(), LoraQVConfig(r=2))
    model.save_pretrained(str(tmp_path))
    (tmp_path / "vitlab.json").write_text(text)
    with pytest.raises(CheckpointError, match=match + r".*PeftModel.from_pretrained\(base, folder\)"):
        load_adapted_model(tmp_path)
    with pytest.raises(CheckpointError, match=match):
        load_run_model(tmp_path)  # a run's adapter/ folder goes to load_adapted_model


@pytest.mark.parametrize(("text", "match"), [
    ("{oops", r"adapter_config.json is not valid JSON"),
    ("[1]", r"adapter_config.json holds a JSON list, not an object"),
    ('{"peft_type": "NOPE"}', r"names peft_type 'NOPE', which is no peft method known here"),
    ('{"r": 2}', r"names peft_type None"),
])
def test_a_damaged_adapter_config_is_a_checkpoint_error_before_peft_reads_it(tmp_path, text, match):
    model = get_peft_model(timm_vit(), KAdaptationConfig(n=8))
    model.save_pretrained(str(tmp_path))
    (tmp_path / "vitlab.json").write_text('{"model_name": "vit_tiny_patch16_224", "base_weights": null}')
    (tmp_path / "adapter_config.json").write_text(text)
    with pytest.raises(CheckpointError, match=match):  # peft: JSONDecodeError, TypeError or KeyError('NOPE')
        load_adapted_model(tmp_path)


@pytest.mark.parametrize("target", ["adapter_model.safetensors", "adapter_config.json"])
def test_load_adapter_names_the_folder_for_a_file_inside_a_peft_folder(tmp_path, target):
    get_peft_model(timm_vit(), LoraConfig(r=2, target_modules=["qkv"])).save_pretrained(str(tmp_path))
    with pytest.raises(CheckpointError, match=r"one file of the peft adapter folder .*pass the folder, load_adapter"):
        load_adapter(tmp_path / target, timm_vit())


@pytest.mark.parametrize(("method", "options", "match"), [
    ("lora", {"r": 0}, r"r must be an int >= 1, got 0 \(int\)"),
    ("lora", {"r": "2"}, r"r must be an int >= 1, got '2' \(str\)"),  # was a TypeError inside peft
    ("lora", {"alpha": "x"}, r"alpha must be a finite number, got 'x' \(str\): leave it unset for alpha = r"),
    ("lora", {"alpha": 0}, "alpha must be non-zero .*never trains"),
    ("lora", {"dropout": 2.0}, r"dropout must be a finite number with 0.0 <= dropout < 1.0, got 2.0"),
    ("lora", {"train_head": "no"}, r"train_head must be True or False, got 'no' \(str\)"),  # was truthy: trained
    ("lora", {"head_modules": "head"}, r"write head_modules=\['head'\]"),
    ("lokr", {"r": 1.5}, r"r must be an int >= 1, got 1.5 \(float\)"),
    ("lokr", {"decompose_factor": "x"}, r"decompose_factor must be an int >= -1, got 'x' \(str\): -1 picks"),
    ("lokr", {"decompose_factor": 0}, r"decompose_factor must be -1 \(automatic\) or an int >= 1, got 0"),
    ("lokr", {"decompose_both": "yes"}, r"decompose_both must be True or False"),
    ("adapter", {"train_head": "no"}, r"train_head must be True or False, got 'no' \(str\)"),
])
def test_lora_lokr_and_adapter_options_are_refused_when_the_transform_is_built(method, options, match):
    with pytest.raises(ConfigError, match=match):
        build_peft_transform(method, **options)  # before any model exists (the harness checks a config early)


def test_lora_options_are_checked_in_the_python_api_and_peft_errors_keep_their_own_words():
    with pytest.raises(ConfigError, match=r"r must be an int >= 1, got '2'"):
        apply_lora(timm_vit(), r="2")
    with pytest.raises(ConfigError, match=r"target_modules must be None, a regex string"):
        apply_lokr(timm_vit(), target_modules=5)
    with pytest.raises(ValueError, match=r"No modules were targeted.*Candidate Linear modules: \['blocks.0.attn"):
        apply_lora(timm_vit(), target_modules=["nothing_here"])
    model = apply_lora(timm_vit(), target_modules={"qkv"}, r=np.int64(2), alpha=4)  # peft's own set form, NumPy ints
    assert model.peft_config["default"].r == 2 and type(model.peft_config["default"].r) is int
    assert model.peft_config["default"].lora_alpha == 4.0


def adapted_modules(model: nn.Module) -> list[str]:
    return sorted(name for name, module in model.get_base_model().named_modules() if isinstance(module, RowSliceLayer))


def hf_vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32, num_labels=5)
    return ViTForImageClassification(config).eval()


@pytest.mark.parametrize(("method", "config"), CONFIGS, ids=[c[0] for c in CONFIGS])
@pytest.mark.parametrize(("selection", "expected"), [
    ({"exclude_modules": ["blocks.0.attn.qkv"]}, ["blocks.1.attn.qkv"]),
    ({"exclude_modules": r"blocks\.1\..*"}, ["blocks.0.attn.qkv"]),
    ({"layers_to_transform": [1]}, ["blocks.1.attn.qkv"]),
    ({"layers_to_transform": 0, "layers_pattern": "blocks"}, ["blocks.0.attn.qkv"]),
])
def test_peft_target_selection_fields_are_applied_and_survive_save_and_load(tmp_path, method, config, selection,
                                                                          expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # peft's "no modules were excluded" must not fire
        model = get_peft_model(timm_vit(depth=2), config(**selection))
    assert adapted_modules(model) == expected  # they were ignored (or refused as unknown keywords) before
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05)
    model.save_pretrained(str(tmp_path))
    restored = PeftModel.from_pretrained(timm_vit(depth=2), str(tmp_path))
    assert adapted_modules(restored) == expected
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(restored(x), model(x), rtol=0, atol=1e-6)


def test_layers_to_transform_counts_transformers_layers_too():
    model = get_peft_model(hf_vit(), KAdaptationConfig(n=8, layers_to_transform=[1], train_head=False))
    assert adapted_modules(model) == ["vit.layers.1.attention.q_proj", "vit.layers.1.attention.v_proj"]


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"exclude_modules": 5}, ConfigError, "exclude_modules must be None, a regex string or a non-empty list"),
    ({"exclude_modules": "("}, ConfigError, r"exclude_modules '\(' is not a valid regular expression"),
    ({"layers_to_transform": [-1]}, ConfigError, r"layers_to_transform entry must be an int >= 0, got -1"),
    ({"layers_to_transform": []}, ConfigError, "layers_to_transform must be None, an int or a non-empty list"),
    ({"layers_to_transform": "1"}, ConfigError, r"layers_to_transform must be an int >= 0, got '1' \(str\)"),
    ({"layers_pattern": "blocks"}, ConfigError, "set layers_to_transform too"),
    ({"layers_to_transform": [0], "layers_pattern": 3}, ConfigError, "layers_pattern must be None, a name"),
])
def test_bad_target_selection_fields_are_refused_up_front(kwargs, error, match):
    with pytest.raises(error, match=match):
        KAdaptationConfig(**kwargs)


def test_a_selection_that_leaves_nothing_names_itself():
    with pytest.raises(ValueError, match=r"\{'layers_to_transform': \[5\]\} leave none of the targeted modules"):
        get_peft_model(timm_vit(), LoraQVConfig(r=2, layers_to_transform=[5]))


@pytest.mark.parametrize(("method", "config"), CONFIGS, ids=[c[0] for c in CONFIGS])
@pytest.mark.parametrize(("other", "names"), [
    ({"embed_dim": 96}, r"qkv\.(kadaptation|qvlora)_.*: saved \(.*\), this model \(.*\)"),
    ({"num_classes": 7}, r"head\.modules_to_save\.default\.weight: saved \(5, 64\), this model \(7, 64\)"),
])
def test_an_adapter_loaded_on_a_base_of_another_shape_names_the_mismatch(tmp_path, method, config, other, names):
    get_peft_model(timm_vit(), config()).save_pretrained(str(tmp_path))
    torch.manual_seed(0)
    options = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 1, "num_heads": 2, "num_classes": 5, **other}
    base = timm.create_model("vit_tiny_patch16_224", **options)
    with pytest.raises(AdapterShapeError, match=r"size mismatch: the adapter does not fit this base model .*" + names):
        PeftModel.from_pretrained(base, str(tmp_path))
    assert issubclass(AdapterShapeError, ValueError) and issubclass(AdapterShapeError, RuntimeError)


@pytest.mark.parametrize(("method", "config"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_adapted_models_run_on_the_meta_device(method, config):
    # shape inference / FLOP counting on the meta device: torch.is_autocast_enabled("meta") raised inside the layer
    model = get_peft_model(timm_vit(), config()).to("meta").train()
    out = model(torch.randn(2, 3, 32, 32, device="meta"))
    assert out.shape == (2, 5) and out.device.type == "meta"
    out.sum().backward()
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(("method", "config"), CONFIGS, ids=[c[0] for c in CONFIGS])
@pytest.mark.parametrize("recorder", ["export", "trace"])
def test_unmerged_adapters_survive_torch_export_and_jit_trace(method, config, recorder):
    # torch.export failed on the layers' custom autograd Functions (mm with out=, an in-place row update), and
    # jit.trace of lora_qv mixed up the second slice's columns (a traced shape, changed in place by +=)
    model = get_peft_model(timm_vit(), config())
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # away from the identity adapter
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
    model.eval()
    x, other = torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32)
    if recorder == "export":
        batch = torch.export.Dim("batch", min=1, max=64)
        recorded = torch.export.export(model.get_base_model(), (x,), dynamic_shapes=({0: batch},)).module()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            recorded = torch.jit.trace(model, x, strict=False)
    with torch.no_grad():
        for images in (x, other):
            assert torch.allclose(recorded(images), model(images), atol=1e-5)
