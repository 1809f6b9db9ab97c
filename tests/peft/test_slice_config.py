"""Bad values of the row-slice adapter configs are refused where they enter (issue 14's KAdaptation items)."""

from __future__ import annotations

import pytest

from vitlab.peft import KAdaptationConfig, LoraQVConfig


@pytest.mark.parametrize("kwargs, match", [
    ({"scale": float("nan")}, "scale must be a finite non-zero"),
    ({"scale": 0}, "scale must be a finite non-zero"),
    ({"delta_bias": "yes"}, "delta_bias and share_a must be true or false"),
    ({"seed": -1}, "seed must be None or an integer >= 0"),
    ({"seed": 1.5}, "seed must be None or an integer >= 0"),
    ({"fused_slices": ("q", "x")}, "fused_slices must be a non-empty subset"),
    ({"train_head": "no"}, "train_head must be true or false"),
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
