"""peft-study's --backbone takes every form of model.pretrained: a vitlab run, a plain file, timm, hf-hub."""

from __future__ import annotations

import pytest
import timm
from safetensors.torch import save_file

from vitlab.checkpoint import save_checkpoint
from vitlab.study.plan import backbone_model

from ..hub_cache import HUB_ID


def test_timm_and_hub_backbones_keep_the_loader_spec_and_the_weights_geometry(offline_hub):
    section, size = backbone_model("timm", "vit_tiny_patch16_224", {}, None)
    assert section == {"name": "vit_tiny_patch16_224", "kwargs": {}, "pretrained": "timm"} and size == 224
    section, size = backbone_model(f"hf-hub:{HUB_ID}", None, {}, 32)
    assert section["name"] == "vit_tiny_patch16_224" and section["pretrained"] == f"hf-hub:{HUB_ID}" and size == 32


def test_plain_file_backbone_needs_the_architecture_and_is_recorded_absolute(tmp_path, monkeypatch):
    path = tmp_path / "vit.safetensors"
    save_file(timm.create_model("vit_tiny_patch16_224", depth=1, img_size=32).state_dict(), str(path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="needs --model"):
        backbone_model("vit.safetensors", None, {}, None)
    section, size = backbone_model("vit.safetensors", "vit_tiny_patch16_224", {"depth": 1, "img_size": 32}, None)
    assert section == {"name": "vit_tiny_patch16_224", "kwargs": {"depth": 1}, "pretrained": str(path)}
    assert size == 32


def test_vitlab_run_backbone_reads_its_architecture(tmp_path):
    model = timm.create_model("vit_tiny_patch16_224", depth=1, img_size=32, num_classes=10)
    save_checkpoint(tmp_path / "run", model.state_dict(), kind="model", model_name="vit_tiny_patch16_224",
                    model_kwargs={"depth": 1, "img_size": 32, "num_classes": 10}, extra={"data": {"img_size": 32}})
    section, size = backbone_model(str(tmp_path / "run"), None, {}, None)
    assert section == {"name": "vit_tiny_patch16_224", "kwargs": {"depth": 1}, "pretrained": str(tmp_path / "run")}
    assert size == 32


def test_a_hub_backbone_with_a_model_of_another_architecture_is_refused(offline_hub):
    from vitlab.errors import ConfigError

    # --model was ignored: the runs silently trained the Hub's vit_tiny while the study said inception_transformer
    with pytest.raises(ConfigError, match="model.name is inception_transformer_tiny but the weights hf-hub:.* are a "
                                          "vit_tiny_patch16_224: set model.name to vit_tiny_patch16_224"):
        backbone_model(f"hf-hub:{HUB_ID}", "inception_transformer_tiny", {}, 32)
    section, _ = backbone_model(f"hf-hub:{HUB_ID}", "vit_tiny_patch16_224.augreg_in21k", {}, 32)  # its own: fine
    assert section["name"] == "vit_tiny_patch16_224"
