"""Freezing the base model for PEFT: parameters, and the running statistics of its BatchNorm layers.

A frozen base must stay bit-identical through training. ``requires_grad=False`` protects parameters, but BatchNorm
layers (the Inception Transformer's stem, for instance) would still update their running mean/variance in train mode.
``freeze_base`` therefore switches ``track_running_stats`` off on frozen BatchNorms: in training they normalise with
batch statistics without updating the stored ones, in eval they use the stored ones. ``restore_norm_statistics``
undoes that (``vitlab.peft.merge_adapters`` calls it).

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    >>> freeze_base(model, trainable_modules=["2"])
    >>> [p.requires_grad for p in model.parameters()]
    [False, False, False, False, True, True]
    >>> model[1].track_running_stats
    False
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["freeze_base", "restore_norm_statistics"]

_FROZEN_FLAG = "_vitlab_frozen_running_stats"


def freeze_base(
    model: nn.Module, trainable_modules: Sequence[str] = (), trainable_params: Iterable[nn.Parameter] = ()
) -> None:
    """Set ``requires_grad`` False on every parameter except those under ``trainable_modules`` or in
    ``trainable_params``, then freeze the running statistics of BatchNorms whose parameters are all frozen.

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
        if (isinstance(module, _BatchNorm) and module.track_running_stats and module.running_mean is not None
                and not any(p.requires_grad for p in module.parameters())):
            module.track_running_stats = False
            setattr(module, _FROZEN_FLAG, True)


def restore_norm_statistics(model: nn.Module) -> None:
    """Switch running-statistics tracking back on for the BatchNorms that ``freeze_base`` froze."""
    for module in model.modules():
        if getattr(module, _FROZEN_FLAG, False):
            module.track_running_stats = True
            delattr(module, _FROZEN_FLAG)
