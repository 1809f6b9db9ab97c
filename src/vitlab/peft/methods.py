"""The one registry of fine-tuning methods, ``PEFT_METHODS``, and ``build_peft_transform(method, ...)``.

``build_peft_transform`` returns a model transform ``nn.Module -> nn.Module`` (the training harness's extension point
B, applied before the optimizer collects ``requires_grad`` parameters); the config section
``peft: {method, target_modules, options}`` maps to ``build_peft_transform(peft.method, peft.target_modules,
**peft.options)`` (``vitlab.train.extensions`` resolves ``peft.method`` through this same table). The layer-adapting
methods (``kadaptation``, ``lora``, ``lokr``, ``lora_qv``) return a ``peft.PeftModel``: ``save_pretrained`` writes a
standard peft adapter folder.

| method | what trains | options (besides ``train_head``, ``head_modules``) |
|---|---|---|
| ``full`` | everything | — |
| ``linear`` (alias ``linear_probe``) | the classifier head | — |
| ``kadaptation`` | Kronecker factors + per-layer bias + head (peft) | fields of ``KAdaptationConfig`` |
| ``lora`` | HF peft LoRA on whole Linears (default fused ``qkv``) + head | ``r, alpha, dropout`` |
| ``lokr`` | HF peft LoKr + head | ``r, alpha, decompose_factor, decompose_both`` |
| ``lora_qv`` | LoRA on Q and V rows of fused ``qkv`` + head (peft) | ``r, alpha, dropout, fused_slices, seed`` |
| ``adapter`` | bottleneck adapters after each MLP + head | ``bottleneck`` |
| ``subspace`` | θ_d of θ = θ₀ + P·θ_d (intrinsic dimension) | fields of ``SubspaceConfig`` (``dim`` required) |

Other packages add methods with ``register_method`` (the harness's ``register_model_transform`` writes to the same
table); ``subspace`` lives in ``vitlab.peft.subspace``. ``count_parameters`` reports every method's trainable
parameters the same way (a ``modules_to_save`` head counted once).

Example:
    >>> import timm
    >>> model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2,
    ...                           num_heads=2, num_classes=10)
    >>> model = build_peft_transform("linear")(model)
    >>> count_parameters(model)["trainable"], count_parameters(model)["adaptation"]
    (490, 0)
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from peft import PeftConfig
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

from vitlab.checks import check_bool
from vitlab.peft.adapter import apply_bottleneck_adapters
from vitlab.peft.control import PEFT_SPEC_ATTR, set_peft_spec
from vitlab.peft.freeze import freeze_base
from vitlab.peft.kadaptation import KAdaptationConfig, apply_kadaptation
from vitlab.peft.kadaptation.config import RENAMED_KEYWORDS
from vitlab.peft.lora import apply_lokr, apply_lora, apply_lora_qv, lokr_options, lora_options, lora_qv_config
from vitlab.peft.slice_config import check_target_modules
from vitlab.peft.subspace import build_subspace_transform
from vitlab.peft.targets import classifier_names

__all__ = ["PEFT_METHODS", "RENAMED_OPTIONS", "build_peft_transform", "count_parameters", "register_method"]

Transform = Callable[[nn.Module], nn.Module]
Builder = Callable[..., Transform]
_PEFT_BASE_FIELDS = {f.name for f in fields(PeftConfig)}

#: vitlab 0.1 option names -> current ones per method (KAdaptationConfig's, e.g. bias -> delta_bias);
#: ``vitlab peft convert`` renames them, and the option check names the new spelling.
RENAMED_OPTIONS = {"kadaptation": RENAMED_KEYWORDS}


def _full(target_modules: None = None, **options: Any) -> Transform:
    _no_targets("full", target_modules)
    _check_options("full", options, ())

    def transform(model: nn.Module) -> nn.Module:
        for param in model.parameters():
            param.requires_grad_(True)
        set_peft_spec(model, "full", None, {})
        return model

    return transform


def _linear(target_modules: None = None, head_modules: Sequence[str] | None = None, **options: Any) -> Transform:
    _no_targets("linear", target_modules)
    _check_options("linear", options, ())

    def transform(model: nn.Module) -> nn.Module:
        heads = classifier_names(model, head_modules)
        if not heads:
            raise ValueError(f"linear probing needs a classifier head, and {type(model).__name__} has no "
                             "get_classifier(); pass options={'head_modules': ['<name>']}")
        freeze_base(model, trainable_modules=heads)
        set_peft_spec(model, "linear", None, {"head_modules": head_modules})
        return model

    return transform


def _freeze_norms(model: nn.Module) -> None:
    """Keep what peft made trainable; frozen BatchNorms normalise with their stored statistics (``freeze_base``)."""
    freeze_base(model, trainable_params=[p for p in model.parameters() if p.requires_grad])


def _kadaptation(target_modules: Any = None, **options: Any) -> Transform:
    allowed = [f.name for f in fields(KAdaptationConfig) if f.name not in _PEFT_BASE_FIELDS | {"target_modules"}]
    _check_options("kadaptation", options, allowed)
    config = KAdaptationConfig(target_modules=target_modules, **options)  # validates now, before any model exists

    def transform(model: nn.Module) -> nn.Module:
        adapted = apply_kadaptation(model, copy.deepcopy(config))
        _freeze_norms(adapted)
        set_peft_spec(adapted, "kadaptation", target_modules, options)
        return adapted

    return transform


def _wrap(name: str, fn: Callable[..., nn.Module], validate: Callable[..., Any] | None = None) -> Builder:
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("model", "target_modules")]

    def builder(target_modules: Any = None, **options: Any) -> Transform:
        _check_options(name, options, allowed)
        if validate is not None:
            validate(target_modules, **options)  # option values refused now, before any model exists

        def transform(model: nn.Module) -> nn.Module:
            adapted = fn(model, target_modules, **options)
            _freeze_norms(adapted)
            set_peft_spec(adapted, name, target_modules, options)
            return adapted

        return transform

    return builder


def _adapter(target_modules: Any = None, **options: Any) -> Transform:
    allowed = ("bottleneck", "train_head", "head_modules")
    _check_options("adapter", options, allowed)
    target_modules = check_target_modules(target_modules)
    train_head, head_modules = check_bool("train_head", options.pop("train_head", True)), options.get("head_modules")

    def transform(model: nn.Module) -> nn.Module:
        before = {id(p) for p in model.parameters()}
        apply_bottleneck_adapters(model, target_modules, **options)
        new = [p for p in model.parameters() if id(p) not in before]
        heads = classifier_names(model, head_modules) if train_head else []
        freeze_base(model, trainable_modules=heads, trainable_params=new)
        set_peft_spec(model, "adapter", target_modules, {**options, "train_head": train_head})
        return model

    return transform


PEFT_METHODS: dict[str, Builder] = {
    "full": _full,
    "linear": _linear,
    "linear_probe": _linear,
    "kadaptation": _kadaptation,
    "lora": _wrap("lora", apply_lora, validate=lora_options),
    "lokr": _wrap("lokr", apply_lokr, validate=lokr_options),
    "lora_qv": _wrap("lora_qv", apply_lora_qv, validate=lora_qv_config),
    "adapter": _adapter,
    "subspace": build_subspace_transform,
}


def _no_targets(method: str, target_modules: Any) -> None:
    if target_modules is not None:
        raise ValueError(f"method {method!r} takes no target_modules (got {target_modules!r}); set it to null")


def _check_options(method: str, options: dict[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(options) - set(allowed))
    renamed = {k: v for k, v in RENAMED_OPTIONS.get(method, {}).items() if k in unknown}
    if renamed:
        spelled = ", ".join(f"{old!r} was renamed to {new!r}" for old, new in renamed.items())
        raise ValueError(f"peft method {method!r}: vitlab 0.1's option name(s) {sorted(renamed)} are no longer "
                         f"accepted: {spelled}; use the new name(s) in peft.options")
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for peft method {method!r}; valid options: {sorted(allowed)}")


def register_method(name: str, builder: Builder) -> Builder:
    """Add a fine-tuning method to ``PEFT_METHODS`` (the table ``peft.method`` resolves through, in the harness and
    in ``build_peft_transform``); returns ``builder`` so it can be used as a decorator's body.

    ``builder(target_modules, **options)`` must validate its options and return an ``nn.Module -> nn.Module``
    transform that freezes what it does not train and calls ``vitlab.peft.set_peft_spec`` (so its run can be
    exported). A layer-adapting method should return a ``peft.PeftModel``, whose adapter folder peft reads back.

    Raises:
        ValueError: an empty name, a non-callable builder, or a name already taken by another builder.
    """
    if not isinstance(name, str) or not name or not callable(builder):
        raise ValueError("register_method needs a non-empty name and a callable builder")
    if name in PEFT_METHODS and PEFT_METHODS[name] is not builder:
        raise ValueError(f"peft method {name!r} is already registered; choose another name")
    PEFT_METHODS[name] = builder
    return builder


def build_peft_transform(method: str | None, target_modules: str | Sequence[str] | None = None,
                         **options: Any) -> Transform:
    """The model transform for ``method``; options are validated now, targets when the transform runs.

    Args:
        method: a key of ``PEFT_METHODS``; ``None`` means ``"full"``.
        target_modules: what to adapt (method-specific default when ``None``): preset, list of names, regex, or
            ``"auto"`` for KAdaptation.
        **options: method options (see the module table).

    Returns:
        ``transform(model) -> model`` that adapts ``model`` in place and returns it.
    """
    method = method or "full"
    if method not in PEFT_METHODS:
        raise ValueError(f"unknown peft method {method!r}; choose one of {sorted(PEFT_METHODS)}")
    adapt = PEFT_METHODS[method](target_modules, **options)

    def transform(model: nn.Module) -> nn.Module:
        if not isinstance(model, nn.Module):
            raise TypeError(f"the {method!r} transform adapts an nn.Module (e.g. timm.create_model(...)), got "
                            f"{type(model).__name__}")
        return adapt(model)

    return transform


def count_parameters(model: nn.Module, head_modules: Sequence[str] | None = None) -> dict[str, int]:
    """Parameter counts, the same way for every method (shared tensors counted once; of a peft ``modules_to_save``
    head only the trained copy, not the frozen original).

    Args:
        model: the adapted model.
        head_modules: the classifier modules; default: timm's ``get_classifier()`` or a top-level ``classifier`` /
            ``head`` Linear, else (a model without either, e.g. an ``nn.Sequential``) the head the method was
            given: peft's ``modules_to_save`` copies, or the ``head_modules`` option of ``build_peft_transform``.

    Returns:
        ``total`` (all parameters), ``trainable``, ``head`` (trainable parameters of the classifier) and
        ``adaptation`` = ``trainable - head`` (the number PEFT papers report, e.g. 50,176 for KAdaptation on ViT-B).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"count_parameters needs an nn.Module, got {type(model).__name__}")
    params = {id(p): p for name, p in model.named_parameters() if ".original_module." not in f".{name}"}
    heads = classifier_names(model, head_modules) or ([] if head_modules is not None else _recorded_heads(model))
    head_ids = {id(p) for h in heads for p in model.get_submodule(h).parameters()}
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    head = sum(p.numel() for i, p in params.items() if p.requires_grad and i in head_ids)
    return {"total": sum(p.numel() for p in params.values()), "trainable": trainable, "head": head,
            "adaptation": trainable - head}


def _recorded_heads(model: nn.Module) -> list[str]:
    """The head a model without a recognisable classifier was adapted with: its peft ``modules_to_save`` wrappers,
    else the ``head_modules`` option recorded by ``set_peft_spec``."""
    wrapped = [name for name, module in model.named_modules() if isinstance(module, AuxiliaryTrainingWrapper)]
    if wrapped:
        return wrapped
    recorded = model.__dict__.get(PEFT_SPEC_ATTR, {}).get("options", {}).get("head_modules")
    return list(recorded) if isinstance(recorded, list | tuple) else []

