"""``OffCpu``: a CPU tensor that behaves like one on a GPU, to test device handling on a machine without one.

Like a CUDA tensor it cannot meet a CPU tensor (of one or more dimensions) in an op, nor become a numpy array;
``.cpu()`` / ``.to("cpu")`` return a plain CPU tensor. Code that works on ``OffCpu`` batches therefore either moves
them to the CPU or brings its own tensors to the batch's device, as it must for real GPU batches.
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_leaves


class OffCpu(torch.Tensor):
    """A tensor subclass standing in for a GPU tensor (see the module docstring).

    Example:
        >>> x = torch.ones(2).as_subclass(OffCpu)
        >>> type(x.cpu()) is torch.Tensor
        True
    """

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.numpy:
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                            "to host memory first.")
        to_cpu = func is torch.Tensor.cpu or (
            func is torch.Tensor.to and (torch._C._nn._parse_to(*args[1:], **kwargs)[0] or "") == torch.device("cpu")
        )
        if to_cpu:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs).as_subclass(torch.Tensor)
        leaves = tree_leaves((args, kwargs))
        if any(isinstance(t, cls) for t in leaves) and any(
            type(t) in (torch.Tensor, torch.nn.Parameter) and t.ndim > 0 for t in leaves
        ):
            raise RuntimeError("Expected all tensors to be on the same device, but found at least two devices, "
                               "cuda:0 and cpu!")
        return super().__torch_function__(func, types, args, kwargs)
