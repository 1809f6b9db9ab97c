"""A Hugging Face Hub cache built on disk in huggingface_hub's layout, so timm's real loader runs offline.

Test packages that need it import its fixtures in their conftest.py.
"""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

HUB_MODEL = "vit_tiny_patch16_224"
HUB_TAG = "augreg_in21k_ft_in1k"
HUB_ID = f"timm/{HUB_MODEL}.{HUB_TAG}"
REVISION = "0" * 40


def make_hub_cache(cache, model_name=HUB_MODEL, hub_id=HUB_ID, seed=0):
    """Write random weights of ``model_name`` as ``hub_id`` into ``cache``; returns the state dict written."""
    torch.manual_seed(seed)
    state = timm.create_model(model_name, pretrained=False).state_dict()
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    cfg = timm.models.get_pretrained_cfg(f"{model_name}.{hub_id.split('.', 1)[1]}").to_dict()
    (snapshot / "config.json").write_text(json.dumps({
        "architecture": model_name, "num_classes": cfg["num_classes"], "num_features": 192,
        "pretrained_cfg": {k: v for k, v in cfg.items() if k in ("input_size", "mean", "std", "classifier",
                                                                     "first_conv", "num_classes", "interpolation",
                                                                     "crop_pct", "tag")},
    }))
    return state


@pytest.fixture(scope="session")
def hub_state(tmp_path_factory):
    """(cache folder, state dict) of a session-wide offline Hub cache holding random vit_tiny weights."""
    cache = tmp_path_factory.mktemp("hub_cache")
    return cache, make_hub_cache(cache)


@pytest.fixture
def offline_hub(hub_state, monkeypatch):
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE at the test cache (huggingface_hub reads both at call time)."""
    cache, state = hub_state
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache, state
