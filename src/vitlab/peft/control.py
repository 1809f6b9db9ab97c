"""Merge, unmerge and disable adapters of any vitlab PEFT method (row-slice wrappers, HF peft layers, adapters).

* ``merge_adapters(model)``: fold every delta into its base weight and, with ``unload=True`` (default), replace each
  wrapper by its base layer: the result has exactly the base model's parameter names and shapes, and runs as fast.
* ``unmerge_adapters(model)``: undo a ``merge_adapters(model, unload=False)``.
* ``disable_adapter(model)``: context manager running the base model alone (as peft's ``disable_adapter``).

HF peft layers are handled through peft's public ``BaseTunerLayer`` API (``merge``, ``unmerge``,
``enable_adapters``, ``get_base_layer``). Bottleneck adapters are nonlinear and cannot be merged: merging a model
that has them raises.

Example:
    >>> import timm, torch
    >>> from vitlab.peft import KAdaptationConfig, apply_kadaptation
    >>> model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=1,
    ...                           num_heads=2, num_classes=3).eval()
    >>> model = apply_kadaptation(model, KAdaptationConfig(n=8))
    >>> with disable_adapter(model):
    ...     base = model(torch.zeros(1, 3, 32, 32))
    >>> plain = merge_adapters(model)
    >>> sorted(plain.state_dict()) == sorted(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8,
    ...     embed_dim=64, depth=1, num_heads=2, num_classes=3).state_dict())
    True
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from vitlab.peft.adapter import AdapterWrapper
from vitlab.peft.delta_linear import DeltaLinear
from vitlab.peft.freeze import restore_norm_statistics

__all__ = [
    "SHARED_ROOT_ATTRS",
    "adapter_layers",
    "disable_adapter",
    "get_peft_spec",
    "merge_adapters",
    "set_peft_spec",
    "unmerge_adapters",
]

# Root-level children that hold state shared by many adapter layers (removed when unloading).
SHARED_ROOT_ATTRS = ("kadaptation_rules",)
PEFT_SPEC_ATTR = "vitlab_peft"


def set_peft_spec(model: nn.Module, method: str, target_modules: Any, options: dict[str, Any]) -> None:
    """Record how ``model`` was adapted (re-applied by ``load_adapter``) and the names of its trainable parameters
    at this moment (the tensors an adapter checkpoint holds). Stored as a plain attribute, not in the state dict."""
    params = [name for name, p in model.named_parameters() if p.requires_grad]
    model.__dict__[PEFT_SPEC_ATTR] = {"method": method, "target_modules": target_modules, "options": dict(options),
                                      "params": params}


def get_peft_spec(model: nn.Module) -> dict[str, Any]:
    """The record written by ``set_peft_spec``; raises if the model was not adapted by vitlab.peft."""
    spec = model.__dict__.get(PEFT_SPEC_ATTR)
    if spec is None:
        raise ValueError(f"{type(model).__name__} was not adapted by vitlab.peft (no record of the method): build it "
                         "with vitlab.peft.build_peft_transform(method, ...)(model)")
    return spec


def _peft_layer_type() -> type | None:
    if "peft" not in sys.modules:  # no HF peft layer can exist if peft was never imported
        return None
    from peft.tuners.tuners_utils import BaseTunerLayer

    return BaseTunerLayer


def adapter_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every adapter wrapper in the model (outermost only)."""
    peft_type = _peft_layer_type()
    kinds = (DeltaLinear, AdapterWrapper) + ((peft_type,) if peft_type else ())
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, kinds) and not any(name.startswith(prev + ".") for prev, _ in found):
            found.append((name, module))
    return found


def _require_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    layers = adapter_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no vitlab or peft adapter layers (already merged, or never "
                         "adapted: build it with vitlab.peft.build_peft_transform / apply_kadaptation)")
    return layers


def merge_adapters(model: nn.Module, unload: bool = True, safe_merge: bool = True) -> nn.Module:
    """Fold all adapters into the base weights; with ``unload`` return the plain base architecture.

    Args:
        model: an adapted model (changed in place).
        unload: replace wrappers by their base layers, drop shared adapter state and restore BatchNorm statistics
            tracking; otherwise keep the wrappers (merged) so that ``unmerge_adapters`` can undo the merge.
        safe_merge: refuse to write non-finite weights.

    Returns:
        The same model object.
    """
    layers = _require_layers(model)
    bottleneck = [name for name, layer in layers if isinstance(layer, AdapterWrapper)]
    if bottleneck:
        raise ValueError(f"bottleneck adapters ({bottleneck[:3]}...) are nonlinear and cannot be merged into the base "
                         "weights; export the adapted model as it is (vitlab.peft.save_adapter)")
    for name, layer in layers:
        layer.merge(safe_merge=safe_merge)
        if unload:
            base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer.base_layer
            if name:
                model.set_submodule(name, base)
            else:
                raise ValueError("the model itself is an adapter layer; merge it and use layer.base_layer")
    if unload:
        for attr in SHARED_ROOT_ATTRS:
            if attr in model._modules:
                delattr(model, attr)
        restore_norm_statistics(model)
        model.__dict__.pop(PEFT_SPEC_ATTR, None)
    return model


def unmerge_adapters(model: nn.Module) -> nn.Module:
    """Undo ``merge_adapters(model, unload=False)``: subtract the deltas again (no-op for unmerged layers)."""
    for _, layer in _require_layers(model):
        if not isinstance(layer, AdapterWrapper):
            layer.unmerge()
    return model


@contextmanager
def disable_adapter(model: nn.Module) -> Iterator[nn.Module]:
    """Run the base model alone inside the ``with`` block; a merged layer is unmerged first (as in peft)."""
    layers = _require_layers(model)
    peft_type = _peft_layer_type()
    previous = []
    for _, layer in layers:
        if peft_type is not None and isinstance(layer, peft_type):
            previous.append(not layer.disable_adapters)
            if layer.merged:
                layer.unmerge()
            layer.enable_adapters(False)
        else:
            previous.append(layer.disabled)
            layer.disabled = True
    try:
        yield model
    finally:
        for (_, layer), before in zip(layers, previous, strict=True):
            if peft_type is not None and isinstance(layer, peft_type):
                layer.enable_adapters(before)
            else:
                layer.disabled = before
