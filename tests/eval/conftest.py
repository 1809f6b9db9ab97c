"""Fixtures shared by the eval tests: scikit-learn's digits (offline) and a tiny untrained checkpoint for it."""

import pytest
import timm
import torch

from vitlab.checkpoint import save_checkpoint
from vitlab.data import build_datamodule

TINY_VIT = {"num_classes": 10, "in_chans": 1, "img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32,
            "num_heads": 2}


@pytest.fixture(scope="session")
def digits():
    """The digits datamodule at 32 px (test split set up)."""
    datamodule = build_datamodule("digits", img_size=32, batch_size=64)
    datamodule.setup("test")
    return datamodule


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, digits):
    """A run folder with a tiny untrained ViT (8-px patches) saved as `vitlab fit` saves models, digits data config."""
    torch.manual_seed(0)
    model = timm.create_model("vit_vitlab_tiny_patch4_32", **TINY_VIT)
    run = tmp_path_factory.mktemp("run")
    save_checkpoint(run, model.state_dict(), kind="model", model_name="vit_vitlab_tiny_patch4_32",
                    model_kwargs=TINY_VIT,
                    extra={"data": digits.data_config()})
    return run
