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
def cuda_device() -> torch.device:
    """The GPU for the tests marked ``cuda`` (run on a GPU machine with ``pytest -m cuda``).

    ``VITLAB_TEST_CUDA_DEVICE=cpu pytest -m cuda`` runs the same test code on the CPU, to check the tests themselves
    where no GPU is present (CPU-vs-GPU comparisons then compare the CPU with itself).
    """
    device = torch.device(os.environ.get("VITLAB_TEST_CUDA_DEVICE", "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.fail("tests marked cuda need a CUDA GPU (torch.cuda.is_available() is False); they are deselected "
                    "by default, or set VITLAB_TEST_CUDA_DEVICE=cpu to check them on the CPU")
    return device


@pytest.fixture
def exact_float32():
    """float32 products and convolutions without TF32 (10-bit mantissa) on the GPU while a test runs, so that GPU
    and CPU results agree to ~1e-5; the flags are restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def real_data_dir():
    """The folder where `make test` installed the real datasets (tests skip when a dataset is absent)."""
    return REAL_DATA_DIR
