"""Freezing the base model for PEFT: parameters, and the running statistics of its BatchNorm layers.

A frozen base must stay bit-identical through training, and compute in training what it computes at test time.
``requires_grad=False`` protects parameters, but a BatchNorm layer (the Inception Transformer's stem, for instance)
in train mode would normalise with batch statistics and update its stored ones: fine-tuned on another dataset, it
would train with the new data's statistics and be tested with the old ones. ``freeze_base`` therefore replaces each
fully frozen ``BatchNorm2d`` by torchvision's ``FrozenBatchNorm2d`` through ``timm.layers.freeze_batch_norm_2d``: it
always normalises with its stored statistics and never updates them, in training and in evaluation. Its weight and
bias become buffers; its state dict keeps the ``num_batches_tracked`` counter, so the frozen base hashes as before
(``vitlab.peft.frozen_base_sha256``). ``restore_norm_statistics`` turns them back into plain ``BatchNorm2d`` layers
with ``timm.layers.unfreeze_batch_norm_2d``, momentum and step count included (``vitlab.peft.merge_adapters`` calls
it). A frozen BatchNorm of another dimensionality (``BatchNorm1d``, ``BatchNorm3d``) has no frozen counterpart in
timm or torchvision and is refused with the fix (keep it trainable).

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    >>> freeze_base(model, trainable_modules=["2"])
    >>> [name for name, p in model.named_parameters() if p.requires_grad], type(model[1]).__name__
    (['2.weight', '2.bias'], 'FrozenBatchNorm2d')
    >>> x = torch.randn(8, 1, 5, 5)
    >>> torch.equal(model.train()(x), model.eval()(x)), model[1].running_mean.abs().sum().item()
    (True, 0.0)
    >>> list(model[1].state_dict())
    ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked']
    >>> restore_norm_statistics(model)
    >>> type(model[1]).__name__
    'BatchNorm2d'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from timm.layers import freeze_batch_norm_2d, unfreeze_batch_norm_2d
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["freeze_base", "restore_norm_statistics"]


#: Attribute on each FrozenBatchNorm2d that ``freeze_base`` made: what the frozen form drops (momentum, the step count).
_ORIGIN = "vitlab_unfrozen_state"


def _keep_step_count(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """State-dict hook: a frozen BatchNorm still saves its ``num_batches_tracked`` (FrozenBatchNorm2d ignores the key
    on load), so the frozen base's state dict, and the base hash of adapter files, equal the unfrozen base's."""
    count = getattr(module, _ORIGIN)["num_batches_tracked"]
    if count is not None:
        state_dict[prefix + "num_batches_tracked"] = count


def freeze_base(
    model: nn.Module, trainable_modules: Sequence[str] = (), trainable_params: Iterable[nn.Parameter] = ()
) -> None:
    """Set ``requires_grad`` False on every parameter except those under ``trainable_modules`` or in
    ``trainable_params``, then turn each ``BatchNorm2d`` whose parameters are all frozen into a ``FrozenBatchNorm2d``.

    Args:
        model: the model, changed in place (it must not itself be a BatchNorm layer).
        trainable_modules: module names (e.g. the classifier ``["head"]``) whose parameters stay trainable.
        trainable_params: further parameters to keep trainable (the adapter's).

    Raises:
        ValueError: an unknown module name, or a frozen BatchNorm that is not 2-d (the message names it).
    """
    modules = dict(model.named_modules())
    missing = [m for m in trainable_modules if m not in modules]
    if missing:
        raise ValueError(f"trainable_modules {missing} are not modules of {type(model).__name__}")
    if isinstance(model, _BatchNorm):
        raise ValueError("freeze_base needs a model that contains its BatchNorm layers, not a BatchNorm layer itself")
    keep = {id(p) for p in trainable_params}
    for name in trainable_modules:
        keep.update(id(p) for p in modules[name].parameters())
    for param in model.parameters():
        param.requires_grad_(id(param) in keep)
    frozen = {name for name, m in modules.items() if isinstance(m, _BatchNorm) and m.running_mean is not None
              and not any(p.requires_grad for p in m.parameters())}
    other = sorted(name for name in frozen if not isinstance(modules[name], nn.BatchNorm2d | nn.SyncBatchNorm))
    if other:
        raise ValueError(f"frozen BatchNorm layers {other} are not 2-d: only BatchNorm2d has a frozen-statistics form "
                         "(timm.layers.freeze_batch_norm_2d); keep them trainable with trainable_modules="
                         f"{other}")
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d | nn.SyncBatchNorm) and child.running_mean is not None \
                    and not any(p.requires_grad for p in child.parameters()):
                state = {"momentum": child.momentum, "num_batches_tracked": child.num_batches_tracked}
                frozen_child = freeze_batch_norm_2d(child)
                setattr(frozen_child, _ORIGIN, state)
                frozen_child.register_state_dict_post_hook(_keep_step_count)
                setattr(parent, name, frozen_child)


def restore_norm_statistics(model: nn.Module) -> None:
    """Turn the ``FrozenBatchNorm2d`` layers that ``freeze_base`` made back into plain ``BatchNorm2d`` layers with
    the same weights, statistics, momentum and step count, in place (other FrozenBatchNorm2d layers are left alone)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            state = getattr(child, _ORIGIN, None)
            if state is not None:
                plain = unfreeze_batch_norm_2d(child)
                plain.momentum = state["momentum"]
                if plain.num_batches_tracked is not None and state["num_batches_tracked"] is not None:
                    plain.num_batches_tracked.copy_(state["num_batches_tracked"])
                setattr(parent, name, plain.to(child.running_mean.device))
