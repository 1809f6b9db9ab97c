"""Local intrinsic dimension: d90 with one kind of submodule (plus the head) in the subspace, ranked.

Module kinds (``MODULE_KINDS``) are ``target_modules`` selectors that fit timm ViTs and the Inception Transformer:
attention query/key/value (row thirds of the fused ``qkv``), the attention output projection, MLP ``fc1``/``fc2``,
and the Inception Transformer's high-frequency mixer. Kinds that match nothing in a model are skipped.

The ranked table is written to ``<out_dir>/intrinsic_dim_per_module.csv`` and ``.json`` (columns
``TABLE_COLUMNS``). Rank 1 is the kind with the smallest interpolated d90 (kinds that never reach 90 % come last,
by best accuracy). Selection rule for KAdaptation's ``target_modules: auto``: ``select_modules(table, k=2)``, the
``k`` best-ranked kinds that reached the threshold.

The CSV is the file KAdaptation reads (``KAdaptationConfig(target_modules="auto", intrinsic_table=<csv>)``, see
``vitlab.peft.auto``): its ``module`` column uses the KAdaptation kind names (``KADAPTATION_KINDS``: ``attn.q``,
``attn.proj``, ``mlp.fc1``, ...) and its ``d90`` column is empty where 90 % was not reached. The JSON keeps this
module's names in ``module`` and adds ``kadaptation_kind``; ``read_module_table`` reads either file.

Example:
    >>> from torch import nn
    >>> class Block(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.attn = nn.Module()
    ...         self.attn.qkv, self.attn.proj = nn.Linear(4, 12), nn.Linear(4, 4)
    >>> model = nn.Sequential(Block(), nn.Linear(4, 2))
    >>> available_module_kinds(model)
    ['attn_q', 'attn_k', 'attn_v', 'attn_out']
    >>> module_kind_targets(model, "attn_v", head_modules=["1"])
    ['qkv@v', '1']
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from ..targets import classifier_names
from .layout import build_layout
from .sweep import find_d90, plot_sweep, run_sweep

__all__ = [
    "KADAPTATION_KINDS", "MODULE_KINDS", "PER_MODULE_CSV", "PER_MODULE_JSON", "TABLE_COLUMNS", "ModuleRecord",
    "available_module_kinds", "module_kind_targets", "read_module_table", "run_per_module_sweep", "select_modules",
    "write_module_table",
]

MODULE_KINDS: dict[str, tuple[str, ...]] = {
    "attn_q": ("qkv@q",),
    "attn_k": ("qkv@k",),
    "attn_v": ("qkv@v",),
    "attn_out": ("attn.proj",),
    "mlp_fc1": ("mlp.fc1",),
    "mlp_fc2": ("mlp.fc2",),
    "high_mixer": ("attn.high_mixer",),
}
# the names of the same kinds in ``vitlab.peft.auto.MODULE_KINDS`` (what KAdaptation's ``target_modules: auto`` reads)
KADAPTATION_KINDS = {"attn_q": "attn.q", "attn_k": "attn.k", "attn_v": "attn.v", "attn_out": "attn.proj",
                     "mlp_fc1": "mlp.fc1", "mlp_fc2": "mlp.fc2", "high_mixer": "high_mixer"}
_FROM_KADAPTATION = {v: k for k, v in KADAPTATION_KINDS.items()}
PER_MODULE_CSV = "intrinsic_dim_per_module.csv"
PER_MODULE_JSON = "intrinsic_dim_per_module.json"
SWEEP_CSV = "intrinsic_dim_per_module_sweep.csv"
PLOT = "intrinsic_dim_per_module.png"
TABLE_COLUMNS = ("rank", "module", "d90", "d90_interpolated", "reached", "num_params", "best_accuracy",
                 "reference_accuracy", "threshold", "targets")


@dataclass(frozen=True)
class ModuleRecord:
    """One row of the per-module table (``targets`` is the selector list, joined by ``;`` in the CSV)."""

    rank: int
    module: str
    d90: int | None
    d90_interpolated: float | None
    reached: bool
    num_params: int
    best_accuracy: float
    reference_accuracy: float
    threshold: float
    targets: tuple[str, ...]


def _kind_size(model: nn.Module, kind: str) -> int:
    try:
        return sum(s.numel for s in build_layout(model, list(MODULE_KINDS[kind])))
    except ValueError:
        return 0


def available_module_kinds(model: nn.Module) -> list[str]:
    """The ``MODULE_KINDS`` that select at least one parameter of ``model``, in table order."""
    return [k for k in MODULE_KINDS if _kind_size(model, k) > 0]


def module_kind_targets(model: nn.Module, kind: str, include_head: bool = True,
                        head_modules: Sequence[str] | None = None) -> list[str]:
    """``target_modules`` for one kind: its selectors, plus the classifier head (a new task needs a trainable head).

    Args:
        model: the base model.
        kind: a key of ``MODULE_KINDS``.
        include_head: add the head modules (``head_modules`` or timm's ``get_classifier()``) to the subspace.
        head_modules: explicit head module names.
    """
    if kind not in MODULE_KINDS:
        raise ValueError(f"unknown module kind {kind!r}; choose from {list(MODULE_KINDS)}")
    targets = list(MODULE_KINDS[kind])
    if include_head:
        heads = classifier_names(model, head_modules)
        if not heads:
            raise ValueError(f"{type(model).__name__} has no get_classifier(); pass head_modules=[...] "
                             "or include_head=False")
        targets += heads
    return targets


def _rank(records: list[dict]) -> list[ModuleRecord]:
    def key(r: dict) -> tuple:
        return (0, r["d90_interpolated"], r["num_params"]) if r["reached"] else (1, -r["best_accuracy"], 0)

    return [ModuleRecord(rank=i + 1, **r) for i, r in enumerate(sorted(records, key=key))]


def run_per_module_sweep(
    model: nn.Module,
    train_and_eval: Callable[[str, int], float],
    dims: Iterable[int],
    out_dir: str | Path,
    *,
    reference: float | Callable[[], float],
    kinds: Sequence[str] | None = None,
    fraction: float = 0.9,
    stop_after_reached: int | None = None,
    refine_ratio: float | None = None,
    head_modules: Sequence[str] | None = None,
) -> list[ModuleRecord]:
    """Sweep d for each module kind, then write the ranked table (CSV + JSON) and a plot into ``out_dir``.

    Args:
        model: the base model (used for the kinds' sizes; the grid is capped at each kind's D).
        train_and_eval: ``(kind, dim) -> accuracy``; build the run with
            ``SubspaceConfig(dim=dim, target_modules=module_kind_targets(model, kind))``.
        dims: the d grid.
        out_dir: folder of the sweep CSV (resumable, shared across processes), the table and the plot.
        reference: the 100 % accuracy, or a callable training the reference run (recorded once).
        kinds: module kinds to measure (default: ``available_module_kinds(model)``).
        fraction: 0.9 for d90.
        stop_after_reached: per kind, skip the rest of the grid after this many points reached the threshold.
        refine_ratio: per kind, add points between the last miss and the first hit until they are at most this
            factor apart (see ``run_sweep``); ``None``: the grid only.
        head_modules: explicit classifier module names (default: timm's ``get_classifier()``).

    Returns:
        The ranked ``ModuleRecord`` list (the table's rows).
    """
    kinds = list(kinds) if kinds is not None else available_module_kinds(model)
    unknown = [k for k in kinds if k not in MODULE_KINDS]
    if unknown:
        raise ValueError(f"unknown module kinds {unknown}; choose from {list(MODULE_KINDS)}")
    sizes = {k: _kind_size(model, k) for k in kinds}
    empty = [k for k, n in sizes.items() if n == 0]
    if not kinds or empty:
        raise ValueError(f"module kinds {empty or kinds} select nothing in {type(model).__name__}; "
                         f"available: {available_module_kinds(model)}")
    grid = sorted(set(dims))
    out = Path(out_dir)
    heads = classifier_names(model, head_modules)
    head_size = sum(p.numel() for n, p in model.named_parameters() if any(n.startswith(h + ".") for h in heads))
    results, rows = {}, []
    for kind in kinds:
        kind_grid = [d for d in grid if d <= sizes[kind] + head_size] or [sizes[kind] + head_size]
        result = run_sweep(lambda d, kind=kind: train_and_eval(kind, d), kind_grid, out / SWEEP_CSV,
                           reference=reference, group=kind, fraction=fraction, stop_after_reached=stop_after_reached,
                           refine_ratio=refine_ratio)
        if result.reference is None or not result.points:
            raise RuntimeError(f"the sweep of {kind!r} has no reference or no finished point yet (another process "
                               "may still be running it); run again to collect the table")
        d90 = find_d90(result.points, result.reference, fraction)
        results[kind] = result.points
        rows.append(dict(module=kind, d90=d90.raw, d90_interpolated=d90.interpolated, reached=d90.raw is not None,
                         num_params=sizes[kind], best_accuracy=max(result.points.values()),
                         reference_accuracy=result.reference, threshold=d90.threshold,
                         targets=tuple(module_kind_targets(model, kind, head_modules=head_modules))))
    records = _rank(rows)
    write_module_table(records, out, fraction=fraction)
    plot_sweep(results, records[0].reference_accuracy, out / PLOT, fraction=fraction,
               title="Local intrinsic dimension per module kind")
    return records


def write_module_table(
    records: Sequence[ModuleRecord], out_dir: str | Path, fraction: float = 0.9
) -> tuple[Path, Path]:
    """Write ``PER_MODULE_CSV`` and ``PER_MODULE_JSON`` into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / PER_MODULE_CSV, out / PER_MODULE_JSON
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(TABLE_COLUMNS)
        for r in records:
            values = [KADAPTATION_KINDS[r.module] if c == "module" else getattr(r, c) for c in TABLE_COLUMNS]
            writer.writerow(["" if v is None else (";".join(v) if isinstance(v, tuple) else v) for v in values])
    payload = dict(fraction=fraction, selection_rule="select_modules(table, k): the k best-ranked kinds that "
                   "reached the threshold (rank 1 = smallest interpolated d90)",
                   modules=[asdict(r) | {"targets": list(r.targets), "kadaptation_kind": KADAPTATION_KINDS[r.module]}
                            for r in records])
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    return csv_path, json_path


def read_module_table(path: str | Path) -> list[ModuleRecord]:
    """Read a table written by ``write_module_table``: its JSON, its CSV, or the folder holding them."""
    p = Path(path)
    if p.is_dir():
        p = p / PER_MODULE_JSON if (p / PER_MODULE_JSON).exists() else p / PER_MODULE_CSV
    if not p.exists():
        raise FileNotFoundError(f"no per-module intrinsic-dimension table at {p}; run the per-module sweep "
                                "(vitlab intrinsic-dim --per-module) first")
    if p.suffix == ".json":
        rows = json.loads(p.read_text())["modules"]
    else:
        with p.open(newline="") as f:
            rows = [{c: r[c] for c in TABLE_COLUMNS} for r in csv.DictReader(f)]
    records = []
    for r in rows:
        missing = set(TABLE_COLUMNS) - set(r)
        if missing:
            raise ValueError(f"{p} lacks columns {sorted(missing)}; rewrite it with write_module_table")
        value = {c: r[c] for c in TABLE_COLUMNS}
        value["module"] = _FROM_KADAPTATION.get(r["module"], r["module"])
        value["targets"] = tuple(r["targets"].split(";") if isinstance(r["targets"], str) else r["targets"])
        value["reached"] = r["reached"] in (True, "True")
        for name in ("rank", "num_params", "d90"):
            value[name] = int(r[name]) if r[name] not in (None, "") else None
        for name in ("d90_interpolated", "best_accuracy", "reference_accuracy", "threshold"):
            value[name] = float(r[name]) if r[name] not in (None, "") else None
        records.append(ModuleRecord(**value))
    return sorted(records, key=lambda r: r.rank)


def select_modules(records: Sequence[ModuleRecord], k: int = 2) -> list[str]:
    """The ``k`` best-ranked module kinds that reached the threshold (the ``auto`` target rule)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    chosen = [r.module for r in sorted(records, key=lambda r: r.rank) if r.reached][:k]
    if not chosen:
        raise ValueError("no module kind reached 90 % of the reference; widen the d grid and rerun the per-module "
                         "sweep, or name target_modules explicitly")
    return chosen
