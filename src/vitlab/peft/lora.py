"""LoRA and LoKr baselines through HF ``peft`` with timm target presets, and ``lora_qv`` as a peft method of vitlab.

``apply_lora`` / ``apply_lokr`` call ``peft.get_peft_model`` with a ``LoraConfig`` / ``LoKrConfig`` (targets in
peft's list/regex syntax or a preset of ``TIMM_TARGET_PRESETS``, default ``"qkv"``: every fused ``qkv``; the
classifier head in ``modules_to_save``).

Why ``lora_qv`` is not peft's LoRA: timm fuses the query, key and value projections into one ``qkv`` Linear, and a
peft layer always adapts a whole weight matrix, so peft LoRA on ``qkv`` adapts Q, K **and** V (peft PR #1705: "if we
have fused QKV but we want to apply LoRA only to Q and V ... this is currently not possible"). ``LoraQVConfig``
(``peft_type="LORA_QV"``, registered with peft when ``vitlab.peft`` is imported) puts a LoRA delta ``(α/r)·B A`` on
only the Q and V row slices, with the row-slice layer KAdaptation uses (the reference LoRA baseline adapts only W_q
and W_v). peft LoRA r on the whole fused ``qkv`` and ``lora_qv`` at the same r have the same parameter count:
r·(d + 3d) = 2·r·(d + d).

Example:
    >>> import timm
    >>> from peft import get_peft_model
    >>> model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2,
    ...                           num_heads=2, num_classes=10)
    >>> model = get_peft_model(model, LoraQVConfig(r=4))
    >>> model.get_nb_trainable_parameters()[0] - 490  # minus the head
    1536
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import PeftConfig
from torch import nn

from vitlab.checks import check_bool, check_float, check_int
from vitlab.errors import ConfigError
from vitlab.peft.registration import PeftTypeName, register_with_peft
from vitlab.peft.slice_config import SliceAdapterConfig, check_target_modules, refuse_keywords
from vitlab.peft.slice_tuner import DeltaTerms, RowSliceLayer, RowSliceTuner, check_plain_base
from vitlab.peft.targets import Target, classifier_names, resolve_preset

__all__ = ["LORA_QV", "LoraQVConfig", "LoraQVLayer", "LoraQVModel", "apply_lokr", "apply_lora", "apply_lora_qv",
           "lokr_options", "lora_options", "lora_qv_config"]

LORA_QV = PeftTypeName("LORA_QV")  # peft_type (a str: peft's PeftType enum is closed)


@dataclass
class LoraQVConfig(SliceAdapterConfig):
    """LoRA ``(α/r)·B A`` on row slices (default the Q and V rows of every fused ``qkv``) or on whole Linears.

    Args:
        r: LoRA rank. alpha: LoRA alpha, finite and non-zero (default ``r``, i.e. scale 1). dropout: dropout on the
            LoRA input, in [0, 1).
        target_modules: as in ``KAdaptationConfig`` (default: attention Q and V). fused_slices: rows of a fused qkv
            Linear (a model with separate query/value Linears refuses anything but the default: set
            ``target_modules`` instead).
        train_head, modules_to_save: the classifier head trains through peft's ``modules_to_save``.
        seed: seed of the ``A`` initialisation (a private generator); ``None`` uses the global RNG.
    """

    r: int = field(default=4, metadata={"help": "LoRA rank"})
    alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (default r)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = LORA_QV
        self.r = check_int("r", self.r, minimum=1)
        if self.alpha is None:
            self.alpha = float(self.r)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or not math.isfinite(self.alpha) \
                or self.alpha == 0:
            raise ConfigError(f"alpha must be a finite non-zero number (the update is scaled by alpha / r, so "
                              f"alpha = 0 never trains), got {self.alpha!r}; leave it unset for alpha = r")
        self.alpha = float(self.alpha)
        self.dropout = check_float("dropout", self.dropout, minimum=0.0, maximum=1.0, below_maximum=True,
                                   fix="0 switches it off")
        self.check_slice_fields()


#: peft ``LoraConfig`` keyword names -> ``LoraQVConfig``'s (a peft LoRA user's first spelling)
LORA_KEYWORDS = {"lora_alpha": "alpha", "lora_dropout": "dropout"}


refuse_keywords(LoraQVConfig, LORA_KEYWORDS, lambda given, kwargs: (
    f"LoraQVConfig names peft LoraConfig's {sorted(given)} without the 'lora_' prefix: write LoraQVConfig("
    + ", ".join(f"{new}={kwargs[old]!r}" for old, new in given.items()) + ")"))


class LoraQVLayer(RowSliceLayer):
    """A frozen ``nn.Linear`` plus LoRA adapters on row slices: ``qvlora_A[<adapter>][<slice>] (r, in)`` (Kaiming
    uniform, as peft), ``qvlora_B[...] (b - a, r)`` (zero)."""

    adapter_layer_names = ("qvlora_A", "qvlora_B")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.qvlora_A = nn.ModuleDict()
        self.qvlora_B = nn.ModuleDict()
        self.settings: dict[str, dict[str, float]] = {}

    def update_layer(self, adapter_name: str, config: LoraQVConfig, targets: list[Target],
                     shared: nn.ParameterDict | None, generator: torch.Generator | None) -> None:
        """Create ``adapter_name``'s ``A`` and ``B`` for each of ``targets`` (row slices of this layer)."""
        weight = self.base_layer.weight
        dd = {"device": weight.device, "dtype": weight.dtype}
        self._record_slices(adapter_name, targets)
        lora_a, lora_b = nn.ParameterDict(), nn.ParameterDict()
        for target in targets:
            key = target.slice_name or "all"
            a = torch.empty(config.r, target.in_features)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
            lora_a[key] = nn.Parameter(a.to(**dd))
            lora_b[key] = nn.Parameter(torch.zeros(target.out_features, config.r, **dd))
        self.qvlora_A[adapter_name], self.qvlora_B[adapter_name] = lora_a, lora_b
        self.settings[adapter_name] = {"scale": config.alpha / config.r, "dropout": float(config.dropout)}
        self.set_adapter(self.active_adapters)

    def delta_terms(self, adapter_name: str) -> DeltaTerms:
        rows, setting = self.slice_rows[adapter_name], self.settings[adapter_name]
        lora_a, lora_b = self.qvlora_A[adapter_name], self.qvlora_B[adapter_name]
        right = torch.cat([lora_a[key] for key in rows], dim=0).T
        blocks, start = [], 0
        for key, (a, b) in rows.items():
            r = lora_b[key].shape[1]
            blocks.append((a, b, start, start + r, lora_b[key] * setting["scale"]))
            start = start + r  # not +=: under jit.trace a shape is a 0-d tensor, and += would change the block above
        return DeltaTerms(right=right, blocks=tuple(blocks), input_dropout=setting["dropout"])

    def delta_weight(self, adapter_name: str) -> tuple[torch.Tensor, None]:
        full = self.base_layer.weight.new_zeros(self.out_features, self.in_features)
        scale = self.settings[adapter_name]["scale"]
        for key, (a, b) in self.slice_rows[adapter_name].items():
            full[a:b] = (self.qvlora_B[adapter_name][key] @ self.qvlora_A[adapter_name][key]).to(full.dtype) * scale
        return full, None


class LoraQVModel(RowSliceTuner):
    """peft ``BaseTuner`` of ``lora_qv``; built by ``peft.get_peft_model(model, LoraQVConfig(...))``."""

    prefix = "qvlora_"
    tuner_layer_cls = LoraQVLayer

    def _check_targets(self, peft_config: LoraQVConfig, targets: list[Target]) -> None:
        smallest = min(targets, key=lambda t: min(t.out_features, t.in_features))
        limit = min(smallest.out_features, smallest.in_features)
        if peft_config.r > limit:
            raise ValueError(
                f"lora_qv r={peft_config.r} exceeds the adapted block of {smallest.module_name}"
                f"{f' ({smallest.slice_name} rows)' if smallest.slice_name else ''}, {smallest.out_features} x "
                f"{smallest.in_features}: a larger rank adds parameters but no rank; use r <= {limit}"
            )


register_with_peft(LORA_QV, LoraQVConfig, LoraQVModel)


def _head_modules(model: nn.Module, train_head: bool, head_modules: Sequence[str] | None) -> list[str] | None:
    if not train_head:
        return None
    heads = classifier_names(model, head_modules)
    if not heads:
        raise ValueError(f"train_head=True but {type(model).__name__} has no recognisable classifier: pass "
                         "head_modules=['<name>'] or train_head=False")
    return heads


def _peft_model(model: nn.Module, config: PeftConfig) -> nn.Module:
    from peft import get_peft_model

    try:
        return get_peft_model(model, config)
    except ValueError as err:  # peft: "Target modules ... not found" / "No modules were targeted for adaptation"
        if "target" not in str(err).lower():
            raise
        from vitlab.peft.targets import linear_module_names

        raise ValueError(f"{err}. Candidate Linear modules: {linear_module_names(model)[:12]}") from err


def _check_head_options(train_head: Any, head_modules: Any) -> bool:
    """``train_head`` as a bool; a bare string ``head_modules`` is refused."""
    if isinstance(head_modules, str):
        raise ConfigError(f"head_modules must be a list of module names, got the string {head_modules!r}: write "
                          f"head_modules=[{head_modules!r}]")
    return check_bool("train_head", train_head)


def _check_alpha(alpha: Any, r: int) -> float:
    """``alpha`` (default ``r``) as a finite, non-zero float."""
    if alpha is None:
        return float(r)
    alpha = check_float("alpha", alpha, fix="leave it unset for alpha = r")
    if alpha == 0:
        raise ConfigError("alpha must be non-zero (the update is scaled by alpha / r, so alpha = 0 never trains), got "
                          "0; leave it unset for alpha = r")
    return alpha


def lora_options(target_modules: Any = None, r: Any = 8, alpha: Any = None, dropout: Any = 0.0,
                 train_head: Any = True, head_modules: Any = None) -> dict[str, Any]:
    """``apply_lora``'s arguments checked (``ConfigError`` naming the fix) and normalised, before any model is
    touched; returns them as ``apply_lora`` keyword arguments.

    Example:
        >>> lora_options("qkv", r=4)["alpha"]
        4.0
    """
    r = check_int("r", r, minimum=1)
    train_head = _check_head_options(train_head, head_modules)
    return {"target_modules": check_target_modules(target_modules), "r": r, "alpha": _check_alpha(alpha, r),
            "dropout": check_float("dropout", dropout, minimum=0.0, maximum=1.0, below_maximum=True,
                                   fix="0 switches it off"),
            "train_head": train_head, "head_modules": head_modules}


def lokr_options(target_modules: Any = None, r: Any = 8, alpha: Any = None, decompose_factor: Any = -1,
                 decompose_both: Any = False, train_head: Any = True, head_modules: Any = None) -> dict[str, Any]:
    """``apply_lokr``'s arguments checked (``ConfigError`` naming the fix) and normalised; see ``lora_options``."""
    r = check_int("r", r, minimum=1)
    factor = check_int("decompose_factor", decompose_factor, minimum=-1,
                       fix="-1 picks the factor automatically, otherwise give a whole number >= 1")
    if factor == 0:
        raise ConfigError("decompose_factor must be -1 (automatic) or an int >= 1, got 0")
    train_head = _check_head_options(train_head, head_modules)
    return {"target_modules": check_target_modules(target_modules), "r": r, "alpha": _check_alpha(alpha, r),
            "decompose_factor": factor, "decompose_both": check_bool("decompose_both", decompose_both),
            "train_head": train_head, "head_modules": head_modules}


def apply_lora(model: nn.Module, target_modules: str | Sequence[str] | None = "qkv", r: int = 8,
               alpha: float | None = None, dropout: float = 0.0, train_head: bool = True,
               head_modules: Sequence[str] | None = None) -> nn.Module:
    """``peft.get_peft_model`` with LoRA on the targeted Linears (whole weights; default every fused ``qkv``).

    Args:
        model: the model (adapted in place and wrapped).
        target_modules: preset name, list of names or regex (peft syntax); ``None`` means ``"qkv"``.
        r: LoRA rank. alpha: LoRA alpha (default ``r``, i.e. scale 1; non-zero). dropout: LoRA input dropout.
        train_head: train the classifier (``modules_to_save``). head_modules: classifier names (default timm's).

    Returns:
        A ``peft.PeftModel``.

    Raises:
        ConfigError: a bad option (``lora_options``), before the model is touched.
    """
    from peft import LoraConfig

    check_plain_base(model)
    o = lora_options(target_modules, r=r, alpha=alpha, dropout=dropout, train_head=train_head,
                     head_modules=head_modules)
    config = LoraConfig(r=o["r"], lora_alpha=o["alpha"], lora_dropout=o["dropout"], bias="none",
                        target_modules=resolve_preset(o["target_modules"] or "qkv"),
                        modules_to_save=_head_modules(model, o["train_head"], head_modules))
    return _peft_model(model, config)


def apply_lokr(model: nn.Module, target_modules: str | Sequence[str] | None = "qkv", r: int = 8,
               alpha: float | None = None, decompose_factor: int = -1, decompose_both: bool = False,
               train_head: bool = True, head_modules: Sequence[str] | None = None) -> nn.Module:
    """``peft.get_peft_model`` with LoKr (one Kronecker term ``(α/r)·W1 ⊗ W2`` per layer, nothing shared).

    ``decompose_factor=32`` gives KAdaptation's block shapes for a single, unshared term (see research notes §4.3);
    ``-1`` picks it automatically. Bad options raise ``ConfigError`` (``lokr_options``) before the model is touched.
    """
    from peft import LoKrConfig

    check_plain_base(model)
    o = lokr_options(target_modules, r=r, alpha=alpha, decompose_factor=decompose_factor,
                     decompose_both=decompose_both, train_head=train_head, head_modules=head_modules)
    config = LoKrConfig(r=o["r"], alpha=o["alpha"], decompose_factor=o["decompose_factor"],
                        decompose_both=o["decompose_both"], target_modules=resolve_preset(o["target_modules"] or "qkv"),
                        modules_to_save=_head_modules(model, o["train_head"], head_modules))
    return _peft_model(model, config)


def lora_qv_config(target_modules: str | Sequence[str] | None = None, r: int = 4, alpha: float | None = None,
                   dropout: float = 0.0, fused_slices: Sequence[str] = ("q", "v"), train_head: bool = True,
                   head_modules: Sequence[str] | None = None, seed: int | None = 0) -> LoraQVConfig:
    """The ``LoraQVConfig`` of ``apply_lora_qv``'s arguments (validated now, before any model is touched)."""
    if isinstance(head_modules, str):
        raise ConfigError(f"head_modules must be a list of module names, got the string {head_modules!r}: write "
                          f"head_modules=[{head_modules!r}]")
    return LoraQVConfig(r=r, alpha=alpha, dropout=dropout, target_modules=target_modules,
                        fused_slices=tuple(fused_slices) if isinstance(fused_slices, list) else fused_slices,
                        train_head=train_head, modules_to_save=list(head_modules) if head_modules else None,
                        seed=seed)


def apply_lora_qv(model: nn.Module, target_modules: str | Sequence[str] | None = None, r: int = 4,
                  alpha: float | None = None, dropout: float = 0.0, fused_slices: Sequence[str] = ("q", "v"),
                  train_head: bool = True, head_modules: Sequence[str] | None = None, seed: int | None = 0
                  ) -> nn.Module:
    """``peft.get_peft_model(model, LoraQVConfig(...))``: LoRA on only the query and value rows of fused ``qkv``.

    Args:
        model: the model (adapted in place and wrapped).
        target_modules: as in ``KAdaptationConfig`` (default: attention Q and V). fused_slices: rows of a fused qkv.
        r, alpha, dropout: LoRA rank, alpha (default ``r``) and input dropout.
        seed: seed of the ``A`` initialisation; ``None`` uses the global RNG.
    """
    check_plain_base(model)
    config = lora_qv_config(target_modules, r=r, alpha=alpha, dropout=dropout, fused_slices=fused_slices,
                            train_head=train_head, head_modules=head_modules, seed=seed)
    return _peft_model(model, config)
