"""``KAdaptationModel``: the peft tuner of KAdaptation, registered with peft as ``peft_type="KADAPTATION"``.

``peft.get_peft_model(model, KAdaptationConfig(...))`` replaces each targeted ``nn.Linear`` by a ``KAdaptationLayer``
(parameter names keep their prefixes: ``base_model.model.blocks.0.attn.qkv.kadaptation_u.default.q``); the shared
``A`` factors live once per adapter on the tuner as ``base_model.kadaptation_A.<adapter>.<role>_left`` (saved in
``adapter_model.safetensors`` as ``base_model.kadaptation_A.q_left``). The base is frozen; the classifier head trains
through peft's ``modules_to_save``. Everything peft offers then works: ``print_trainable_parameters``,
``save_pretrained`` / ``PeftModel.from_pretrained``, ``merge_and_unload``, ``disable_adapter``, ``add_adapter`` /
``set_adapter``.

Example:
    >>> import timm, torch
    >>> from peft import get_peft_model
    >>> model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2,
    ...                           num_heads=2, num_classes=10).eval()
    >>> x = torch.randn(2, 3, 32, 32)
    >>> before = model(x)
    >>> model = get_peft_model(model, KAdaptationConfig(n=8))
    >>> torch.equal(model(x), before)  # ΔW = 0 at initialisation
    True
    >>> model.get_nb_trainable_parameters()[0] - 650  # minus the head (64 * 10 + 10)
    896
"""

from __future__ import annotations

import math

from torch import nn

from vitlab.peft.control import merge_adapters
from vitlab.peft.kadaptation.config import KADAPTATION, KAdaptationConfig
from vitlab.peft.kadaptation.layer import KAdaptationLayer
from vitlab.peft.registration import register_with_peft
from vitlab.peft.slice_tuner import RowSliceTuner, check_plain_base
from vitlab.peft.targets import Target

__all__ = ["KAdaptationModel", "apply_kadaptation", "kadaptation_layers", "merge_kadaptation"]


def _divisors(value: int) -> list[int]:
    return [d for d in range(1, value + 1) if value % d == 0]


class KAdaptationModel(RowSliceTuner):
    """peft ``BaseTuner`` of KAdaptation (see the module docstring); built by ``peft.get_peft_model``."""

    prefix = "kadaptation_"
    tuner_layer_cls = KAdaptationLayer
    uses_shared_state = True
    shared_attr = "kadaptation_A"

    def _check_targets(self, peft_config: KAdaptationConfig, targets: list[Target]) -> None:
        n = peft_config.n
        bad = [t for t in targets if t.out_features % n or t.in_features % n]
        if bad:
            lines = [
                f"{t.module_name}{f' ({t.slice_name} rows)' if t.slice_name else ''}: {t.out_features} x "
                f"{t.in_features}, n that work: {_divisors(math.gcd(t.out_features, t.in_features))}" for t in bad[:6]
            ]
            common = _divisors(math.gcd(*(v for t in targets for v in (t.out_features, t.in_features))))
            raise ValueError(
                f"KAdaptation n={n} must divide both dimensions of every targeted weight block; it does not for "
                + "; ".join(lines) + f". Values of n valid for all {len(targets)} targets: {common}"
            )
        smallest = min(targets, key=lambda t: min(t.out_features, t.in_features))
        limit = min(smallest.out_features, smallest.in_features) // n
        if peft_config.rank > limit:
            raise ValueError(
                f"KAdaptation rank={peft_config.rank} exceeds the size of B_i = (out/n) x (in/n), which is "
                f"{smallest.out_features // n} x {smallest.in_features // n} for {smallest.module_name}"
                f"{f' ({smallest.slice_name} rows)' if smallest.slice_name else ''} with n={n}: a larger rank adds "
                f"parameters but no rank; use rank <= {limit}, or a smaller n"
            )


register_with_peft(KADAPTATION, KAdaptationConfig, KAdaptationModel)


def kadaptation_layers(model: nn.Module) -> list[tuple[str, KAdaptationLayer]]:
    """``(name, KAdaptationLayer)`` of every KAdaptation-wrapped Linear, named as in the base model
    (``blocks.0.attn.qkv``) whether ``model`` is the ``PeftModel`` or the base model it wraps."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return [(name, m) for name, m in inner.named_modules() if isinstance(m, KAdaptationLayer)]


def apply_kadaptation(model: nn.Module, config: KAdaptationConfig | None = None, adapter_name: str = "default"):
    """``peft.get_peft_model(model, config)`` for KAdaptation (kept from vitlab 0.1; same seed, same numbers).

    Args:
        model: any ``nn.Module`` with ``nn.Linear`` layers (timm ViTs, the Inception Transformer, transformers ViTs).
        config: ``KAdaptationConfig`` (defaults: the reference structure on the attention Q and V projections).
        adapter_name: name of the adapter.

    Returns:
        A ``peft.PeftModel`` wrapping ``model`` (adapted in place, base frozen, head in ``modules_to_save``).
    """
    from peft import get_peft_model

    check_plain_base(model, adapter_name)
    config = config or KAdaptationConfig()
    if not isinstance(config, KAdaptationConfig):
        raise TypeError(f"config must be a KAdaptationConfig, got {type(config).__name__}")
    return get_peft_model(model, config, adapter_name=adapter_name)


def merge_kadaptation(model: nn.Module, safe_merge: bool = True) -> nn.Module:
    """Fold ΔW (and the delta biases) into the weights and return the plain base model: exactly the base model's
    parameter names and shapes, outputs unchanged, inference as fast as the base (peft's ``merge_and_unload``; what
    :func:`vitlab.peft.merge_adapters` does for every method).

    Args:
        model: the ``peft.PeftModel`` that :func:`apply_kadaptation` / ``peft.get_peft_model`` returned.
        safe_merge: refuse to write non-finite weights.

    Example:
        >>> import timm, torch
        >>> def vit():
        ...     return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=1,
        ...                              num_heads=2, num_classes=3).eval()
        >>> plain = merge_kadaptation(apply_kadaptation(vit(), KAdaptationConfig(n=8)))
        >>> sorted(plain.state_dict()) == sorted(vit().state_dict())
        True
    """
    if not kadaptation_layers(model):
        raise ValueError(f"{type(model).__name__} has no KAdaptation layers (already merged, or adapted with another "
                         "method: vitlab.peft.merge_adapters merges any method)")
    return merge_adapters(model, unload=True, safe_merge=safe_merge)
