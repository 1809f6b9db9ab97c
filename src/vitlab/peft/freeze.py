"""Freezing the base model for PEFT: parameters, and the running statistics of its BatchNorm layers.

A frozen base must stay bit-identical through training, and compute in training what it computes at test time.
``requires_grad=False`` protects parameters, but a BatchNorm layer (the Inception Transformer's stem, for instance)
in train mode would normalise with batch statistics and update its stored ones: fine-tuned on another dataset, it
would train with the new data's statistics and be tested with the old ones. ``freeze_base`` therefore turns each
fully frozen BatchNorm into a *frozen-statistics* BatchNorm (as detectron2's ``FrozenBatchNorm2d``, but the same
module with the same parameters and buffers): it always normalises with its stored statistics and never updates
them, in training and in evaluation. ``restore_norm_statistics`` turns them back (``vitlab.peft.merge_adapters``
calls it).

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    >>> freeze_base(model, trainable_modules=["2"])
    >>> [p.requires_grad for p in model.parameters()]
    [False, False, False, False, True, True]
    >>> x = torch.randn(8, 4)
    >>> torch.equal(model.train()(x), model.eval()(x)), model[1].running_mean.abs().sum().item()
    (True, 0.0)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["freeze_base", "restore_norm_statistics"]

_FROZEN_CLASSES: dict[type, type] = {}


def _frozen_forward(self: _BatchNorm, x: Tensor) -> Tensor:
    self._check_input_dim(x)
    return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def _frozen_class(cls: type) -> type:
    """A subclass of the BatchNorm class ``cls`` whose forward always uses (and never updates) the stored stats."""
    if cls not in _FROZEN_CLASSES:
        _FROZEN_CLASSES[cls] = type(f"FrozenStats{cls.__name__}", (cls,), {"forward": _frozen_forward})
    return _FROZEN_CLASSES[cls]


def freeze_base(
    model: nn.Module, trainable_modules: Sequence[str] = (), trainable_params: Iterable[nn.Parameter] = ()
) -> None:
    """Set ``requires_grad`` False on every parameter except those under ``trainable_modules`` or in
    ``trainable_params``, then make each BatchNorm whose parameters are all frozen use its stored statistics.

    Args:
        model: the model, changed in place.
        trainable_modules: module names (e.g. the classifier ``["head"]``) whose parameters stay trainable.
        trainable_params: further parameters to keep trainable (the adapter's).
    """
    modules = dict(model.named_modules())
    missing = [m for m in trainable_modules if m not in modules]
    if missing:
        raise ValueError(f"trainable_modules {missing} are not modules of {type(model).__name__}")
    keep = {id(p) for p in trainable_params}
    for name in trainable_modules:
        keep.update(id(p) for p in modules[name].parameters())
    for param in model.parameters():
        param.requires_grad_(id(param) in keep)
    for module in model.modules():
        if (isinstance(module, _BatchNorm) and module.running_mean is not None
                and type(module) not in _FROZEN_CLASSES.values()
                and not any(p.requires_grad for p in module.parameters())):
            module.__class__ = _frozen_class(type(module))


def restore_norm_statistics(model: nn.Module) -> None:
    """Turn the BatchNorms that ``freeze_base`` froze back into ordinary ones (same parameters and buffers)."""
    originals = {frozen: cls for cls, frozen in _FROZEN_CLASSES.items()}
    for module in model.modules():
        if type(module) in originals:
            module.__class__ = originals[type(module)]
