"""FLOP counting as the iFormer (and most timm-era) papers report it: fvcore, 1 multiply-add = 1 FLOP.

fvcore has no handler for ``aten::scaled_dot_product_attention`` and would silently count attention as zero; this
module registers one that counts the two matmuls the explicit form performs (``q @ k^T`` and ``attn @ v``), so SDPA
models count the same as their explicit-attention originals. fvcore is an optional (dev) dependency.

Example:
    >>> import timm, vitlab
    >>> from vitlab.models.flops import count_flops
    >>> model = timm.create_model("inception_transformer_small")
    >>> round(count_flops(model, (3, 224, 224)) / 1e9, 2)
    4.85
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["count_flops", "sdpa_flop_jit"]


def _shape(value: Any) -> list[int]:
    return list(value.type().sizes())


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handler: ``q (..., Lq, E)``, ``k (..., Lk, E)``, ``v (..., Lk, Ev)``.

    Returns ``prod(...) * Lq * Lk * (E + Ev)`` multiply-adds (scores plus the weighted sum of values).
    """
    q, k, v = (_shape(t) for t in inputs[:3])
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def count_flops(model: nn.Module, input_size: Sequence[int] = (3, 224, 224), batch_size: int = 1) -> int:
    """Total fvcore FLOPs (multiply-adds) of ``model`` on a random ``(batch_size, *input_size)`` input, eval mode.

    ``input_size`` is the per-sample shape, ``(C, H, W)`` for image models.

    Raises:
        ImportError: fvcore is missing (``pip install fvcore``).
        ValueError: ``input_size`` is empty.
    """
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError as err:
        raise ImportError("count_flops needs fvcore: pip install fvcore (vitlab's dev extra)") from err
    if len(input_size) == 0:
        raise ValueError("input_size must give the per-sample input shape, e.g. (3, 224, 224)")
    param = next(model.parameters(), None)
    x = torch.randn(batch_size, *input_size) if param is None else torch.randn(
        batch_size, *input_size, device=param.device, dtype=param.dtype
    )
    was_training = model.training
    model.eval()
    try:
        analysis = FlopCountAnalysis(model, x).set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return int(analysis.total())
    finally:
        model.train(was_training)
