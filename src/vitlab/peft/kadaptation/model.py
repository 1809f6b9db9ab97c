"""``apply_kadaptation`` / ``merge_kadaptation`` / ``unmerge_kadaptation``: KAdaptation on any model's Linears.

``apply_kadaptation`` replaces each targeted ``nn.Linear`` in place by a ``DeltaLinear`` (names keep their
prefixes, like peft's ``inject_adapter_in_model``: ``blocks.0.attn.qkv.base_layer.weight``,
``blocks.0.attn.qkv.adapters.q.u``, ``blocks.0.attn.qkv.adapter_bias``). The shared ``A`` factors live once on the
model root as ``kadaptation_rules.<role>`` (``role`` = ``q``/``v`` for fused ``qkv`` rows). The base is frozen; the
classifier head stays trainable.

Example:
    >>> import timm, torch
    >>> model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2,
    ...                           num_heads=2, num_classes=10).eval()
    >>> x = torch.randn(2, 3, 32, 32)
    >>> before = model(x)
    >>> model = apply_kadaptation(model, KAdaptationConfig(n=8))
    >>> torch.equal(model(x), before)  # ΔW = 0 at initialisation
    True
    >>> sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head"))
    896
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import nn

from vitlab.peft.auto import auto_targets
from vitlab.peft.control import adapter_layers, merge_adapters, set_peft_spec, unmerge_adapters
from vitlab.peft.delta_linear import DeltaLinear
from vitlab.peft.freeze import freeze_base
from vitlab.peft.kadaptation.config import KAdaptationConfig
from vitlab.peft.kadaptation.layer import KAdaptationDelta, KroneckerRule
from vitlab.peft.targets import Target, classifier_names, find_targets

__all__ = ["apply_kadaptation", "kadaptation_layers", "merge_kadaptation", "unmerge_kadaptation"]

RULES_ATTR = "kadaptation_rules"
WHOLE = "all"  # adapter key of a target that covers the whole weight


def _divisors(value: int) -> list[int]:
    return [d for d in range(1, value + 1) if value % d == 0]


def _check_shapes(targets: list[Target], n: int) -> None:
    bad = [t for t in targets if t.out_features % n or t.in_features % n]
    if bad:
        lines = [
            f"{t.module_name}{f' ({t.slice_name} rows)' if t.slice_name else ''}: {t.out_features} x {t.in_features}"
            f", n that work: {_divisors(math.gcd(t.out_features, t.in_features))}" for t in bad[:6]
        ]
        common = _divisors(math.gcd(*(v for t in targets for v in (t.out_features, t.in_features))))
        raise ValueError(
            f"KAdaptation n={n} must divide both dimensions of every targeted weight block; it does not for "
            + "; ".join(lines) + f". Values of n valid for all {len(targets)} targets: {common}"
        )


def kadaptation_layers(model: nn.Module) -> list[tuple[str, DeltaLinear]]:
    """``(name, DeltaLinear)`` of every KAdaptation-wrapped layer."""
    return [(name, layer) for name, layer in adapter_layers(model) if isinstance(layer, DeltaLinear)
            and all(isinstance(a, KAdaptationDelta) for a in layer.adapters.values())]


def apply_kadaptation(model: nn.Module, config: KAdaptationConfig | None = None) -> nn.Module:
    """Add ΔW = s · Σ_i A_i ⊗ u_i v_iᵀ to the targeted weights of ``model`` (in place) and freeze the base.

    Args:
        model: any ``nn.Module`` with ``nn.Linear`` layers (timm ViTs, the Inception Transformer, ...).
        config: ``KAdaptationConfig`` (defaults: the reference structure on the attention Q and V projections).

    Returns:
        The same model object: adapted, base frozen, head trainable if ``config.train_head``.

    Raises:
        ValueError: already adapted; targets not found (candidates listed); ``n`` does not divide a target (the
            layer and the valid values of ``n`` are named); a bias is requested on a Linear without bias.
    """
    config = config or KAdaptationConfig()
    if not isinstance(config, KAdaptationConfig):
        raise TypeError(f"config must be a KAdaptationConfig, got {type(config).__name__}")
    if adapter_layers(model) or RULES_ATTR in model._modules:
        raise ValueError(f"{type(model).__name__} is already adapted; merge it (vitlab.peft.merge_adapters) or start "
                         "from a fresh base model")
    if config.target_modules == "auto":
        _, targets = auto_targets(model, config.intrinsic_table, config.auto_top_k, config.head_modules)
    else:
        targets = find_targets(model, config.target_modules, config.fused_slices, config.head_modules)
    _check_shapes(targets, config.n)
    modules = dict(model.named_modules())
    by_module: dict[str, list[Target]] = defaultdict(list)
    for target in targets:
        by_module[target.module_name].append(target)
    if config.bias:
        no_bias = [name for name in by_module if modules[name].bias is None]
        if no_bias:
            raise ValueError(f"KAdaptation's per-layer bias is merged into the Linear's bias, but {no_bias[:4]} have "
                             "none: set KAdaptationConfig(bias=False)")
    generator = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
    weight = modules[targets[0].module_name].weight
    dd = {"device": weight.device, "dtype": weight.dtype}
    rules: dict[str, KroneckerRule] = {}
    trainable: list[nn.Parameter] = []
    for name, group in by_module.items():
        adapters, rows = {}, {}
        for target in group:
            shared = config.share_a
            if shared and target.role not in rules:
                rules[target.role] = KroneckerRule(config.n, config.a_rank, generator, **dd)
            rule = rules[target.role] if shared else KroneckerRule(config.n, config.a_rank, generator, **dd)
            key = target.slice_name or WHOLE
            adapters[key] = KAdaptationDelta(
                rule, target.out_features, target.in_features, config.rank, config.scale, config.dropout,
                config.path, own_rule=not shared, generator=generator, **dd,
            )
            rows[key] = target.rows
        wrapper = DeltaLinear(modules[name], adapters, rows, bias=config.bias)
        model.set_submodule(name, wrapper)
        trainable += [p for n, p in wrapper.named_parameters() if not n.startswith("base_layer.")]
    if rules:
        model.add_module(RULES_ATTR, nn.ModuleDict(rules))
        trainable += list(model.get_submodule(RULES_ATTR).parameters())
    heads = classifier_names(model, config.head_modules) if config.train_head else []
    freeze_base(model, trainable_modules=heads, trainable_params=trainable)
    options = {k: v for k, v in config.to_dict().items() if k != "target_modules"}
    set_peft_spec(model, "kadaptation", config.target_modules, options)
    return model


def merge_kadaptation(model: nn.Module, unload: bool = True, safe_merge: bool = True) -> nn.Module:
    """Fold ΔW (and the per-layer bias) into the base weights, deterministically (no dropout).

    With ``unload`` (default) the wrappers and shared factors are removed: the result has exactly the base model's
    parameters and runs as fast as it. With ``unload=False`` the merge can be undone by ``unmerge_kadaptation``.
    """
    if not kadaptation_layers(model):
        raise ValueError(f"{type(model).__name__} has no KAdaptation layers (already merged, or never adapted)")
    return merge_adapters(model, unload=unload, safe_merge=safe_merge)


def unmerge_kadaptation(model: nn.Module) -> nn.Module:
    """Undo ``merge_kadaptation(model, unload=False)``."""
    if not kadaptation_layers(model):
        raise ValueError(f"{type(model).__name__} has no KAdaptation layers to unmerge")
    return unmerge_adapters(model)
