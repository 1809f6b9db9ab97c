"""peft workflows on vitlab's peft methods (KAdaptation, lora_qv) as a peft user runs them: gradients of named
adapters, refused peft features, and vitlab's loaders given folders of the wrong kind."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from peft import LoraConfig, get_peft_model
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

CONFIGS = [
    ("kadaptation", lambda **kw: KAdaptationConfig(n=8, **kw)),
    ("lora_qv", lambda **kw: LoraQVConfig(r=2, **kw)),
]


def timm_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=2,
                             num_classes=5).eval()


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
    with pytest.raises(TypeError, match=r"does not support add_weighted_adapter.*set_adapter\(\['a', 'b'\]\)"):
        model.add_weighted_adapter(["default", "other"], [0.5, 0.5], "mix")
    assert sorted(model.peft_config) == ["default", "other"]


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


@pytest.mark.parametrize("target", ["", "adapter_model.safetensors", "adapter_config.json"])
def test_vitlabs_adapter_file_loader_names_peft_for_a_peft_folder(tmp_path, target):
    get_peft_model(timm_vit(), LoraConfig(r=2, target_modules=["qkv"])).save_pretrained(str(tmp_path))
    with pytest.raises(CheckpointError, match=r"is a peft adapter folder.*PeftModel.from_pretrained\(base, folder\)"):
        load_adapter(tmp_path / target if target else tmp_path, timm_vit())


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
