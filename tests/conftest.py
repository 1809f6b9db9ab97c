"""Shared fixtures: CPU-only, seeded, tiny models; vitlab's data cache points into pytest's temp dir by default."""

from __future__ import annotations

import os

import pytest
import timm
import torch

import vitlab  # noqa: F401  (registers vitlab's timm models)

# Real datasets installed by `make test` live in VITLAB_DATA; remember it before tests redirect the cache.
REAL_DATA_DIR = os.environ.get("VITLAB_DATA", os.path.expanduser("~/.cache/vitlab"))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_vit():
    """A 2-block ViT for 32x32 single-channel inputs with 10 classes (~60k parameters)."""
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2, num_classes=10,
        in_chans=1,
    )


@pytest.fixture
def real_data_dir():
    """The folder where `make test` installed the real datasets (tests skip when a dataset is absent)."""
    return REAL_DATA_DIR
