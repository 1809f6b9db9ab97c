"""Merge, unmerge and disable the adapters of any vitlab PEFT method: peft models and bottleneck adapters alike.

* ``merge_adapters(model)``: fold every delta into its base weight and, with ``unload=True`` (default), return the
  plain base architecture (for a ``peft.PeftModel``: ``merge_and_unload()``, a new object; frozen-statistics
  BatchNorms become plain ones again).
* ``unmerge_adapters(model)``: undo a ``merge_adapters(model, unload=False)``.
* ``disable_adapter(model)``: context manager running the base model alone (peft's ``disable_adapter``).

Bottleneck adapters are nonlinear and cannot be merged: merging a model that has them raises.

Example:
    >>> import timm, torch
    >>> from vitlab.peft import KAdaptationConfig, apply_kadaptation
    >>> def vit():
    ...     return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=1,
    ...                              num_heads=2, num_classes=3).eval()
    >>> model = apply_kadaptation(vit(), KAdaptationConfig(n=8))
    >>> with disable_adapter(model):
    ...     base = model(torch.zeros(1, 3, 32, 32))
    >>> plain = merge_adapters(model)
    >>> sorted(plain.state_dict()) == sorted(vit().state_dict())
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

from vitlab.checks import check_bool
from vitlab.peft.adapter import AdapterWrapper
from vitlab.peft.freeze import restore_norm_statistics

__all__ = [
    "adapter_layers",
    "disable_adapter",
    "get_peft_spec",
    "merge_adapters",
    "set_peft_spec",
    "unmerge_adapters",
]

PEFT_SPEC_ATTR = "vitlab_peft"


def set_peft_spec(model: nn.Module, method: str, target_modules: Any, options: dict[str, Any]) -> None:
    """Record how ``model`` was adapted (the harness method name and options, re-applied by ``load_adapter`` for the
    methods that are not peft methods) and the names of its trainable parameters at this moment. Stored as a plain
    attribute, not in the state dict."""
    params = [name for name, p in model.named_parameters() if p.requires_grad]
    model.__dict__[PEFT_SPEC_ATTR] = {"method": method, "target_modules": target_modules, "options": dict(options),
                                      "params": params}


def get_peft_spec(model: nn.Module) -> dict[str, Any]:
    """The record written by ``set_peft_spec``; raises if the model was not adapted by vitlab.peft."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an adapted nn.Module (the model a vitlab.peft method returned), got "
                        f"{type(model).__name__}")
    spec = model.__dict__.get(PEFT_SPEC_ATTR)
    if spec is None:
        raise ValueError(f"{type(model).__name__} was not adapted by vitlab.peft (no record of the method): build it "
                         "with vitlab.peft.build_peft_transform(method, ...)(model)")
    return spec


def adapter_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every adapter layer in the model (peft tuner layers and bottleneck adapters; outermost)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an adapted nn.Module (the model a vitlab.peft method or peft.get_peft_model "
                        f"returned), got {type(model).__name__}")
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, (BaseTunerLayer, AdapterWrapper)) and not any(
                name.startswith(prev + ".") for prev, _ in found):
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
        model: an adapted model (a ``peft.PeftModel``; changed in place).
        unload: return the base model without adapter layers (``merge_and_unload``), BatchNorm statistics tracking
            restored; otherwise keep the layers (merged) so that ``unmerge_adapters`` can undo the merge.
        safe_merge: refuse to write non-finite weights.

    Returns:
        The plain base model (``unload``) or ``model``. A ``linear`` probe (or ``full`` fine-tuning) has no adapter
        layers: its model is already plain and is returned as it is.
    """
    if not adapter_layers(model) and model.__dict__.get(PEFT_SPEC_ATTR, {}).get("method") in ("linear", "full"):
        check_bool("safe_merge", safe_merge)
        if check_bool("unload", unload):
            restore_norm_statistics(model)  # frozen-statistics BatchNorms back to plain ones, as for the peft methods
            model.__dict__.pop(PEFT_SPEC_ATTR)
        return model
    layers = _require_layers(model)
    unload, safe_merge = check_bool("unload", unload), check_bool("safe_merge", safe_merge)
    bottleneck = [name for name, layer in layers if isinstance(layer, AdapterWrapper)]
    if bottleneck:
        raise ValueError(f"bottleneck adapters ({bottleneck[:3]}...) are nonlinear and cannot be merged into the base "
                         "weights; export the adapted model as it is (vitlab.peft.save_adapter)")
    if not isinstance(model, PeftModel):
        raise TypeError(f"merge_adapters takes the peft.PeftModel returned by the method, got {type(model).__name__}")
    if not unload:
        model.merge_adapter(safe_merge=safe_merge)
        return model
    plain = model.merge_and_unload(safe_merge=safe_merge)
    restore_norm_statistics(plain)
    plain.__dict__.pop(PEFT_SPEC_ATTR, None)
    return plain


def unmerge_adapters(model: nn.Module) -> nn.Module:
    """Undo ``merge_adapters(model, unload=False)``: subtract the deltas again (no-op for unmerged layers)."""
    _require_layers(model)
    if not isinstance(model, PeftModel):
        raise TypeError(f"unmerge_adapters takes a peft.PeftModel, got {type(model).__name__}")
    model.unmerge_adapter()
    return model


@contextmanager
def disable_adapter(model: nn.Module) -> Iterator[nn.Module]:
    """Run the base model alone inside the ``with`` block; a merged layer is unmerged first (as in peft)."""
    _require_layers(model)
    if isinstance(model, PeftModel):
        with model.disable_adapter():
            yield model
        return
    # a bare model: bottleneck adapters, or a model a peft method adapted in place (the one passed to
    # apply_kadaptation / get_peft_model): its tuner layers and its modules_to_save head, as peft toggles them
    toggles = [m for m in model.modules() if isinstance(m, (AdapterWrapper, BaseTunerLayer, AuxiliaryTrainingWrapper))]
    was_disabled = [_is_disabled(m) for m in toggles]
    for module in toggles:
        _set_disabled(module, True)
    try:
        yield model
    finally:
        for module, before in zip(toggles, was_disabled, strict=True):
            if not before:
                _set_disabled(module, False)


def _is_disabled(module: nn.Module) -> bool:
    if isinstance(module, AdapterWrapper):
        return module.disabled
    return module.disable_adapters if isinstance(module, BaseTunerLayer) else module._disable_adapters


def _set_disabled(module: nn.Module, disabled: bool) -> None:
    if isinstance(module, AdapterWrapper):
        module.disabled = disabled
    else:  # peft's own switch (it also sets requires_grad of the adapter weights, as PeftModel.disable_adapter does)
        module.enable_adapters(not disabled)
