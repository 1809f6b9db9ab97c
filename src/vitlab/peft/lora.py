"""LoRA and LoKr baselines through HF ``peft`` with timm target presets, and ``lora_qv`` on vitlab's row-slice wrapper.

``apply_lora`` / ``apply_lokr`` call ``peft.inject_adapter_in_model`` (the model keeps its class and parameter
prefixes: ``blocks.0.attn.qkv.lora_A.default.weight``). Targets take peft's list/regex syntax or a preset of
``TIMM_TARGET_PRESETS`` (default ``"qkv"``: every fused ``qkv``).

Why ``lora_qv`` is not peft: timm fuses the query, key and value projections into one ``qkv`` Linear, and a peft
layer always adapts a whole weight matrix, so peft LoRA on ``qkv`` adapts Q, K **and** V (peft PR #1705: "if we have
fused QKV but we want to apply LoRA only to Q and V ... this is currently not possible"). ``lora_qv`` puts a LoRA
delta ``(α/r)·B A`` on only the Q and V row slices, using the same ``DeltaLinear`` wrapper as KAdaptation (the
reference LoRA baseline adapts only W_q and W_v). Note that peft LoRA r on the whole fused ``qkv`` and ``lora_qv`` at
the same r have the same parameter count: r·(d + 3d) = 2·r·(d + d).

Example:
    >>> import timm
    >>> model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2,
    ...                           num_heads=2, num_classes=10)
    >>> model = apply_lora_qv(model, r=4)
    >>> sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head"))
    1536
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.peft.control import adapter_layers, set_peft_spec
from vitlab.peft.delta_linear import DeltaLinear
from vitlab.peft.freeze import freeze_base
from vitlab.peft.targets import classifier_names, find_targets, resolve_preset

__all__ = ["LoRADelta", "apply_lokr", "apply_lora", "apply_lora_qv"]


class LoRADelta(nn.Module):
    """``x[..., in] -> (α/r) · dropout(x) Aᵀ Bᵀ [..., out]`` with ``A`` Kaiming-uniform and ``B`` zero (peft's init)."""

    def __init__(self, out_features: int, in_features: int, r: int, alpha: float, dropout: float = 0.0,
                 device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.lora_A = nn.Parameter(torch.empty(r, in_features, **dd))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, **dd))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale, self.dropout = alpha / r, float(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(x, self.dropout, self.training) if self.dropout else x
        return F.linear(F.linear(x.to(self.lora_A.dtype), self.lora_A), self.lora_B) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """Dense ``(out, in)`` update ``(α/r) B A``."""
        return (self.lora_B @ self.lora_A) * self.scale


def _finish(model: nn.Module, method: str, target_modules: Any, options: dict[str, Any],
            adapter_params: list[nn.Parameter], train_head: bool, head_modules: Sequence[str] | None) -> nn.Module:
    heads = classifier_names(model, head_modules) if train_head else []
    freeze_base(model, trainable_modules=heads, trainable_params=adapter_params)
    set_peft_spec(model, method, target_modules, options)
    return model


def _check_fresh(model: nn.Module) -> None:
    if adapter_layers(model):
        raise ValueError(f"{type(model).__name__} is already adapted; start from a fresh base model")


def _inject(model: nn.Module, config: Any) -> list[nn.Parameter]:
    from peft import inject_adapter_in_model

    before = {id(p) for p in model.parameters()}
    try:
        inject_adapter_in_model(config, model)
    except ValueError as err:  # peft: "Target modules ... not found in the base model"
        from vitlab.peft.targets import linear_module_names

        raise ValueError(f"{err}. Candidate Linear modules: {linear_module_names(model)[:12]}") from err
    return [p for p in model.parameters() if id(p) not in before]


def apply_lora(model: nn.Module, target_modules: str | Sequence[str] | None = "qkv", r: int = 8,
               alpha: float | None = None, dropout: float = 0.0, train_head: bool = True,
               head_modules: Sequence[str] | None = None) -> nn.Module:
    """HF peft LoRA on the targeted Linears (whole weights; default every fused ``qkv``), base frozen.

    Args:
        model: the model (changed in place).
        target_modules: preset name, list of names or regex (peft syntax); ``None`` means ``"qkv"``.
        r: LoRA rank. alpha: LoRA alpha (default ``r``, i.e. scale 1). dropout: LoRA input dropout.
        train_head: keep the classifier trainable. head_modules: classifier names (default timm's).
    """
    from peft import LoraConfig

    _check_fresh(model)
    target = resolve_preset(target_modules or "qkv")
    alpha = float(r if alpha is None else alpha)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target, bias="none")
    params = _inject(model, config)
    options = {"r": r, "alpha": alpha, "dropout": dropout, "train_head": train_head, "head_modules": head_modules}
    return _finish(model, "lora", target_modules, options, params, train_head, head_modules)


def apply_lokr(model: nn.Module, target_modules: str | Sequence[str] | None = "qkv", r: int = 8,
               alpha: float | None = None, decompose_factor: int = -1, decompose_both: bool = False,
               train_head: bool = True, head_modules: Sequence[str] | None = None) -> nn.Module:
    """HF peft LoKr (one Kronecker term ``(α/r)·W1 ⊗ W2`` per layer, nothing shared) on the targeted Linears.

    ``decompose_factor=32`` gives KAdaptation's block shapes for a single, unshared term (see research notes §4.3).
    """
    from peft import LoKrConfig

    _check_fresh(model)
    target = resolve_preset(target_modules or "qkv")
    alpha = float(r if alpha is None else alpha)
    config = LoKrConfig(r=r, alpha=alpha, target_modules=target, decompose_factor=decompose_factor,
                        decompose_both=decompose_both)
    params = _inject(model, config)
    options = {"r": r, "alpha": alpha, "decompose_factor": decompose_factor, "decompose_both": decompose_both,
               "train_head": train_head, "head_modules": head_modules}
    return _finish(model, "lokr", target_modules, options, params, train_head, head_modules)


def apply_lora_qv(model: nn.Module, target_modules: str | Sequence[str] | None = None, r: int = 4,
                  alpha: float | None = None, dropout: float = 0.0, fused_slices: Sequence[str] = ("q", "v"),
                  train_head: bool = True, head_modules: Sequence[str] | None = None, seed: int | None = 0
                  ) -> nn.Module:
    """LoRA on only the query and value rows of fused ``qkv`` layers (or on any Linear matched by ``target_modules``).

    Args:
        model: the model (changed in place).
        target_modules: as in ``KAdaptationConfig`` (default: attention Q and V). fused_slices: rows of a fused qkv.
        r, alpha, dropout: LoRA rank, alpha (default ``r``) and input dropout.
        seed: seed of the ``A`` initialisation (global RNG restored afterwards); ``None`` uses the global RNG.
    """
    _check_fresh(model)
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"r must be a positive int, got {r!r}")
    targets = find_targets(model, target_modules, fused_slices, head_modules)
    alpha = float(r if alpha is None else alpha)
    modules = dict(model.named_modules())
    grouped = defaultdict(list)
    for t in targets:
        grouped[t.module_name].append(t)
    params: list[nn.Parameter] = []
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for name, group in grouped.items():
            base = modules[name]
            dd = {"device": base.weight.device, "dtype": base.weight.dtype}
            adapters = {t.slice_name or "all": LoRADelta(t.out_features, t.in_features, r, alpha, dropout, **dd)
                        for t in group}
            wrapper = DeltaLinear(base, adapters, {t.slice_name or "all": t.rows for t in group})
            model.set_submodule(name, wrapper)
            params += list(wrapper.adapters.parameters())
    options = {"r": r, "alpha": alpha, "dropout": dropout, "fused_slices": list(fused_slices),
               "train_head": train_head, "head_modules": head_modules, "seed": seed}
    return _finish(model, "lora_qv", target_modules, options, params, train_head, head_modules)
