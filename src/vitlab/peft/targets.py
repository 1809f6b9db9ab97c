"""Choosing what a PEFT method adapts: ``nn.Linear`` targets by name or regex, row slices of fused ``qkv`` layers.

Matching follows HF peft: a **list** of strings matches a module whose name equals an entry or ends with
``"." + entry``; a **string** is a regular expression that must match the whole module name (``re.fullmatch``).
Only ``nn.Linear`` modules are candidates, and the classifier head is never a target.

A Linear whose last name component is ``qkv`` and whose output size is divisible by 3 is a *fused* projection, with
rows ``[0:k]`` = query, ``[k:2k]`` = key, ``[2k:3k]`` = value (the timm ViT and Inception Transformer layout). Row-slice
methods (KAdaptation, ``lora_qv``) adapt only the chosen slices of it.

Example:
    >>> import timm
    >>> model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2,
    ...                           num_heads=2, num_classes=10)
    >>> [(t.module_name, t.slice_name) for t in find_targets(model, None)][:2]
    [('blocks.0.attn.qkv', 'q'), ('blocks.0.attn.qkv', 'v')]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

__all__ = [
    "FUSED_SLICES",
    "QV_NAMES",
    "TIMM_TARGET_PRESETS",
    "Target",
    "classifier_names",
    "find_targets",
    "linear_module_names",
    "match_module_names",
    "resolve_preset",
]

FUSED_SLICES = ("q", "k", "v")
# Separate query / value projections of other architectures (HF-style and plain names).
QV_NAMES = {"q": ("q", "q_proj", "query"), "v": ("v", "v_proj", "value")}
# Ready-made regexes for timm ViTs and the Inception Transformer (fused ``qkv``, ``attn.proj``, ``mlp.fc1/fc2``).
TIMM_TARGET_PRESETS = {
    "qkv": r"(.*\.)?qkv",
    "attn": r"(.*\.)?(qkv|attn\.proj)",
    "mlp": r"(.*\.)?mlp\.fc[12]",
    "attn_mlp": r"(.*\.)?(qkv|attn\.proj|mlp\.fc[12])",
}


@dataclass(frozen=True)
class Target:
    """One adapted weight block: rows ``rows`` of the Linear ``module_name``.

    Attributes:
        module_name: dotted name of the ``nn.Linear`` in the model.
        slice_name: ``"q"``, ``"k"`` or ``"v"`` for a fused ``qkv`` row slice, ``None`` for the whole weight.
        rows: ``(start, stop)`` output rows of the weight (the whole ``out_features`` when ``slice_name`` is None).
        in_features: input width of the Linear.
        role: key of the shared state of a method (KAdaptation shares ``A`` by role): the slice name, or the last
            component of the module name (``fc1``, ``q_proj``, ...).
    """

    module_name: str
    slice_name: str | None
    rows: tuple[int, int]
    in_features: int
    role: str

    @property
    def out_features(self) -> int:
        """Number of adapted output rows."""
        return self.rows[1] - self.rows[0]


def classifier_names(model: nn.Module, head_modules: Sequence[str] | None = None) -> list[str]:
    """Names of the classifier-head modules: ``head_modules`` if given, else the module timm's ``get_classifier()``
    returns, else a top-level ``classifier`` or ``head`` Linear (transformers' ``ViTForImageClassification``).

    Returns an empty list when the model has no recognisable head (then pass ``head_modules``).
    """
    names = dict((id(m), n) for n, m in model.named_modules())
    if isinstance(head_modules, str):
        raise ValueError(f"head_modules must be a list of module names, got the string {head_modules!r}: write "
                         f"head_modules=[{head_modules!r}]")
    if head_modules is not None:
        missing = [h for h in head_modules if h not in dict(model.named_modules())]
        if missing:
            raise ValueError(f"head_modules {missing} are not modules of {type(model).__name__}; "
                             f"top-level modules are {[n for n, _ in model.named_children()]}")
        return list(head_modules)
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Module) and id(head) in names and any(True for _ in head.parameters()):
        return [names[id(head)]]
    for attr in ("classifier", "head"):  # transformers' *ForImageClassification, plain models
        head = getattr(model, attr, None)
        wrapped = getattr(head, "original_module", None)  # peft's ModulesToSaveWrapper around the classifier
        if (isinstance(head, nn.Linear) or isinstance(wrapped, nn.Linear)) and id(head) in names:
            return [names[id(head)]]
    return []


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    """``{name: Linear}``; a Linear wrapped by an adapter layer (``<name>.base_layer``) is listed under ``<name>``."""
    return {n.removesuffix(".base_layer"): m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def linear_module_names(model: nn.Module, exclude: Sequence[str] = ()) -> list[str]:
    """Names of all ``nn.Linear`` modules (adapter-wrapped ones under the wrapper's name), minus those equal to or
    under ``exclude``."""
    return [n for n in _linears(model) if not any(n == e or n.startswith(e + ".") for e in exclude)]


def resolve_preset(target_modules: str | Sequence[str]) -> str | list[str]:
    """Map a preset name of ``TIMM_TARGET_PRESETS`` to its regex; other values pass through (lists copied)."""
    if isinstance(target_modules, str):
        return TIMM_TARGET_PRESETS.get(target_modules, target_modules)
    return list(target_modules)


def match_module_names(names: Sequence[str], target_modules: str | Sequence[str]) -> list[str]:
    """The names matched by ``target_modules`` with HF peft semantics (list: exact or dotted suffix; str: fullmatch)."""
    if isinstance(target_modules, str):
        try:
            pattern = re.compile(target_modules)
        except re.error as err:
            raise ValueError(f"target_modules {target_modules!r} is not a valid regular expression: {err}") from err
        return [n for n in names if pattern.fullmatch(n)]
    keys = list(target_modules)
    if not keys or not all(isinstance(k, str) and k for k in keys):
        raise ValueError(f"target_modules must be a regex string or a non-empty list of names, got {target_modules!r}")
    return [n for n in names if any(n == k or n.endswith("." + k) for k in keys)]


def _fused_width(name: str, layer: nn.Linear) -> int | None:
    if name.rsplit(".", 1)[-1] == "qkv" and layer.out_features % 3 == 0:
        return layer.out_features // 3
    return None


def _targets_of(name: str, layer: nn.Linear, slices: Sequence[str]) -> list[Target]:
    width = _fused_width(name, layer)
    if width is None:
        return [Target(name, None, (0, layer.out_features), layer.in_features, name.rsplit(".", 1)[-1])]
    return [Target(name, s, (FUSED_SLICES.index(s) * width, (FUSED_SLICES.index(s) + 1) * width),
                   layer.in_features, s) for s in slices]


def find_targets(
    model: nn.Module,
    target_modules: str | Sequence[str] | None,
    fused_slices: Sequence[str] = ("q", "v"),
    head_modules: Sequence[str] | None = None,
) -> list[Target]:
    """Resolve ``target_modules`` into row-slice targets of ``nn.Linear`` layers.

    Args:
        model: the model to adapt.
        target_modules: ``None`` for the attention query and value projections (the Q and V rows of every fused
            ``qkv``, plus Linears named ``q``/``q_proj``/``query``/``v``/``v_proj``/``value``); a preset name of
            ``TIMM_TARGET_PRESETS``; a list of names; or a regex.
        fused_slices: which rows of a matched fused ``qkv`` to adapt, a subset of ``("q", "k", "v")``. Only a fused
            ``qkv`` has such rows: anything but the default ``("q", "v")`` is refused when no target is a fused
            ``qkv`` (separate ``query``/``value`` Linears: choose them with ``target_modules``).
        head_modules: classifier modules to exclude (default: ``classifier_names(model)``).

    Returns:
        Targets in module order; a fused layer gives one target per slice.

    Raises:
        ValueError: nothing matched (the message lists candidate Linear names), an unknown slice name, or
            non-default ``fused_slices`` with no fused ``qkv`` among the targets.
    """
    bad = [s for s in fused_slices if s not in FUSED_SLICES]
    if bad or not fused_slices or len(set(fused_slices)) != len(fused_slices):
        raise ValueError(f"fused_slices must be distinct names out of {FUSED_SLICES}, got {tuple(fused_slices)}")
    modules = _linears(model)
    candidates = linear_module_names(model, exclude=classifier_names(model, head_modules))
    if target_modules is None:
        targets = []
        for name in candidates:
            last = name.rsplit(".", 1)[-1]
            if _fused_width(name, modules[name]) is not None:
                targets += _targets_of(name, modules[name], fused_slices)
            elif last in QV_NAMES["q"] + QV_NAMES["v"]:
                targets += _targets_of(name, modules[name], fused_slices)
        description = "the attention query/value projections (fused `qkv` or q_proj/v_proj)"
    else:
        matched = match_module_names(candidates, resolve_preset(target_modules))
        targets = [t for name in matched for t in _targets_of(name, modules[name], fused_slices)]
        description = f"target_modules={target_modules!r}"
    if set(fused_slices) != {"q", "v"} and targets and not any(t.slice_name for t in targets):
        separate = sorted({t.module_name.rsplit(".", 1)[-1] for t in targets})
        raise ValueError(
            f"fused_slices={tuple(fused_slices)} applies only to a fused `qkv` Linear, and the targets of "
            f"{description} in {type(model).__name__} are separate projections ({separate}), not a fused qkv; leave "
            "fused_slices at its default and set target_modules to the projections to adapt instead, e.g. "
            "target_modules=['q_proj', 'k_proj', 'v_proj'] (['query', 'key', 'value'] in older transformers)"
        )
    if not targets:
        shown = ", ".join(candidates[:12]) + (" ..." if len(candidates) > 12 else "")
        raise ValueError(
            f"{description} matched no nn.Linear of {type(model).__name__}; candidate Linear modules "
            f"(classifier excluded): [{shown}]. Pass names from this list, a regex, or a preset of "
            f"{sorted(TIMM_TARGET_PRESETS)}"
        )
    return targets
