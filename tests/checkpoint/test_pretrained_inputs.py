"""Weights sources users write by mistake or in timm's own spelling (no network: the Hub is never reached)."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from vitlab.checkpoint import (
    CheckpointError,
    PretrainedWeights,
    create_model,
    load_pretrained,
    read_weights_file,
    resolve_pretrained,
)
from vitlab.errors import ConfigError

NAME = "vit_tiny_patch16_224"
SMALL = dict(depth=1, img_size=32)


@pytest.mark.parametrize("url", ["https://example.com/w.pth", "http://host/vit.safetensors", "s3://bucket/w.pt"])
def test_url_is_refused_naming_download_and_hub(url):
    with pytest.raises(ConfigError, match="is a URL, which vitlab does not download.*hf-hub:ORG/NAME"):
        resolve_pretrained(url, NAME)


def test_local_dir_prefix_is_the_folder(tmp_path):
    state = timm.create_model(NAME, num_classes=10, **SMALL).state_dict()
    save_file(state, str(tmp_path / "model.safetensors"))
    weights = resolve_pretrained(f"local-dir:{tmp_path}", NAME)
    assert weights.source == "file" and weights.location == str(tmp_path / "model.safetensors")
    model = load_pretrained(timm.create_model(NAME, num_classes=10, **SMALL), f"local-dir:{tmp_path}")
    assert torch.equal(model.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])


def test_timm_in_capitals_is_timm():
    assert resolve_pretrained(" TIMM ", NAME).source == "timm"


def test_empty_state_dict_is_refused_not_looked_up_on_the_hub(tmp_path):
    torch.save({}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="holds no tensors"):
        read_weights_file(tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="holds no tensors"):
        load_pretrained(timm.create_model(NAME, **SMALL), tmp_path / "empty.pth")


def test_read_weights_file_of_wrong_type():
    with pytest.raises(TypeError, match="str or pathlib.Path"):
        read_weights_file(3)


def test_create_model_takes_a_path_as_weights(tmp_path):
    state = timm.create_model(NAME, num_classes=10, **SMALL).state_dict()
    torch.save(state, tmp_path / "w.pth")
    model, architecture, _ = create_model(NAME, str(tmp_path / "w.pth"), num_classes=10, **SMALL)
    assert architecture == NAME and torch.equal(model.head.weight, state["head.weight"])
    assert isinstance(resolve_pretrained(tmp_path / "w.pth", NAME), PretrainedWeights)
