"""Bad values of the row-slice adapter configs are refused where they enter (issue 14's KAdaptation items)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vitlab.peft import KAdaptationConfig, LoraQVConfig


@pytest.mark.parametrize("kwargs, match", [
    ({"scale": float("nan")}, "scale must be a finite non-zero"),
    ({"scale": 0}, "scale must be a finite non-zero"),
    ({"delta_bias": "yes"}, r"delta_bias must be True or False, got 'yes' \(str\)"),
    ({"share_a": 1}, r"share_a must be True or False, got 1 \(int\)"),
    ({"inference_mode": "no"}, r"inference_mode must be True or False, got 'no' \(str\)"),
    ({"seed": -1}, r"seed must be an int in 0..2\*\*63 - 1, got -1 \(int\): .*or None for the global RNG"),
    ({"seed": 1.5}, r"seed must be an int in 0..2\*\*63 - 1, got 1.5 \(float\)"),
    ({"fused_slices": ("q", "x")}, "fused_slices must be a non-empty subset"),
    ({"train_head": "no"}, r"train_head must be True or False, got 'no' \(str\)"),
])
def test_kadaptation_refuses_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KAdaptationConfig(**kwargs)


def test_shared_fields_are_normalised_the_same_way():
    for cls in (KAdaptationConfig, LoraQVConfig):
        config = cls(fused_slices=["q", "v"], target_modules=("qkv",), modules_to_save=("head",), seed=None)
        assert config.fused_slices == ("q", "v") and config.target_modules == ["qkv"]
        assert config.modules_to_save == ["head"] and config.seed is None
    with pytest.raises(ValueError, match="seed must be"):
        LoraQVConfig(seed=True)


# issue 13's audit: every field is checked at construction, before peft touches a model
@pytest.mark.parametrize("kwargs, match", [
    ({"target_modules": "blocks.(qkv"}, r"target_modules 'blocks.\(qkv' is not a valid regular expression"),
    ({"target_modules": 5}, "target_modules must be None, a regex string, a preset name or a non-empty list"),
    ({"target_modules": {"qkv": 1}}, "target_modules must be None, a regex string"),
    ({"target_modules": ["qkv", 3]}, "target_modules must be None, a regex string"),
    ({"target_modules": []}, "target_modules must be None, a regex string"),
    ({"n": True}, r"n must be an int >= 1, got True \(bool\)"),
    ({"n": 8.0}, r"n must be an int >= 1, got 8.0 \(float\)"),
    ({"n": "8"}, r"n must be an int >= 1, got '8' \(str\)"),
    ({"rank": False}, r"rank must be an int >= 1, got False \(bool\)"),
    ({"a_rank": True}, r"a_rank must be an int in 1..32, got True \(bool\): .*None keeps each A_i a full n x n"),
    ({"n": 8, "a_rank": 9}, r"a_rank must be an int in 1..8, got 9 \(int\): a_rank <= n=8"),
    ({"auto_top_k": True}, "auto_top_k must be an int >= 1"),
    ({"fused_slices": "qv"}, r"fused_slices must be a non-empty subset of \('q', 'k', 'v'\) given as a list"),
    ({"fused_slices": ()}, "fused_slices must be a non-empty subset"),
    ({"fused_slices": ("q", "q")}, "fused_slices must be a non-empty subset"),
    ({"fused_slices": None}, "fused_slices must be a non-empty subset"),
    ({"modules_to_save": "head"}, r"got the string 'head': write modules_to_save=\['head'\]"),
    ({"modules_to_save": {"head": 1}}, "modules_to_save must be None or a non-empty list of module names"),
    ({"modules_to_save": ["head", None]}, "modules_to_save must be None or a non-empty list"),
    ({"dropout": "0.3"}, r"dropout must be a finite number with 0.0 <= dropout < 1.0, got '0.3' \(str\)"),
    ({"dropout": None}, r"dropout must be a finite number with 0.0 <= dropout < 1.0"),
    ({"dropout": True}, r"dropout must be a finite number with 0.0 <= dropout < 1.0"),
    ({"dropout": 1.0}, r"dropout must be a finite number .*got 1.0 \(float\): 0 switches it off"),
    ({"seed": 2**63}, r"seed must be an int in 0..2\*\*63 - 1, got 9223372036854775808"),
    ({"seed": "1"}, "seed must be an int in 0..2"),
    ({"intrinsic_table": 3, "target_modules": "auto"}, "intrinsic_table must be the path of a CSV file, got 3"),
])
def test_kadaptation_config_validates_every_field_up_front(kwargs, match):
    from vitlab.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        KAdaptationConfig(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"r": True}, r"r must be an int >= 1, got True \(bool\)"),
    ({"r": 2.0}, r"r must be an int >= 1, got 2.0 \(float\)"),
    ({"alpha": 0}, "alpha must be a finite non-zero number .* alpha = 0 never trains"),
    ({"alpha": 0.0}, "alpha must be a finite non-zero number"),
    ({"alpha": float("inf")}, "alpha must be a finite non-zero number"),
    ({"alpha": float("nan")}, "alpha must be a finite non-zero number"),
    ({"alpha": "8"}, "alpha must be a finite non-zero number"),
    ({"alpha": True}, "alpha must be a finite non-zero number"),
    ({"dropout": "0.1"}, r"dropout must be a finite number with 0.0 <= dropout < 1.0"),
    ({"target_modules": "auto"}, "target_modules='auto' is KAdaptation's"),
    ({"target_modules": "(qkv"}, "is not a valid regular expression"),
    ({"fused_slices": ("v", "x")}, "fused_slices must be a non-empty subset"),
    ({"modules_to_save": "head"}, r"write modules_to_save=\['head'\]"),
    ({"seed": 2**64}, "seed must be an int in 0..2"),
    ({"train_head": 0}, r"train_head must be True or False, got 0 \(int\)"),
])
def test_lora_qv_config_validates_every_field_up_front(kwargs, match):
    from vitlab.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        LoraQVConfig(**kwargs)


def test_valid_values_still_pass_and_are_normalised(tmp_path):
    config = KAdaptationConfig(target_modules="auto", intrinsic_table=tmp_path / "d90.csv", dropout=0, seed=2**63 - 1)
    assert config.intrinsic_table == str(tmp_path / "d90.csv") and isinstance(config.intrinsic_table, str)
    assert config.dropout == 0.0 and isinstance(config.dropout, float)
    assert KAdaptationConfig(target_modules="attn_mlp").target_modules == "attn_mlp"  # a preset, not a regex
    assert LoraQVConfig(r=2, alpha=-2).alpha == -2.0  # a negative alpha trains (the sign of B flips); only 0 cannot
    # NumPy integers (from a sweep grid) become plain ints: adapter_config.json must be able to hold them
    numpy_config = KAdaptationConfig(n=np.int64(8), rank=np.int32(2), a_rank=np.int64(1), seed=np.int64(3))
    assert [type(v) for v in (numpy_config.n, numpy_config.rank, numpy_config.a_rank, numpy_config.seed)] == [int] * 4
    assert json.loads(json.dumps(numpy_config.to_dict(), default=str))["n"] == 8
    assert type(LoraQVConfig(r=np.int64(4)).r) is int
    # a set, as peft's own LoraConfig keeps target_modules, is a list of names (sorted: adapter_config.json is JSON)
    assert KAdaptationConfig(target_modules={"qkv", "blocks.0.attn.qkv"}).target_modules == ["blocks.0.attn.qkv", "qkv"]
    with pytest.raises(ValueError, match="target_modules must be None, a regex string"):
        LoraQVConfig(target_modules={"qkv", 3})
    assert LoraQVConfig(r=2).alpha == 2.0


def test_fused_slices_is_refused_on_separate_projections():
    """transformers' ViT has separate q/k/v Linears: fused_slices=('k',) used to be ignored silently (Q, V adapted)."""
    from peft import get_peft_model

    from tests.peft.test_kadaptation import hf_vit, timm_vit

    for config in (KAdaptationConfig(n=8, fused_slices=("k",)), LoraQVConfig(r=2, fused_slices=("q", "k", "v"))):
        with pytest.raises(ValueError, match=r"fused_slices=\(.*\) applies only to a fused `qkv` Linear.*set "
                                             r"target_modules to the projections to adapt instead"):
            get_peft_model(hf_vit(), config)
    model = get_peft_model(hf_vit(), KAdaptationConfig(n=8, target_modules=["k_proj"]))  # what the message says
    assert {n.split(".kadaptation_u")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters()
            if "kadaptation_u" in n} == {"k_proj"}
    get_peft_model(hf_vit(), KAdaptationConfig(n=8, fused_slices=("v", "q")))  # the default set, any order
    model = get_peft_model(timm_vit(), KAdaptationConfig(n=8, fused_slices=("k",)))  # fused qkv: the K rows
    assert model.base_model.model.blocks[0].attn.qkv.slice_rows == {"default": {"k": (64, 128)}}


def test_model_status_names_the_peft_type_and_save_load_keeps_it(tmp_path):
    """peft's get_model_status reads str(peft_type).partition('.')[-1]: a plain str gave '' (LoRA gives 'LORA')."""
    import json

    from peft import PeftModel, get_peft_model

    from tests.peft.test_kadaptation import timm_vit

    for config, name in ((KAdaptationConfig(n=8), "KADAPTATION"), (LoraQVConfig(r=2), "LORA_QV")):
        model = get_peft_model(timm_vit(), config)
        assert model.get_model_status().peft_types == {"default": name}
        model.save_pretrained(tmp_path / name)
        assert json.loads((tmp_path / name / "adapter_config.json").read_text())["peft_type"] == name
        restored = PeftModel.from_pretrained(timm_vit(), tmp_path / name)
        assert restored.get_model_status().peft_types == {"default": name}
        assert restored.peft_config["default"].peft_type == name and restored.peft_config["default"].peft_type.value \
            == name


def test_harness_refuses_bad_lora_qv_options_when_built_and_string_head_modules():
    """build_peft_transform validates lora_qv's values before any model exists (as kadaptation's), and a bare string
    head_modules is refused instead of being split into characters."""
    from vitlab.errors import ConfigError
    from vitlab.peft import build_peft_transform

    for options, match in [({"alpha": 0}, "alpha must be a finite non-zero number"),
                           ({"fused_slices": "qv"}, "fused_slices must be a non-empty subset"),
                           ({"head_modules": "head"}, r"write head_modules=\['head'\]")]:
        with pytest.raises(ConfigError, match=match):
            build_peft_transform("lora_qv", None, **options)  # no model passed: refused at build time
    from tests.peft.test_kadaptation import timm_vit

    for method in ("lora", "linear"):
        with pytest.raises(ValueError, match=r"write head_modules=\['head'\]"):
            build_peft_transform(method, None, head_modules="head")(timm_vit())
