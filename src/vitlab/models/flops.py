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

from vitlab.checks import check_int

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
        TypeError: ``model`` is not a module; ValueError: ``input_size`` is not positive ints, ``batch_size`` is
        not an int >= 1, or the weights are on the meta device.
    """
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError as err:
        raise ImportError("count_flops needs fvcore: pip install fvcore (vitlab's dev extra)") from err
    if not isinstance(model, nn.Module):
        raise TypeError(f"count_flops needs an nn.Module (e.g. timm.create_model(...)), got {type(model).__name__}")
    if isinstance(input_size, str) or not isinstance(input_size, Sequence) or len(input_size) == 0 or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in input_size):
        raise ValueError(f"input_size must give the per-sample input shape as positive ints, e.g. (3, 224, 224), "
                         f"got {input_size!r}")
    check_int("batch_size", batch_size, minimum=1)
    param = next(model.parameters(), None)
    if param is not None and param.is_meta:
        raise ValueError("count_flops runs the model, whose weights are on the meta device (no data): materialise "
                         "them first, e.g. model.to_empty(device='cpu')")
    x = torch.randn(batch_size, *input_size) if param is None else torch.randn(
        batch_size, *input_size, device=param.device, dtype=param.dtype
    )
    was_training = model.training
    model.eval()
    try:
        analysis = FlopCountAnalysis(model, x).set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return int(analysis.total())
    except ValueError:  # the model refused the input: its message, with sizes as ints (traced ones print as tensors)
        try:
            with torch.no_grad():
                model(x)
        except ValueError as err:
            raise err from None
        raise
    finally:
        model.train(was_training)
