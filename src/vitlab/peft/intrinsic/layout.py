"""Which parameters live in the subspace, and where each sits in the global D-vector.

A *segment* is one parameter tensor, or a block of its dim-0 rows (a row slice of a fused ``qkv`` weight or bias).
Segments are laid out one after another, in ``model.named_parameters()`` order, in the D-vector ``P·θ_d``.

Selector syntax (``SubspaceConfig.target_modules``): HF peft matching, applied to module names *and* parameter names
(a matched module brings every parameter under it). A list entry matches a name equal to it or ending with
``"." + entry``; a string is a regex that must match a whole name. Any entry may end in ``@q``, ``@k``, ``@v`` (the
first, second or last third of dim 0, the layout of timm's fused ``qkv``) or ``@start:stop`` (those rows).

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
    >>> [(s.name, s.rows, s.offset) for s in build_layout(model, ["0@k"])]
    [('0.weight', (2, 4), 0), ('0.bias', (2, 4), 8)]
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from math import prod

from torch import nn

from ..targets import FUSED_SLICES, match_module_names

__all__ = ["Segment", "build_layout", "layout_digest", "parameter_aliases", "parse_selector"]

_ROWS_RE = re.compile(r"^(q|k|v|\d+:\d+)$")


@dataclass(frozen=True)
class Segment:
    """One block of the subspace: rows ``rows`` (``None``: all) of parameter ``name``, at ``offset`` in the D-vector.

    Attributes:
        name: parameter name in the wrapped model, e.g. ``"blocks.0.attn.qkv.weight"``.
        rows: ``(start, stop)`` along dim 0, or ``None`` for the whole tensor.
        shape: shape of the block (the parameter's shape with dim 0 cut to the rows).
        offset: index of the block's first number in the D-vector.
    """

    name: str
    rows: tuple[int, int] | None
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        """Number of entries of the block."""
        return prod(self.shape)


def parse_selector(entry: str) -> tuple[str, str | tuple[int, int] | None]:
    """Split ``"pattern@rows"`` into the name pattern and ``"q"|"k"|"v"``, ``(start, stop)`` or ``None``."""
    if not isinstance(entry, str) or not entry:
        raise ValueError(f"a target_modules entry must be a non-empty string, got {entry!r}")
    pattern, sep, rows = entry.rpartition("@")
    if not sep:
        return entry, None
    if not pattern or not _ROWS_RE.match(rows):
        raise ValueError(f"bad row slice in {entry!r}: write NAME@q, NAME@k, NAME@v or NAME@start:stop")
    if ":" in rows:
        start, stop = (int(v) for v in rows.split(":"))
        if start >= stop:
            raise ValueError(f"empty row slice in {entry!r}: start must be below stop")
        return pattern, (start, stop)
    return pattern, rows


def _row_range(name: str, shape: tuple[int, ...], rows: str | tuple[int, int], entry: str) -> tuple[int, int]:
    if not shape:
        raise ValueError(f"{entry!r} asks for rows of the scalar parameter {name!r}; drop the @ suffix")
    n = shape[0]
    if isinstance(rows, str):
        if n % 3:
            raise ValueError(f"{entry!r}: @{rows} needs a fused q/k/v tensor with dim 0 divisible by 3, but {name!r} "
                             f"has shape {tuple(shape)}; use @start:stop rows instead")
        i = FUSED_SLICES.index(rows)
        return i * n // 3, (i + 1) * n // 3
    if rows[1] > n:
        raise ValueError(f"{entry!r}: rows {rows[0]}:{rows[1]} exceed dim 0 ({n}) of {name!r}; no cropping is done")
    return rows


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(stop, merged[-1][1]))
        else:
            merged.append((start, stop))
    return merged


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def parameter_aliases(model: nn.Module) -> dict[str, str]:
    """``{name: canonical name}`` for every name of every parameter, tied ones included.

    A tied parameter (one tensor under two modules, e.g. an output layer sharing an embedding's weight) is listed once
    by ``model.named_parameters()``, under its first name; its other names map to that one.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
        >>> model[1].weight = model[0].weight
        >>> parameter_aliases(model)["1.weight"]
        '0.weight'
    """
    first: dict[int, str] = {}
    return {name: first.setdefault(id(p), name) for name, p in model.named_parameters(remove_duplicate=False)}


def build_layout(
    model: nn.Module, target_modules: str | Sequence[str] | None = None, exclude: Collection[str] = ()
) -> list[Segment]:
    """Resolve ``target_modules`` into segments of the D-vector.

    Args:
        model: the base model.
        target_modules: see the module docstring; ``None`` selects every parameter.
        exclude: parameter names kept out of the subspace (e.g. a head trained directly).

    Returns:
        Segments in parameter order with consecutive offsets (empty parameters have none); ``sum(s.numel for s in
        segments)`` is D.

    Raises:
        ValueError: an entry matches no parameter (the message lists module names), a row slice does not fit,
            nothing is left after ``exclude``, or a lazy parameter is not initialised yet.
    """
    lazy = [n for n, p in model.named_parameters() if isinstance(p, nn.parameter.UninitializedParameter)]
    if lazy:
        raise ValueError(f"{type(model).__name__} has uninitialised lazy parameters {lazy[:5]} (nn.LazyLinear, ...), "
                         "whose size is not known yet: run one forward pass on a sample batch first, then wrap it")
    params = [(n, tuple(p.shape)) for n, p in model.named_parameters() if n not in exclude]
    wanted: dict[str, list[tuple[int, int]] | None] = {}
    if target_modules is None:
        wanted = {n: None for n, _ in params}
    else:
        entries = [target_modules] if isinstance(target_modules, str) else list(target_modules)
        aliases: dict[str, list[str]] = {}  # a tied parameter is selected through any of its names
        for alias, canonical in parameter_aliases(model).items():
            aliases.setdefault(canonical, []).append(alias)
        names = sorted({a for n, _ in params for alias in aliases[n] for a in _ancestors(alias)})
        for entry in entries:
            pattern, rows = parse_selector(entry)
            matched = set(match_module_names(names, pattern if isinstance(target_modules, str) else [pattern]))
            hits = [(n, s) for n, s in params if any(matched.intersection(_ancestors(a)) for a in aliases[n])]
            if not hits:
                modules = [n for n, _ in model.named_modules() if n][:15]
                raise ValueError(f"target_modules entry {entry!r} matched no parameter of {type(model).__name__} "
                                 f"(excluded: {len(exclude)}); module names start with {modules}")
            for n, shape in hits:
                if rows is None:
                    wanted[n] = None
                elif wanted.get(n, []) is not None:
                    wanted[n] = wanted.get(n, []) + [_row_range(n, shape, rows, entry)]
    segments, offset = [], 0
    for name, shape in params:
        if name not in wanted or prod(shape) == 0:  # an empty parameter has no number to move
            continue
        ranges = wanted[name]
        merged = None if ranges is None else _merge(ranges)
        if merged is None or merged == [(0, shape[0])]:
            segments.append(Segment(name, None, shape, offset))
            offset += segments[-1].numel
            continue
        for start, stop in merged:
            segments.append(Segment(name, (start, stop), (stop - start, *shape[1:]), offset))
            offset += segments[-1].numel
    if not segments:
        raise ValueError(f"no parameter of {type(model).__name__} is left in the subspace (target_modules="
                         f"{target_modules!r}, {len(exclude)} excluded); select more parameters or set "
                         "train_head=False")
    return segments


def layout_digest(segments: Sequence[Segment]) -> bytes:
    """SHA-256 of the names, row ranges and shapes of the segments (detects a different model or selection)."""
    text = json.dumps([[s.name, s.rows, list(s.shape)] for s in segments], separators=(",", ":"))
    return hashlib.sha256(text.encode()).digest()
