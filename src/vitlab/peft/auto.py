"""``target_modules: auto``: choose what to adapt from the per-module intrinsic-dimension table.

The table is the CSV written by ``vitlab intrinsic-dim --per-module`` (a JSON twin may sit beside it; only the CSV is
read). Format, one row per module kind, header required, extra columns ignored::

    module,d90
    attn.q,120
    attn.v,150
    mlp.fc1,900
    high_mixer,          <- empty, nan or inf: 90 % was not reached in the searched d grid

``module`` is one of ``MODULE_KINDS``; ``d90`` is the smallest subspace dimension reaching 90 % of full fine-tuning when
only that kind of submodule is in the subspace.

**Selection rule** (PEViT: adapt the submodules of lowest local intrinsic dimension): drop kinds whose d90 is not
finite and kinds this model has no ``nn.Linear`` for (e.g. the Inception Transformer's convolutional high-frequency
mixer), sort the rest by d90 ascending (ties: table order), adapt the first ``top_k`` (default 2). When the measured
ranking puts query and value first this reproduces the paper's choice.

Example:
    >>> rows = [("attn.q", 120.0), ("mlp.fc1", 900.0), ("attn.v", 150.0)]
    >>> select_module_kinds(rows, available={"attn.q", "attn.v", "mlp.fc1"}, top_k=2)
    ['attn.q', 'attn.v']
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from torch import nn

from vitlab.peft.targets import Target, classifier_names, find_targets, linear_module_names, match_module_names

__all__ = ["MODULE_KINDS", "auto_targets", "kind_targets", "read_intrinsic_table", "select_module_kinds"]

MODULE_KINDS = ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc1", "mlp.fc2", "high_mixer")
_SEPARATE = {"attn.q": ("q", "q_proj", "query"), "attn.k": ("k", "k_proj", "key"), "attn.v": ("v", "v_proj", "value")}
_PATTERNS = {
    "attn.proj": r"(.*\.)?attn\.(proj|out_proj|o_proj)",
    "mlp.fc1": r"(.*\.)?mlp\.fc1",
    "mlp.fc2": r"(.*\.)?mlp\.fc2",
    "high_mixer": r"(.*\.)?high_mixer(\..*)?",
}


def read_intrinsic_table(path: str | Path) -> list[tuple[str, float]]:
    """Read ``(module kind, d90)`` rows; a missing/empty/nan d90 becomes ``inf`` (not reached)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"intrinsic-dimension table {path} not found: run `vitlab intrinsic-dim --per-module` first, or pass "
            "explicit target_modules"
        )
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"module", "d90"} <= set(reader.fieldnames):
            raise ValueError(f"{path} must be a CSV with columns 'module' and 'd90', got {reader.fieldnames}")
        rows = []
        for row in reader:
            kind, raw = row["module"].strip(), (row["d90"] or "").strip()
            if kind not in MODULE_KINDS:
                raise ValueError(f"{path}: unknown module kind {kind!r}; known kinds are {MODULE_KINDS}")
            value = float(raw) if raw else math.inf
            rows.append((kind, math.inf if math.isnan(value) else value))
    if not rows:
        raise ValueError(f"{path} has no rows")
    return rows


def select_module_kinds(rows: Sequence[tuple[str, float]], available: Iterable[str], top_k: int = 2) -> list[str]:
    """Apply the selection rule (see module docstring) to ``rows`` of ``(kind, d90)``."""
    available = set(available)
    ranked = sorted((d90, i, kind) for i, (kind, d90) in enumerate(rows) if math.isfinite(d90) and kind in available)
    if not ranked:
        raise ValueError(f"no module kind in the table has a finite d90 and exists in this model (table: {list(rows)}, "
                         f"adaptable kinds in the model: {sorted(available)}); pass explicit target_modules")
    return [kind for _, _, kind in ranked[:top_k]]


def kind_targets(model: nn.Module, kind: str, head_modules: Sequence[str] | None = None) -> list[Target]:
    """The Linear targets of one module kind (fused ``qkv`` row slice or separate projection; empty if none)."""
    if kind not in MODULE_KINDS:
        raise ValueError(f"unknown module kind {kind!r}; known kinds are {MODULE_KINDS}")
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
    """Read ``table``, select kinds by the rule, return ``(kinds, targets)``."""
    rows = read_intrinsic_table(table)
    per_kind = {kind: kind_targets(model, kind, head_modules) for kind, _ in rows}
    kinds = select_module_kinds(rows, [k for k, t in per_kind.items() if t], top_k)
    return kinds, [t for kind in kinds for t in per_kind[kind]]
