"""Fast Walsh–Hadamard transform (unnormalised, Sylvester order) in PyTorch, differentiable, O(N log N).

``fwht(x)`` computes ``x @ H_N`` along the last dimension, where ``H_N`` is the ±1 Sylvester Hadamard matrix
(``scipy.linalg.hadamard(N)``); ``fwht(fwht(x)) == N * x``. Backends:

- ``"matmul"``: ``H_N = H_{n1} ⊗ H_{n2} ⊗ ...`` with blocks of at most 128, each applied as one (batched) matrix
  product: about log₁₂₈ N passes over memory instead of log₂ N. Exact in fp32 on CPU and on CUDA when TF32 is off.
- ``"butterfly"``: log₂ N vectorised add/subtract passes; exact even when TF32 matmuls are enabled.
- ``"cuda"``: the optional ``fast-hadamard-transform`` kernel (Dao-AILab), used for CUDA tensors when installed
  (``pip install fast-hadamard-transform --no-build-isolation``, builds with nvcc). Lengths above its 2^15 limit are
  split as ``H_a ⊗ H_b`` (two passes).

``"auto"`` picks ``cuda`` for CUDA tensors when the kernel is importable, ``butterfly`` for fp32 CUDA tensors while
TF32 matmuls are allowed, and ``matmul`` otherwise. The backward pass is the same transform (``H`` is symmetric).

Example:
    >>> import torch
    >>> fwht(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    tensor([1., 1., 1., 1.])
    >>> x = torch.randn(3, 8)
    >>> torch.allclose(fwht(fwht(x)), 8 * x, atol=1e-5)
    True
"""

from __future__ import annotations

import functools
import importlib
import math

import torch
from torch import Tensor

from vitlab.models.cpu_linear import in_torch_func_transform

__all__ = ["HADAMARD_BACKENDS", "cuda_kernel_available", "fwht", "is_power_of_two"]

HADAMARD_BACKENDS = ("auto", "matmul", "butterfly", "cuda")
_MAX_BLOCK_LOG2 = 7  # matmul blocks of at most 128x128: measured fastest on CPU (2^18..2^24, one thread)
_CUDA_KERNEL_MAX = 1 << 15  # the fast-hadamard-transform kernel handles a last dim of at most 32768
_CUDA_INSTALL_HINT = "pip install fast-hadamard-transform --no-build-isolation  (needs nvcc and a CUDA build of torch)"


def is_power_of_two(n: int) -> bool:
    """True for 1, 2, 4, 8, ..."""
    return n >= 1 and n & (n - 1) == 0


@functools.cache
def _cuda_kernel():
    try:
        return importlib.import_module("fast_hadamard_transform").hadamard_transform
    except ImportError:
        return None


def cuda_kernel_available() -> bool:
    """Whether the optional ``fast_hadamard_transform`` CUDA kernel can be imported."""
    return _cuda_kernel() is not None


@functools.lru_cache(maxsize=64)
def _hadamard_matrix(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    h = torch.ones(1, 1, dtype=dtype, device=device)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _block_sizes(n: int) -> list[int]:
    k = n.bit_length() - 1
    count = max(1, math.ceil(k / _MAX_BLOCK_LOG2))
    return [1 << (k // count + (i < k % count)) for i in range(count)]


def _fwht_matmul(x: Tensor) -> Tensor:
    n = x.shape[-1]
    if n == 1:
        return x.clone()
    rows = x.reshape(-1, n)
    batch, post = rows.shape[0], n
    for i, f in enumerate(_block_sizes(n)):
        post //= f
        h = _hadamard_matrix(f, x.dtype, x.device)
        if post == 1:  # innermost block: one (rows, f) @ (f, f) product
            rows = rows.reshape(-1, f) @ h
        elif batch == 1 and i == 0:  # outermost block of a single vector: one (f, f) @ (f, post) product
            rows = h @ rows.reshape(f, post)
        else:
            rows = torch.matmul(h, rows.reshape(-1, f, post))
    return rows.reshape(x.shape)


def _fwht_butterfly(x: Tensor) -> Tensor:
    n = x.shape[-1]
    out, half = x.reshape(-1, n), 1
    while half < n:
        out = out.view(-1, n // (2 * half), 2, half)
        a, b = out[:, :, 0], out[:, :, 1]
        out = torch.stack((a + b, a - b), dim=2)
        half *= 2
    return out.reshape(x.shape) if n > 1 else x.clone()


def _fwht_cuda(x: Tensor) -> Tensor:
    kernel = _cuda_kernel()
    n = x.shape[-1]
    if n <= _CUDA_KERNEL_MAX:
        return kernel(x.contiguous(), 1.0)
    inner = _CUDA_KERNEL_MAX
    outer = n // inner
    y = kernel(x.reshape(-1, outer, inner).contiguous(), 1.0)  # H_inner along the last axis
    y = kernel(y.transpose(-1, -2).contiguous(), 1.0)  # H_outer along the other axis
    return y.transpose(-1, -2).reshape(x.shape)


def _resolve_backend(x: Tensor, backend: str) -> str:
    if backend == "cuda" and not cuda_kernel_available():
        raise ImportError(f"backend='cuda' needs the optional fast-hadamard-transform kernel: {_CUDA_INSTALL_HINT}")
    if backend == "cuda" and not x.is_cuda:
        raise ValueError("backend='cuda' needs a CUDA tensor; use backend='auto' or 'matmul' for CPU tensors")
    if backend != "auto":
        return backend
    if x.is_cuda and cuda_kernel_available():
        return "cuda"
    if x.is_cuda and x.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "butterfly"  # TF32 would round the inputs of the ±1 matmuls to 10 mantissa bits
    return "matmul"


_IMPLEMENTATIONS = {"matmul": _fwht_matmul, "butterfly": _fwht_butterfly, "cuda": _fwht_cuda}


class _FWHT(torch.autograd.Function):
    """``x @ H_N``; the backward and forward-mode (``jvp``) passes are the same transform (``H`` is linear and
    symmetric). ``setup_context`` apart from ``forward`` and ``generate_vmap_rule`` let every ``torch.func`` transform
    (``grad``, ``vmap``, ``jvp``, ``jacrev``) run through it."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, backend: str) -> Tensor:
        return _IMPLEMENTATIONS[backend](x)

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor, str], output: Tensor) -> None:
        ctx.backend = inputs[1]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return _IMPLEMENTATIONS[ctx.backend](grad), None

    @staticmethod
    def jvp(ctx, tangent: Tensor, _backend: None) -> Tensor:
        return _IMPLEMENTATIONS[ctx.backend](tangent)


def fwht(x: Tensor, backend: str = "auto") -> Tensor:
    """Unnormalised Walsh–Hadamard transform along the last dimension: ``x @ H_N`` (Sylvester order).

    Args:
        x: floating tensor ``[..., N]`` with N a power of two.
        backend: one of ``HADAMARD_BACKENDS`` (see the module docstring).

    Returns:
        Tensor ``[..., N]``; differentiable (the gradient is the same transform of the incoming gradient).

    Example:
        >>> fwht(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        tensor([[ 3., -1.],
                [ 7., -1.]])
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"fwht needs a floating-point tensor, got {type(x).__name__} "
                        f"{getattr(x, 'dtype', '')}; convert with x.float()")
    if x.dim() == 0 or not is_power_of_two(x.shape[-1]):
        raise ValueError(f"fwht needs a last dimension that is a power of two, got shape {tuple(x.shape)}; "
                         "zero-pad it, e.g. torch.nn.functional.pad(x, (0, 2**k - n))")
    if backend not in HADAMARD_BACKENDS:
        raise ValueError(f"backend must be one of {HADAMARD_BACKENDS}, got {backend!r}")
    resolved = _resolve_backend(x, backend)
    if resolved == "cuda" and in_torch_func_transform():
        resolved = "butterfly"  # the external kernel has no torch.func (vmap) rule; the butterfly is exact too
    return _FWHT.apply(x, resolved)
