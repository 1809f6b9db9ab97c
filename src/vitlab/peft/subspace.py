"""``peft.method: subspace``: random-subspace training θ = θ₀ + P·θ_d as a model transform of the training harness.

``peft.options`` are the fields of ``vitlab.peft.intrinsic.SubspaceConfig`` (``dim`` required; ``projection``,
``said``, ``seed``, ``train_head``, ``head_modules``, ``max_dense_bytes``); ``peft.target_modules`` is its
``target_modules`` (``null``: every parameter, the head included, as Li et al. do). One more option, ``sweep``, holds
the settings of ``vitlab intrinsic-dim`` (the d grid, the subspace learning rate, ...): ``vitlab fit`` ignores it, so
one YAML file both trains a single subspace run of dimension ``dim`` and drives a d90 sweep.

The transform wraps the model in a ``SubspaceModel`` whose only trainable parameters are θ_d (``[d]``, zeros at start:
the wrapped model computes exactly the base model), the SAID scales and, with ``train_head``, the head.

Example:
    >>> import timm, torch
    >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2,
    ...                         num_heads=2, num_classes=10).eval()
    >>> x = torch.randn(2, 3, 32, 32)
    >>> before = vit(x)
    >>> model = build_subspace_transform(dim=200)(vit)
    >>> [n for n, p in model.named_parameters() if p.requires_grad], model.num_classes
    (['theta_d'], 10)
    >>> torch.equal(model(x), before)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from torch import nn

from vitlab.peft.control import set_peft_spec
from vitlab.peft.intrinsic import SubspaceConfig, wrap_in_subspace

__all__ = ["SUBSPACE_OPTIONS", "build_subspace_transform"]

SUBSPACE_OPTIONS = tuple(f.name for f in fields(SubspaceConfig) if f.name != "target_modules") + ("sweep",)


def build_subspace_transform(
    target_modules: str | Sequence[str] | None = None, **options: Any
) -> Callable[[nn.Module], nn.Module]:
    """The ``subspace`` model transform; options are validated now (before any model exists).

    Args:
        target_modules: ``SubspaceConfig.target_modules`` (``None``: every parameter).
        **options: ``SubspaceConfig`` fields (``dim`` required) and ``sweep`` (settings of ``vitlab intrinsic-dim``,
            ignored here).

    Returns:
        ``transform(model) -> SubspaceModel``.

    Raises:
        ValueError: an unknown option, ``target_modules`` given twice, a missing ``dim`` or an invalid field.
    """
    unknown = sorted(set(options) - set(SUBSPACE_OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for peft method 'subspace'; valid options: "
                         f"{sorted(SUBSPACE_OPTIONS)} (target_modules goes in peft.target_modules)")
    if "dim" not in options:
        raise ValueError("peft method 'subspace' needs options={'dim': <number of trainable numbers d>}")
    sweep = options.pop("sweep", None)
    if sweep is not None and not isinstance(sweep, dict):
        raise ValueError(f"peft.options.sweep must be a mapping of `vitlab intrinsic-dim` settings, got {sweep!r}")
    config = SubspaceConfig(target_modules=target_modules, **options)

    def transform(model: nn.Module) -> nn.Module:
        wrapped = wrap_in_subspace(model, config)
        # the resolved normalisation is recorded, so a checkpoint rebuilds the same P whatever the default becomes
        set_peft_spec(wrapped, "subspace", target_modules, {**options, "projection_norm": config.projection_norm})
        return wrapped

    return transform
