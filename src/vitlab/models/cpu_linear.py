"""Linear layers' matrix products through oneDNN on the CPU: same results as ``F.linear``, up to twice as fast.

PyTorch runs a float32 ``F.linear`` on the CPU through its BLAS (MKL); oneDNN, which PyTorch ships and already uses
for convolutions and for ``torch.compile``'s CPU kernels, multiplies the same matrices with its own just-in-time
kernels. On the AVX-512 AMD EPYC CPU this project is measured on, MKL's single-precision GEMM runs at about half of
oneDNN's speed for every product of the iFormer (forward, input gradient and weight gradient alike; see the README's
speed table). No library offers this as a drop-in for eager models, so :func:`linear` does it: the products go
through ``torch.ops.mkldnn._linear_pointwise`` (the op inductor's CPU backend emits), with an autograd function whose
backward uses the same op for both gradients.

The result equals ``F.linear`` up to the order of the float32 sums (measured ≤ 1e-6 relative). The fast path is taken
only for float32 CPU tensors outside autocast, ``torch.compile`` / ``torch.export``, ``torch.jit.trace``,
TorchScript (their graphs keep the portable ``aten.linear``) and ``torch.func`` transforms
(:func:`capturing_or_transforming`), when PyTorch has oneDNN and while it is switched on (:func:`onednn_linear`,
default on); everything else is ``F.linear``.

Example:
    >>> import torch
    >>> x, w, b = torch.randn(5, 8), torch.randn(3, 8), torch.randn(3)
    >>> bool((linear(x, w, b) - torch.nn.functional.linear(x, w, b)).abs().max() < 1e-5)
    True
    >>> with onednn_linear(False):
    ...     torch.equal(linear(x, w, b), torch.nn.functional.linear(x, w, b))
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function

__all__ = [
    "capturing_or_transforming", "in_torch_func_transform", "linear", "linear_gelu", "onednn_linear",
    "onednn_linear_available", "recording_or_transforming", "set_onednn_linear", "uses_onednn",
]

try:
    _POINTWISE = torch.ops.mkldnn._linear_pointwise  # x @ wᵀ + b, then an optional fused activation
except (AttributeError, RuntimeError):  # a PyTorch build without it
    _POINTWISE = None
_STATE = {"enabled": True}
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)  # PyTorch < 2.6 has no such function


def in_torch_func_transform() -> bool:
    """True while a ``torch.func`` transform (``grad``, ``vmap``, ``jacrev``, ``jvp``, ...) runs the code.

    It asks ``torch._C._are_functorch_transforms_active`` (what ``torch.autograd.Function.apply`` itself asks; torch has
    no public call for it), about 25 ns, so eager calls keep their fast paths at no measurable cost.

    Example:
        >>> in_torch_func_transform(), bool(torch.func.vmap(lambda x: x + in_torch_func_transform())(torch.zeros(2))[0])
        (False, True)
    """
    return torch._C._are_functorch_transforms_active()


def recording_or_transforming() -> bool:
    """True while ``torch.jit.trace`` or ``torch.export`` records the code, or a ``torch.func`` transform (``grad``,
    ``vmap``, ``jacrev``, ``jvp``, ...) runs it: in-place custom autograd Functions survive neither, so layers built on
    them compute the same sums with plain tensor ops (``torch.compile`` handles such Functions: not included).

    Example:
        >>> recording_or_transforming()
        False
        >>> bool(torch.func.vmap(lambda x: x + recording_or_transforming())(torch.zeros(2)).all())
        True
    """
    return in_torch_func_transform() or torch.jit.is_tracing() or _is_exporting()


def capturing_or_transforming() -> bool:
    """:func:`recording_or_transforming`, or ``torch.compile`` compiling: custom kernels, custom autograd functions,
    in-place writes and channels-last copies must then give way to plain tensor ops, which every recorder and transform
    supports (a ``vmap`` over a model ensemble, per-sample gradients, MAML's ``grad`` of ``functional_call``).

    Example:
        >>> capturing_or_transforming()
        False
        >>> bool(torch.func.vmap(lambda x: x + capturing_or_transforming())(torch.zeros(2)).all())
        True
    """
    return torch.compiler.is_compiling() or recording_or_transforming()


def _probe() -> bool:
    """Whether the op exists and multiplies correctly here (a build may list it yet not support this CPU)."""
    if _POINTWISE is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        product = _POINTWISE(torch.ones(2, 3), torch.ones(4, 3), None, "none", [], "")
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    return product.shape == (2, 4) and bool((product == 3).all())


_AVAILABLE = _probe()


def onednn_linear_available() -> bool:
    """Whether this PyTorch build can run :func:`linear` through oneDNN (it has oneDNN and the op)."""
    return _AVAILABLE


@contextlib.contextmanager
def onednn_linear(enabled: bool) -> Iterator[None]:
    """Switch the oneDNN path of :func:`linear` on or off inside the ``with`` block (process-wide; default on).

    Off, every product is ``F.linear`` (PyTorch's default kernels), e.g. to time a model against its peers with the
    same matrix-product kernel.

    Example:
        >>> with onednn_linear(False):
        ...     uses_onednn(torch.randn(2, 4), torch.randn(3, 4))
        False
    """
    previous = set_onednn_linear(enabled)
    try:
        yield
    finally:
        _STATE["enabled"] = previous


def set_onednn_linear(enabled: bool) -> bool:
    """Switch the oneDNN path of :func:`linear` on or off from now on (process-wide); returns the previous setting.

    Example:
        >>> previous = set_onednn_linear(False)
        >>> set_onednn_linear(previous)
        False
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"the oneDNN switch takes True or False, got {enabled!r}")
    previous = _STATE["enabled"]
    _STATE["enabled"] = enabled
    return previous


def uses_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear` takes the oneDNN path for these tensors now (see the module docstring)."""
    if capturing_or_transforming():  # checked first: dynamo stops here
        return False
    return (
        _AVAILABLE and _STATE["enabled"] and x.device.type == "cpu" and weight.device.type == "cpu"
        and x.dtype == torch.float32 and weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    )


def _dense(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix`` (2-D) if it or its transpose is contiguous, else a contiguous copy: oneDNN multiplies other strides
    (a channel slice of a wider map, as the iFormer's mixer branches are) with a reference kernel ~100x slower."""
    return matrix if matrix.is_contiguous() or matrix.t().is_contiguous() else matrix.contiguous()


def _differentiable_backward(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, needs_x: bool, needs_weight: bool, needs_bias: bool
) -> tuple[torch.Tensor | None, ...]:
    """``F.linear``'s gradients with PyTorch's differentiable ops (for a backward pass that builds a graph)."""
    flat = grad.reshape(-1, grad.shape[-1])
    grad_x = (grad @ weight) if needs_x else None
    grad_weight = flat.t() @ x.reshape(-1, x.shape[-1]) if needs_weight else None
    return grad_x, grad_weight, flat.sum(0) if needs_bias else None


class _OneDnnLinear(torch.autograd.Function):
    """``x @ weightᵀ + bias`` with oneDNN in both passes: ``∂x = g @ weight``, ``∂weight = gᵀ @ x``, ``∂bias = Σ g``."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return _POINTWISE(x, weight, bias, "none", [], "")

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        """Kept apart from ``forward``, as torch.func requires of a Function (under a transform :func:`linear` takes
        ``F.linear`` anyway: oneDNN's op has no batching rule for ``vmap``)."""
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph=True: differentiable ops, so that higher derivatives exist
            return _differentiable_backward(grad, x, weight, needs_x, needs_weight, needs_bias and ctx.has_bias)
        flat = _dense(grad.reshape(-1, grad.shape[-1]))
        grad_x = _POINTWISE(flat, _dense(weight).t(), None, "none", [], "").view(x.shape) if needs_x else None
        grad_weight = None
        if needs_weight:  # ∂weight = gᵀ x or (xᵀ g)ᵀ: the op copies its transposed first operand, so the narrower
            inputs = _dense(x.reshape(-1, x.shape[-1]))
            if inputs.shape[1] < flat.shape[1]:
                grad_weight = _POINTWISE(inputs.t(), flat.t(), None, "none", [], "").t()
            else:
                grad_weight = _POINTWISE(flat.t(), inputs.t(), None, "none", [], "")
        grad_bias = flat.sum(0) if needs_bias and ctx.has_bias else None
        return grad_x, grad_weight, grad_bias


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if weight.dim() != 2 or x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear expects x (..., in) and weight (out, in) with the same 'in'; got x {list(x.shape)} and weight "
            f"{list(weight.shape)}"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},) to match weight, got {list(bias.shape)}")


def _needs_autograd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )


@torch.jit.unused  # TorchScript compiles the F.linear branches of the callers instead
def _eager_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: str) -> torch.Tensor:
    """:func:`linear` (``gelu == ""``) or :func:`linear_gelu` in eager mode."""
    if not uses_onednn(x, weight) or (bias is not None and (bias.dtype != x.dtype or bias.device != x.device)):
        out = F.linear(x, weight, bias)  # (a mismatched bias gets F.linear's own error)
    else:
        _check(x, weight, bias)
        if x.stride(-1) != 1:  # features not adjacent in memory: oneDNN's reference kernel would take it, ~100x slower
            x = x.contiguous()
        weight = _dense(weight)  # the same for a weight that is neither a matrix nor a transposed one (w[:, ::2])
        if not _needs_autograd(x, weight, bias):  # the GELU, if any, fused into the product
            return _POINTWISE(x, weight, bias, "gelu" if gelu else "none", [], gelu)
        out = _OneDnnLinear.apply(x, weight, bias)
    return out if gelu == "" else F.gelu(out, approximate=gelu)


@register_notrace_function  # the kernel choice is made at run time: a leaf for torch.fx
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: ``x (..., in)``, ``weight (out, in)``, ``bias (out,)`` -> ``(..., out)``,
    through oneDNN when :func:`uses_onednn` says so (differentiable in ``x``, ``weight`` and ``bias``).

    Example:
        >>> linear(torch.randn(2, 7, 8), torch.randn(3, 8)).shape
        torch.Size([2, 7, 3])
    """
    if torch.jit.is_scripting():
        return F.linear(x, weight, bias)
    return _eager_linear(x, weight, bias, "")


@register_notrace_function  # the kernel choice is made at run time: a leaf for torch.fx
def linear_gelu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, approximate: str = "none"
) -> torch.Tensor:
    """``F.gelu(F.linear(x, weight, bias), approximate=approximate)``; without autograd on the oneDNN path the GELU is
    fused into the product (no separate pass over the output). Shapes as :func:`linear`.

    Example:
        >>> linear_gelu(torch.randn(4, 8), torch.randn(16, 8), torch.randn(16)).shape
        torch.Size([4, 16])
    """
    if approximate != "none" and approximate != "tanh":
        raise ValueError("approximate must be 'none' or 'tanh', got " + approximate)
    if torch.jit.is_scripting():
        return F.gelu(F.linear(x, weight, bias), approximate=approximate)
    return _eager_linear(x, weight, bias, approximate)

