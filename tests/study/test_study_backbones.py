"""A study backbone may name its weights (timm / Hub / file) instead of a pretraining config."""

from __future__ import annotations

import pytest

from vitlab.study.config import load_study_config, study_config_from_dict
from vitlab.study.plan import finetune_specs
from vitlab.study.stages import _backbone_record, pretrain_backbones

RAW = {
    "name": "hub", "downstream": "digits",
    "backbones": {"vit": {"model": "vit_tiny_patch16_224", "pretrained": "timm", "img_size": 32}},
    "finetune": {"backbones": ["vit"], "methods": {"kadaptation": {}}, "negatives": {"none": None},
                 "shots": [5], "full_data": False, "seeds": [0], "steps": 2},
    "intrinsic_dim": {"backbones": []},
}


def test_given_weights_skip_pretraining_and_reach_every_run(offline_hub, tmp_path, capsys):
    config = study_config_from_dict({**RAW, "output_dir": str(tmp_path)})
    weights = pretrain_backbones(config)
    assert weights == {"vit": "timm"} and "no pretraining stage" in capsys.readouterr().out
    (spec,) = finetune_specs(config, weights)
    model = spec["config"]["model"]
    assert model["name"] == "vit_tiny_patch16_224" and model["pretrained"] == "timm"
    assert spec["config"]["data"]["img_size"] == 32 and spec["backbone_sha256"]  # the cached Hub file's hash
    record = _backbone_record("timm", config.backbones["vit"])
    assert record["weights"] == "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    assert record["pretrain_data"] == "augreg_in21k_ft_in1k" and record["parameters"] == 5_717_416


@pytest.mark.parametrize("backbone", [
    {"model": "vit_tiny_patch16_224"},
    {"pretrained": "timm"},
    {"pretrain": "configs/pretrain_vit_mnist.yaml", "model": "vit_tiny_patch16_224", "pretrained": "timm"},
])
def test_a_backbone_is_either_pretrained_here_or_given(backbone):
    with pytest.raises(ValueError, match="either `pretrain"):
        study_config_from_dict({**RAW, "backbones": {"vit": backbone}})


def test_the_shipped_hub_study_config_parses():
    config = load_study_config("configs/study_hub_vit_b16.yaml")
    spec = config.backbones["vit_b16"]
    assert spec.given_weights and spec.model == "vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert config.finetune.methods.keys() == {"full", "lora", "kadaptation"} and set(config.finetune.negatives) == {
        "none", "rotate_l2"}
