"""``target_modules: auto``: choose what to adapt from the per-module intrinsic-dimension table.

The table is the one ``vitlab intrinsic-dim --per_module true`` writes (``intrinsic_dim_per_module.csv`` or its JSON
twin, or the folder holding them), read by ``vitlab.peft.intrinsic.per_module.read_module_table``; a hand-written
CSV with the columns ``module,d90`` works too::

    module,d90
    attn.q,120
    attn.v,150
    mlp.fc1,900
    high_mixer,          <- empty, nan or inf: 90 % was not reached in the searched d grid

``module`` is one of ``vitlab.peft.intrinsic.per_module.MODULE_KINDS`` (``attn.q``, ``attn.k``, ``attn.v``,
``attn.proj``, ``mlp.fc1``, ``mlp.fc2``, ``high_mixer``); ``d90`` is the smallest subspace dimension reaching 90 % of
full fine-tuning when only that kind of submodule is in the subspace.

**Selection rule** (PEViT: adapt the submodules of lowest local intrinsic dimension): ``select_modules`` — in the
table's rank order (smallest interpolated d90 first; a hand-written table is ranked by d90, ties in table order),
skip kinds that did not reach the threshold and kinds this model has no ``nn.Linear`` for (e.g. the Inception
Transformer's convolutional high-frequency mixer), adapt the first ``top_k`` (default 2). When the measured ranking
puts query and value first this reproduces the paper's choice.

Example:
    >>> import tempfile
    >>> import timm
    >>> table = Path(tempfile.mkdtemp()) / "d90.csv"
    >>> _ = table.write_text("module,d90\\nattn.q,120\\nmlp.fc1,900\\nattn.v,150\\nhigh_mixer,\\n")
    >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=1,
    ...                         num_heads=2, num_classes=10)
    >>> kinds, targets = auto_targets(vit, table)
    >>> kinds, [f"{t.module_name}@{t.slice_name}" for t in targets]
    (['attn.q', 'attn.v'], ['blocks.0.attn.qkv@q', 'blocks.0.attn.qkv@v'])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from vitlab.peft.intrinsic.per_module import MODULE_KINDS, read_module_table, select_modules
from vitlab.peft.targets import Target, classifier_names, find_targets, linear_module_names, match_module_names

__all__ = ["auto_targets", "kind_targets"]

_SEPARATE = {"attn.q": ("q", "q_proj", "query"), "attn.k": ("k", "k_proj", "key"), "attn.v": ("v", "v_proj", "value")}
_PATTERNS = {
    "attn.proj": r"(.*\.)?attn\.(proj|out_proj|o_proj)",
    "mlp.fc1": r"(.*\.)?mlp\.fc1",
    "mlp.fc2": r"(.*\.)?mlp\.fc2",
    "high_mixer": r"(.*\.)?high_mixer(\..*)?",
}


def kind_targets(model: nn.Module, kind: str, head_modules: Sequence[str] | None = None) -> list[Target]:
    """The Linear targets of one module kind (fused ``qkv`` row slice or separate projection; empty if none).

    Args:
        model: the base model.
        kind: a key of ``vitlab.peft.intrinsic.per_module.MODULE_KINDS``.
        head_modules: classifier modules to leave out (default: timm's ``get_classifier()``).
    """
    if kind not in MODULE_KINDS:
        raise ValueError(f"unknown module kind {kind!r}; known kinds are {list(MODULE_KINDS)}")
    names = linear_module_names(model, exclude=classifier_names(model, head_modules))
    if kind in _SEPARATE:
        fused = match_module_names(names, r"(.*\.)?qkv")
        separate = match_module_names(names, list(_SEPARATE[kind]))
        picked = fused + separate
        slices = (kind.split(".")[1],)
    else:
        picked, slices = match_module_names(names, _PATTERNS[kind]), ("q", "v")
    if not picked:
        return []
    return find_targets(model, picked, fused_slices=slices, head_modules=head_modules)


def auto_targets(
    model: nn.Module, table: str | Path, top_k: int = 2, head_modules: Sequence[str] | None = None
) -> tuple[list[str], list[Target]]:
    """Read ``table`` (``read_module_table``), select kinds by the rule, return ``(kinds, targets)``.

    Args:
        model: the base model.
        table: the per-module table (CSV, JSON or their folder) or a hand-written ``module,d90`` CSV.
        top_k: how many module kinds to adapt.
        head_modules: classifier modules (never adapted; default: timm's ``get_classifier()``).

    Returns:
        The chosen kinds in rank order and their ``Target`` list (kind by kind).
    """
    records = read_module_table(table)
    per_kind = {r.module: kind_targets(model, r.module, head_modules) for r in records}
    kinds = select_modules(records, top_k, available=[k for k, t in per_kind.items() if t])
    return kinds, [t for kind in kinds for t in per_kind[kind]]
