"""Row-slice tuners for HF peft: adapt only some output rows of an ``nn.Linear`` (the Q and V rows of a fused ``qkv``).

A peft layer always adapts a whole weight, so peft cannot adapt only the query and value rows of timm's fused ``qkv``
(peft PR #1705). ``RowSliceLayer`` is a peft ``BaseTunerLayer`` whose adapters each own one or more row slices
``(a, b)`` of the wrapped Linear; ``RowSliceTuner`` is the ``BaseTuner`` that finds the targets with
``vitlab.peft.targets.find_targets`` (fused ``qkv`` slices, or whole Linears such as HF ``query`` / ``value``) and
trains the classifier head through peft's ``modules_to_save``. KAdaptation and ``lora_qv`` are built on them.

A subclass layer describes an adapter's update with ``delta_terms(name)``: a low-rank part (``h = x R`` with ``R``
``(in, K)`` for all slices at once, then ``h[:, k0:k1] L_sᵀ`` added in place to the output rows of slice ``s``),
and/or a dense ``(out, in)`` ΔW, and/or a bias ``(out,)``. The forward pass is ``F.linear(x, W + ΔW, b + bias)``
followed by one small ``addmm_`` per slice: the bias folded into the Linear's, no dense ΔW and no GEMM over rows that
are not adapted on the low-rank path.

Example:
    >>> import timm
    >>> from peft import get_peft_model
    >>> from vitlab.peft import KAdaptationConfig
    >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=1,
    ...                         num_heads=2, num_classes=3)
    >>> model = get_peft_model(vit, KAdaptationConfig(n=8))
    >>> type(model.base_model.model.blocks[0].attn.qkv).__name__, model.base_model.model.blocks[0].attn.qkv.slice_rows
    ('KAdaptationLayer', {'default': {'q': (0, 64), 'v': (128, 192)}})
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import (
    BaseTuner,
    BaseTunerLayer,
    check_adapters_to_merge,
    check_target_module_exists,
)
from torch import nn

from vitlab.models.cpu_linear import recording_or_transforming
from vitlab.peft.auto import auto_targets
from vitlab.peft.targets import Target, classifier_names, find_targets

__all__ = ["AdapterShapeError", "DeltaTerms", "RowSliceLayer", "RowSliceTuner", "check_plain_base"]


class AdapterShapeError(ValueError, RuntimeError):
    """Saved adapter tensors do not fit the model (a ``ValueError``, and a ``RuntimeError`` as torch's own
    ``load_state_dict`` size-mismatch error, which it replaces)."""


def check_plain_base(model: Any, adapter_name: Any = "default") -> None:
    """Refuse what vitlab's ``apply_*`` functions cannot adapt: a non-module, a model that already carries peft
    adapter layers (a ``PeftModel`` or the model inside one), or an adapter name peft cannot key a module by.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``adapter_name`` not a string.
        ValueError: the model is adapted already, or ``adapter_name`` is empty or holds a ``"."``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be the nn.Module to adapt (e.g. timm.create_model(...)), got "
                        f"{type(model).__name__}")
    if any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} already carries peft adapter layers; a second adapter goes on the "
                         "PeftModel: peft_model.add_adapter('<name>', config), then peft_model.set_adapter('<name>')")
    if not isinstance(adapter_name, str):
        raise TypeError(f"adapter_name must be a string such as 'default', got {type(adapter_name).__name__}")
    if not adapter_name or "." in adapter_name:
        raise ValueError(f"adapter_name must be a non-empty name without '.', got {adapter_name!r}")


class DeltaTerms(NamedTuple):
    """One adapter's update of a ``RowSliceLayer`` (any part may be empty).

    Attributes:
        right: ``(in, K)``; ``h = dropout(x) R`` is shared by the low-rank blocks.
        blocks: ``(a, b, k0, k1, L)`` with ``L`` ``(b - a, k1 - k0)`` (scale included): output rows ``a:b`` get
            ``h[:, k0:k1] Lᵀ``.
        dense: ``(out, in)`` ΔW added to the weight in the forward pass (dropout already applied).
        bias: ``(out,)`` added to the output.
        input_dropout: dropout probability on ``x`` before ``R`` (training only).
    """

    right: torch.Tensor | None = None
    blocks: tuple[tuple[int, int, int, int, torch.Tensor], ...] = ()
    dense: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    input_dropout: float = 0.0


def _add_to_rows(out: torch.Tensor, h: torch.Tensor, spans: tuple[tuple[int, int, int, int], ...],
                 lefts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``_AddToRows`` with plain ops (a new tensor; for graph recorders and ``torch.func`` transforms):
    ``out (..., O)``, ``h (N, K)``."""
    pieces, end = [], 0
    for span, left in zip(spans, lefts, strict=True):
        a, b, k0, k1 = (int(v) for v in span)  # under jit.trace a width read from a shape is a 0-d tensor
        pieces += [out[..., end:a], out[..., a:b] + (h[:, k0:k1] @ left.T).view(*out.shape[:-1], b - a)]
        end = b
    return torch.cat([*pieces, out[..., end:]], dim=-1)


class _AddToRows(torch.autograd.Function):
    """``out[..., a:b] += h[:, k0:k1] @ Lᵀ`` for each block, in place on ``out``; the backward pass hands ``out``'s
    gradient through untouched (autograd's in-place-on-a-view path would clone the whole output gradient per block).
    The backward pass uses differentiable ops on the saved inputs, so ``create_graph=True`` (a gradient penalty)
    differentiates through it."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, h: torch.Tensor, spans: tuple[tuple[int, int, int, int], ...],
                *lefts: torch.Tensor) -> torch.Tensor:
        flat = out.view(-1, out.shape[-1])
        for (a, b, k0, k1), left in zip(spans, lefts, strict=True):
            flat[:, a:b].addmm_(h[:, k0:k1], left.T)
        ctx.mark_dirty(out)
        ctx.spans = spans
        ctx.save_for_backward(h, *lefts)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, *lefts = ctx.saved_tensors
        flat = grad.reshape(-1, grad.shape[-1])
        grad_h = torch.zeros_like(h) if ctx.needs_input_grad[1] else None
        grad_lefts = []
        for index, ((a, b, k0, k1), left) in enumerate(zip(ctx.spans, lefts, strict=True)):
            rows = flat[:, a:b]
            if grad_h is not None:
                grad_h[:, k0:k1] = rows @ left
            grad_lefts.append(rows.T @ h[:, k0:k1] if ctx.needs_input_grad[3 + index] else None)
        return grad, grad_h, None, *grad_lefts


class RowSliceLayer(nn.Module, BaseTunerLayer):
    """A frozen ``nn.Linear`` (``base_layer``) plus named adapters, each adapting row slices of its weight.

    Subclasses set ``adapter_layer_names`` and implement ``update_layer`` (which must fill ``slice_rows[name]``),
    ``delta_terms`` and ``delta_weight``.

    Args:
        base_layer: the wrapped ``nn.Linear`` (weight ``(out, in)``).
    """

    def __init__(self, base_layer: nn.Module) -> None:
        nn.Module.__init__(self)
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"{type(self).__name__} wraps an nn.Linear, got {type(base_layer).__name__}; target "
                            "only Linear modules")
        self.base_layer = base_layer
        self.slice_rows: dict[str, dict[str, tuple[int, int]]] = {}
        self.merged_adapters: list[str] = []
        self._disable_adapters = False
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features

    @abstractmethod
    def delta_terms(self, adapter_name: str) -> DeltaTerms:
        """The update of ``adapter_name`` as used by ``forward`` (training-mode dropout included)."""

    @abstractmethod
    def delta_weight(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(ΔW (out, in), Δb (out,) or None)`` of ``adapter_name``, deterministic (no dropout): what merge adds."""

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """peft's name for the dense ``(out, in)`` update of ``adapter_name``."""
        return self.delta_weight(adapter_name)[0]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``x[..., in] -> [..., out]``: the base Linear plus every active, unmerged adapter."""
        base = self.base_layer
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return base(x, *args, **kwargs)
        active = [name for name in self.active_adapters if name in self.slice_rows]
        if self.merged or not active:
            return base(x, *args, **kwargs)
        weight, bias = base.weight, base.bias
        low_rank = []
        for name in active:
            terms = self.delta_terms(name)
            if terms.dense is not None:
                weight = weight + terms.dense.to(weight.dtype)
            if terms.bias is not None:
                bias = terms.bias.to(weight.dtype) if bias is None else bias + terms.bias.to(bias.dtype)
            if terms.right is not None:
                low_rank.append(terms)
        out = F.linear(x, weight, bias)
        if not low_rank:
            return out
        inputs = x.reshape(-1, self.in_features)
        for terms in low_rank:
            h = inputs.to(terms.right.dtype)
            if terms.input_dropout and self.training:
                h = F.dropout(h, terms.input_dropout)
            h = (h @ terms.right).to(out.dtype)
            # in place on the rows of the fresh output: no GEMM over rows that are not adapted, no extra pass
            spans = tuple(block[:4] for block in terms.blocks)
            lefts = [block[4].to(out.dtype) for block in terms.blocks]
            if recording_or_transforming():
                out = _add_to_rows(out, h, spans, lefts)
            else:
                out = _AddToRows.apply(out, h, spans, *lefts)
        return out

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the active (or the named) adapters' ΔW and Δb to ``base_layer``.

        Args:
            safe_merge: compute on a copy and refuse to write non-finite weights.
            adapter_names: adapters to merge (default: the active ones).
        """
        base = self.base_layer
        for name in check_adapters_to_merge(self, adapter_names):
            if name not in self.slice_rows:
                continue
            delta, delta_bias = self.delta_weight(name)
            new_weight = base.weight + delta.to(base.weight.dtype)
            new_bias = None if delta_bias is None else base.bias + delta_bias.to(base.bias.dtype)
            if safe_merge and not (torch.isfinite(new_weight).all() and (new_bias is None or
                                                                          torch.isfinite(new_bias).all())):
                raise ValueError(f"merging adapter {name!r} produced non-finite weights (it diverged); the base layer "
                                 "is unchanged")
            base.weight.copy_(new_weight)
            if new_bias is not None:
                base.bias.copy_(new_bias)
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract every merged adapter again (no-op when nothing is merged)."""
        base = self.base_layer
        while self.merged_adapters:
            delta, delta_bias = self.delta_weight(self.merged_adapters.pop())
            base.weight.sub_(delta.to(base.weight.dtype))
            if delta_bias is not None:
                base.bias.sub_(delta_bias.to(base.bias.dtype))

    def _record_slices(self, adapter_name: str, targets: list[Target]) -> dict[str, tuple[int, int]]:
        rows = {t.slice_name or "all": t.rows for t in targets}
        self.slice_rows[adapter_name] = rows
        return rows

    def _bias_rows(self, adapter_name: str, bias: torch.Tensor) -> torch.Tensor:
        """A ``(out,)`` vector holding ``bias`` (one slice wide) on every slice of ``adapter_name``, zero elsewhere."""
        rows = self.slice_rows[adapter_name].values()
        if len(rows) == 1 and next(iter(rows)) == (0, self.out_features):
            return bias
        full = bias.new_zeros(self.out_features)
        for a, b in rows:
            full[a:b] = bias
        return full

    def extra_repr(self) -> str:
        return f"slices={self.slice_rows}, merged={self.merged_adapters}"


def _layer_index(name: str, patterns: list[str] | None) -> int | None:
    """The layer index of a module name: its first numeric component (preceded by one of ``patterns`` if given)."""
    parts = name.split(".")
    for i, part in enumerate(parts[1:], start=1):
        if part.isdigit() and (patterns is None or parts[i - 1] in patterns):
            return int(part)
    return None


# peft's task models (task_type "SEQ_CLS" / "TOKEN_CLS") append these to modules_to_save, whether the model has them
TASK_HEAD_DEFAULTS = ["classifier", "score"]
# config instance attribute (not a dataclass field, so never saved): the head names train_head found on the last model
FOUND_HEADS_ATTR = "_vitlab_found_heads"


def _drop_task_head_defaults(peft_config: Any, model: nn.Module) -> None:
    """Drop the names peft's task models appended to ``modules_to_save`` (``TASK_HEAD_DEFAULTS``) that ``model``
    does not have, as peft itself skips them (a transformers ViT has ``classifier`` but no ``score``; a timm ViT has
    neither, its head is ``head``); a list left empty becomes ``None`` (then ``train_head`` finds the classifier).
    Names the user gave stay checked."""
    names = peft_config.modules_to_save
    if peft_config.task_type is None or not names or list(names[-2:]) != TASK_HEAD_DEFAULTS:
        return
    modules = dict(model.named_modules())
    kept = list(names[:-2]) + [name for name in TASK_HEAD_DEFAULTS if name in modules]
    peft_config.modules_to_save = kept or None


class RowSliceTuner(BaseTuner):
    """``BaseTuner`` for ``RowSliceLayer`` methods: vitlab's target syntax, the classifier in ``modules_to_save``.

    The config must have ``target_modules``, ``fused_slices``, ``train_head`` and ``modules_to_save`` fields (and may
    have ``intrinsic_table`` / ``auto_top_k`` for ``target_modules="auto"``). Subclasses set ``prefix`` and
    ``tuner_layer_cls`` and may override ``_new_adapter_state`` for state shared by all layers of one adapter
    (``shared_attr`` names the ``nn.ModuleDict`` that holds it, keyed by adapter name).
    """

    target_module_mapping: dict[str, list[str]] = {}
    shared_attr: str | None = None

    def _prepare_adapter_config(self, peft_config: Any, model_config: dict) -> Any:
        return peft_config  # targets are resolved against the model in _prepare_model

    def _prepare_model(self, peft_config: Any, model: nn.Module) -> None:
        """Resolve the targets (and the classifier head to train) of the adapter being injected."""
        _drop_task_head_defaults(peft_config, model)
        if peft_config.modules_to_save and peft_config.modules_to_save == peft_config.__dict__.get(FOUND_HEADS_ATTR):
            peft_config.modules_to_save = None  # found on the model of an earlier get_peft_model: find it again here
        heads = list(peft_config.modules_to_save) if peft_config.modules_to_save else None
        missing = [name for name in heads or () if name not in dict(model.named_modules())]
        if missing:
            raise ValueError(f"modules_to_save {missing} are not modules of {type(model).__name__}; give full dotted "
                             f"module names (top-level modules are {[n for n, _ in model.named_children()]})")
        if peft_config.target_modules == "auto":
            _, targets = auto_targets(model, peft_config.intrinsic_table, peft_config.auto_top_k, heads)
            # store what was chosen, so that the saved adapter_config.json rebuilds it without the table
            peft_config.target_modules = sorted({t.module_name for t in targets})
            peft_config.fused_slices = tuple(s for s in ("q", "k", "v") if any(t.slice_name == s for t in targets)) \
                or peft_config.fused_slices
        else:
            targets = find_targets(model, peft_config.target_modules, peft_config.fused_slices, heads)
        targets = self._select_targets(peft_config, targets)
        self._check_targets(peft_config, targets)
        self._pending_targets: dict[str, list[Target]] = {}
        for target in targets:
            self._pending_targets.setdefault(target.module_name, []).append(target)
        if peft_config.train_head and peft_config.modules_to_save is None:
            found = classifier_names(model)
            if not found:
                raise ValueError(f"train_head=True but {type(model).__name__} has no get_classifier() and no "
                                 "'classifier'/'head' Linear: set modules_to_save=['<head module>'] or "
                                 "train_head=False")
            peft_config.modules_to_save = found
            peft_config.__dict__[FOUND_HEADS_ATTR] = list(found)

    def _select_targets(self, peft_config: Any, targets: list[Target]) -> list[Target]:
        """Drop the targets that ``exclude_modules`` names (peft's rule: ``peft.tuners.tuners_utils
        .check_target_module_exists``) and those outside ``layers_to_transform`` (the first numbered name component,
        after a component of ``layers_pattern`` when given: ``blocks.3.attn.qkv`` is in layer 3)."""
        exclude, layers = peft_config.exclude_modules, peft_config.layers_to_transform
        self._excluded: dict[str, Any] = {}
        if exclude is None and layers is None:
            return targets
        wanted = {layers} if isinstance(layers, int) else set(layers or ())
        patterns = [peft_config.layers_pattern] if isinstance(peft_config.layers_pattern, str) \
            else peft_config.layers_pattern
        kept = []
        for target in targets:
            rule = SimpleNamespace(target_modules=[target.module_name], exclude_modules=exclude, modules_to_save=None)
            verdict = check_target_module_exists(rule, target.module_name)
            if not verdict:
                self._excluded[target.module_name] = verdict  # peft counts its excluded modules from this
            elif layers is None or _layer_index(target.module_name, patterns) in wanted:
                kept.append(target)
        if not kept:
            chosen = {key: getattr(peft_config, key) for key in ("exclude_modules", "layers_to_transform",
                                                                 "layers_pattern") if getattr(peft_config, key)}
            names = sorted({t.module_name for t in targets})[:6]
            raise ValueError(f"{chosen} leave none of the targeted modules {names} to adapt: loosen them (layer "
                             "indices count from 0 in the first numbered name component)")
        return kept

    def _check_targets(self, peft_config: Any, targets: list[Target]) -> None:
        """Hook: validate the resolved targets against the config before anything is created."""

    def _check_target_module_exists(self, peft_config: Any, key: str) -> Any:
        return True if key in self._pending_targets else self._excluded.get(key, False)

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        """peft's ``inject_adapter`` (used by ``get_peft_model`` and ``add_adapter``), after creating the adapter's
        seeded generator and its shared-state container."""
        if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name:
            raise ValueError(f"adapter_name must be a non-empty name without '.' (it keys modules), got "
                             f"{adapter_name!r}: e.g. model.add_adapter('second', config)")
        seed = self.peft_config[adapter_name].seed
        self._generator = torch.Generator().manual_seed(seed) if seed is not None else None
        existing: list[tuple[nn.Parameter, bool]] = []
        if self.shared_attr is not None:
            if self.shared_attr not in self._modules:
                self.add_module(self.shared_attr, nn.ModuleDict())
            # peft keeps the trainability of the layers' existing adapters (load_adapter / add_adapter); the shared
            # state lives outside the model it snapshots, so keep that of the other adapters here
            existing = [(p, p.requires_grad) for p in self._modules[self.shared_attr].parameters()]
            self._modules[self.shared_attr][adapter_name] = nn.ParameterDict()
        try:
            super().inject_adapter(model, adapter_name, *args, **kwargs)
        except Exception:
            if self.shared_attr is not None:
                del self._modules[self.shared_attr][adapter_name]
            raise
        for param, requires_grad in existing:
            param.requires_grad_(requires_grad)

    def _create_and_replace(
        self, peft_config: Any, adapter_name: str, target: nn.Module, target_name: str, parent: nn.Module,
        current_key: str, parameter_name: str | None = None,
    ) -> None:
        targets = self._pending_targets[current_key]
        shared = self._modules[self.shared_attr][adapter_name] if self.shared_attr else None
        if isinstance(target, self.tuner_layer_cls):
            if adapter_name in target.slice_rows:
                raise ValueError(f"{current_key} already has an adapter named {adapter_name!r} (the model was adapted "
                                 "before); add another with peft_model.add_adapter('<new name>', config)")
            target.update_layer(adapter_name, peft_config, targets, shared=shared, generator=self._generator)
            return
        if isinstance(target, BaseTunerLayer):
            raise ValueError(f"{current_key} already carries a {type(target).__name__} adapter of another method; "
                             "one model takes adapters of one peft method")
        layer = self.tuner_layer_cls(target)
        layer.update_layer(adapter_name, peft_config, targets, shared=shared, generator=self._generator)
        self._replace_module(parent, target_name, layer, target)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """peft's float16/bfloat16 -> float32 upcast of the adapter's weights, the shared state included."""
        super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)
        if autocast_adapter_dtype and self.shared_attr and adapter_name in self._modules.get(self.shared_attr, {}):
            for param in self._modules[self.shared_attr][adapter_name].parameters():
                if param.dtype in (torch.float16, torch.bfloat16):
                    param.data = param.data.float()

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """peft's ``set_adapter``, also switching gradients of the adapters' shared state."""
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        if self.shared_attr and self.shared_attr in self._modules:
            for name, state in self._modules[self.shared_attr].items():
                state.requires_grad_(name in names and not inference_mode)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Before anything is copied (``PeftModel.from_pretrained``, ``load_adapter``, ``set_peft_model_state_dict``):
        refuse adapter or head tensors whose shapes differ from this model's, naming them (torch's own message buries
        them; a KAdaptation adapter's shared ``A`` even fits a base of another width)."""
        own = {prefix + name: tuple(tensor.shape) for name, tensor in self.state_dict().items()
               if self.prefix in name or ".modules_to_save." in name}
        bad = [f"{name}: saved {tuple(value.shape)}, this model {own[name]}" for name, value in state_dict.items()
               if name in own and isinstance(value, torch.Tensor) and tuple(value.shape) != own[name]]
        if bad:
            raise AdapterShapeError(
                f"size mismatch: the adapter does not fit this base model ({len(bad)} tensors have other shapes, e.g. "
                f"{'; '.join(bad[:3])}); it was trained on a base of another width, depth or number of classes: "
                "load it on the base model it was trained on"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        """peft's switch behind ``disable_adapter()``, also switching the shared state's gradients as peft switches
        the layers' (off while disabled, the active adapters' on again after)."""
        super()._enable_adapter_layers(enabled)
        if self.shared_attr and self.shared_attr in self._modules:
            for name, state in self._modules[self.shared_attr].items():
                state.requires_grad_(enabled and name in self.active_adapters)

    def set_requires_grad(self, adapter_names: str | Sequence[str], requires_grad: bool = True) -> None:
        """peft's ``set_requires_grad`` (``PeftModel.set_requires_grad``), also switching the named adapters' shared
        state (KAdaptation's shared ``A`` factors, which live on the tuner, not in a layer)."""
        super().set_requires_grad(adapter_names, requires_grad=requires_grad)
        names = {adapter_names} if isinstance(adapter_names, str) else set(adapter_names)
        if self.shared_attr and self.shared_attr in self._modules:
            for name, state in self._modules[self.shared_attr].items():
                if name in names:
                    state.requires_grad_(requires_grad)

    def _check_adapter_names(self, adapter_names: Any) -> None:
        """Refuse ``adapter_names`` that are not adapters of this model (peft skips unknown names, so a typo in
        ``merge_and_unload(adapter_names=[...])`` unloaded the model with nothing merged)."""
        if adapter_names is None:
            return
        if isinstance(adapter_names, str):
            raise TypeError(f"adapter_names must be a list of adapter names, got the string {adapter_names!r}: write "
                            f"adapter_names=[{adapter_names!r}]")
        unknown = [name for name in adapter_names if name not in self.peft_config]
        if unknown:
            raise ValueError(f"adapter_names {unknown} are not adapters of this model; its adapters are "
                             f"{list(self.peft_config)}")

    def _unload_and_optionally_merge(self, merge: bool = True, progressbar: bool = False, safe_merge: bool = False,
                                     adapter_names: list[str] | None = None) -> nn.Module:
        """peft's ``merge_and_unload`` / ``unload``, after checking the adapter names to merge."""
        if merge:
            self._check_adapter_names(adapter_names)
        return super()._unload_and_optionally_merge(merge=merge, progressbar=progressbar, safe_merge=safe_merge,
                                                    adapter_names=adapter_names)

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        """peft's ``merge_adapter``, after checking the adapter names to merge."""
        self._check_adapter_names(adapter_names)
        super().merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """``PeftModel.forward`` enters this around the base model's forward with the call's keyword arguments.
        peft drops ``adapter_names=`` (its mixed-adapter batches, a LoRA-only feature) before the forward, so without
        this check every sample would silently go through the active adapter.

        Raises:
            ValueError: ``adapter_names`` is given, naming what to do instead.
        """
        if kwargs.get("adapter_names") is not None:
            raise ValueError(
                f"{type(self).__name__} does not support adapter_names= in forward (peft's mixed-adapter batches are "
                "a LoRA feature); run one forward per adapter: model.set_adapter('<name>'); model(x_of_that_adapter) "
                "(and `with model.disable_adapter():` for the base model's samples)"
            )
        yield

    def add_weighted_adapter(self, *args: Any, **kwargs: Any) -> None:
        """Refused: a weighted combination of row-slice adapters is not an adapter of the same form (peft offers it
        for LoRA only).

        Raises:
            TypeError: always, naming what to do instead.
        """
        raise TypeError(
            f"{type(self).__name__} does not support add_weighted_adapter (a weighted sum of these adapters is not an "
            "adapter of the same form): activate several adapters at once with model.base_model.set_adapter(['a', "
            "'b']) (their updates add up; peft activates one modules_to_save head at a time, so this needs adapters "
            "made with train_head=False and no modules_to_save), or fold them into the weights one after the other "
            "with model.merge_and_unload(adapter_names=[...])"
        )

    def delete_adapter(self, adapter_name: str) -> None:
        """peft's ``delete_adapter``, also dropping the adapter's shared state and slice records; when the active
        adapter goes, peft activates (and makes trainable) another one: its shared state follows its layers."""
        super().delete_adapter(adapter_name)
        if self.shared_attr and adapter_name in self._modules.get(self.shared_attr, {}):
            del self._modules[self.shared_attr][adapter_name]
        layers = [module for module in self.model.modules() if isinstance(module, RowSliceLayer)]
        for module in layers:
            module.slice_rows.pop(adapter_name, None)
        for name, state in self._modules.get(self.shared_attr, {}).items() if self.shared_attr else ():
            layer_params = [p for layer in layers for key, p in layer.named_parameters()
                            if key.split(".")[0] in layer.adapter_layer_names and f".{name}." in f"{key}."]
            if layer_params:
                state.requires_grad_(any(p.requires_grad for p in layer_params))
