"""Shared by the Inception Transformer tests: one intra-op thread and a small model factory."""

from __future__ import annotations

import pytest
import torch

from vitlab.models.inception_transformer import InceptionTransformer


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one intra-op thread avoids OpenMP barrier stalls on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_model(**kwargs) -> InceptionTransformer:
    """A 4-block iFormer for 32-px inputs with 5 classes; ``kwargs`` override the defaults."""
    args = dict(
        depths=(1, 1, 1, 1), embed_dims=(32, 64, 96, 128), num_heads=(2, 4, 6, 8), attention_heads=(1, 2, 3, 4),
        num_classes=5, img_size=32,
    )
    return InceptionTransformer(**dict(args, **kwargs))
