"""Local intrinsic dimension: d90 with one kind of submodule (plus the head) in the subspace, ranked.

Module kinds (``MODULE_KINDS``, the one spelling of these names in vitlab) are ``attn.q``, ``attn.k``, ``attn.v``
(row thirds of the fused ``qkv``), ``attn.proj`` (the attention output projection), ``mlp.fc1``, ``mlp.fc2`` and
``high_mixer`` (the Inception Transformer's high-frequency mixer); each maps to the subspace ``target_modules``
selectors that fit timm ViTs and the Inception Transformer. Kinds that match nothing in a model are skipped.

The ranked table is written to ``<out_dir>/intrinsic_dim_per_module.csv`` and ``.json`` (columns
``TABLE_COLUMNS``; the CSV's ``d90`` is empty where 90 % was not reached). Rank 1 is the kind with the smallest
interpolated d90 (kinds that never reach 90 % come last, by best accuracy). ``read_module_table`` is the one reader
of the table (the JSON, the CSV, the folder holding them, or a hand-written ``module,d90`` CSV); it also reads tables
written by vitlab versions that spelled the kinds ``attn_q``, ``attn_out``, ``mlp_fc1``, ... Selection rule for
KAdaptation's ``target_modules: auto`` (``vitlab.peft.auto``): ``select_modules(table, k=2)``, the ``k``
best-ranked kinds that reached the threshold.

Example:
    >>> from torch import nn
    >>> class Block(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.attn = nn.Module()
    ...         self.attn.qkv, self.attn.proj = nn.Linear(4, 12), nn.Linear(4, 4)
    >>> model = nn.Sequential(Block(), nn.Linear(4, 2))
    >>> available_module_kinds(model)
    ['attn.q', 'attn.k', 'attn.v', 'attn.proj']
    >>> module_kind_targets(model, "attn.v", head_modules=["1"])
    ['qkv@v', '1']
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from ..targets import classifier_names
from .layout import build_layout
from .sweep import find_d90, plot_sweep, run_sweep

__all__ = [
    "MODULE_KINDS", "PER_MODULE_CSV", "PER_MODULE_JSON", "TABLE_COLUMNS", "ModuleRecord",
    "available_module_kinds", "check_module_kinds", "module_kind_targets", "read_module_table", "run_per_module_sweep",
    "select_modules", "write_module_table",
]

MODULE_KINDS: dict[str, tuple[str, ...]] = {
    "attn.q": ("qkv@q",),
    "attn.k": ("qkv@k",),
    "attn.v": ("qkv@v",),
    "attn.proj": ("attn.proj",),
    "mlp.fc1": ("mlp.fc1",),
    "mlp.fc2": ("mlp.fc2",),
    "high_mixer": ("attn.high_mixer",),
}
# read side only: the kind names of tables written by earlier vitlab versions
_OLD_KIND_NAMES = {"attn_q": "attn.q", "attn_k": "attn.k", "attn_v": "attn.v", "attn_out": "attn.proj",
                   "mlp_fc1": "mlp.fc1", "mlp_fc2": "mlp.fc2"}
PER_MODULE_CSV = "intrinsic_dim_per_module.csv"
PER_MODULE_JSON = "intrinsic_dim_per_module.json"
SWEEP_CSV = "intrinsic_dim_per_module_sweep.csv"
PLOT = "intrinsic_dim_per_module.png"
TABLE_COLUMNS = ("rank", "module", "d90", "d90_interpolated", "reached", "num_params", "best_accuracy",
                 "reference_accuracy", "threshold", "targets")


@dataclass(frozen=True)
class ModuleRecord:
    """One row of the per-module table (``targets`` is the selector list, joined by ``;`` in the CSV).

    ``d90`` and ``d90_interpolated`` are ``None`` where the threshold was not reached; the measured columns
    (``num_params``, ``best_accuracy``, ``reference_accuracy``, ``threshold``) are ``None`` only in a hand-written
    ``module,d90`` table (see ``read_module_table``).
    """

    rank: int
    module: str
    d90: int | None
    d90_interpolated: float | None
    reached: bool
    num_params: int | None
    best_accuracy: float | None
    reference_accuracy: float | None
    threshold: float | None
    targets: tuple[str, ...]


def check_module_kinds(kinds: Sequence[str], what: str = "module kinds") -> None:
    """Refuse names that are not ``MODULE_KINDS`` keys (old spellings such as ``attn_q`` name their new name).

    Example:
        >>> check_module_kinds(["attn.v", "mlp.fc1"])
    """
    unknown = [k for k in kinds if k not in MODULE_KINDS]
    if unknown:
        renamed = {k: _OLD_KIND_NAMES[k] for k in unknown if k in _OLD_KIND_NAMES}
        raise ValueError(f"unknown {what} {unknown}{f' (renamed: {renamed})' if renamed else ''}; "
                         f"choose from {list(MODULE_KINDS)}")


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
    check_module_kinds([kind])
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
    include_head: bool = True,
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
        include_head: whether each kind's subspace holds the head too (``False`` when the head is trained directly,
            ``SubspaceConfig(train_head=True)``): each kind's grid stops at the size of what its subspace holds.

    Returns:
        The ranked ``ModuleRecord`` list (the table's rows).
    """
    kinds = list(kinds) if kinds is not None else available_module_kinds(model)
    if not kinds:
        raise ValueError(f"{type(model).__name__} has none of the module kinds {list(MODULE_KINDS)} (timm ViT and "
                         "Inception Transformer names): a per-module sweep needs such a model; sweep the whole model "
                         "instead (without --per_module), or choose the parameters with peft.target_modules")
    check_module_kinds(kinds)
    sizes = {k: _kind_size(model, k) for k in kinds}
    empty = [k for k, n in sizes.items() if n == 0]
    if not kinds or empty:
        raise ValueError(f"module kinds {empty or kinds} select nothing in {type(model).__name__}; "
                         f"available: {available_module_kinds(model)}")
    grid = sorted(set(dims))
    out = Path(out_dir)
    heads = classifier_names(model, head_modules) if include_head else []
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
                         targets=tuple(module_kind_targets(model, kind, include_head, head_modules))))
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
            values = [getattr(r, c) for c in TABLE_COLUMNS]
            writer.writerow(["" if v is None else (";".join(v) if isinstance(v, tuple) else v) for v in values])
    payload = dict(fraction=fraction, selection_rule="select_modules(table, k): the k best-ranked kinds that "
                   "reached the threshold (rank 1 = smallest interpolated d90)",
                   modules=[asdict(r) | {"targets": list(r.targets)} for r in records])
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    return csv_path, json_path


def _number(path: Path, column: str, raw: object, kind: type) -> float | int | None:
    """``raw`` (a CSV string or a JSON value) as ``kind``; empty/``None`` (and for d90 ``nan``/``inf``) -> ``None``."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: column {column!r} must be a number, got {raw!r}") from None
    if column == "d90" and not math.isfinite(value):
        return None
    if kind is int and not value.is_integer():
        raise ValueError(f"{path}: column {column!r} must be a whole number, got {raw!r} (a fractional d90 belongs "
                         "in d90_interpolated)")
    return int(value) if kind is int else value


def _module_kind(path: Path, name: object) -> str:
    kind = _OLD_KIND_NAMES.get(str(name).strip(), str(name).strip())
    if kind not in MODULE_KINDS:
        raise ValueError(f"{path}: unknown module kind {name!r}; known kinds are {list(MODULE_KINDS)}")
    return kind


def _full_record(path: Path, r: dict) -> ModuleRecord:
    missing = set(TABLE_COLUMNS) - set(r)
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)}; rewrite it with write_module_table")
    if r["reached"] not in (True, False, "True", "False"):
        raise ValueError(f"{path}: column 'reached' must be True or False, got {r['reached']!r}")
    ints = {c: _number(path, c, r[c], int) for c in ("rank", "d90", "num_params")}
    if ints["rank"] is None:
        raise ValueError(f"{path}: every row needs a rank (module {r['module']!r} has none)")
    floats = {c: _number(path, c, r[c], float) for c in ("d90_interpolated", "best_accuracy", "reference_accuracy",
                                                         "threshold")}
    targets = tuple(r["targets"].split(";") if isinstance(r["targets"], str) else r["targets"])
    return ModuleRecord(module=_module_kind(path, r["module"]), reached=r["reached"] in (True, "True"),
                        targets=targets, **ints, **floats)


def _hand_written_records(path: Path, rows: list[dict]) -> list[ModuleRecord]:
    """Rows of a ``module,d90`` CSV, ranked by d90 (ties and unreached kinds in table order)."""
    d90s = [(_module_kind(path, r["module"]), _number(path, "d90", r["d90"], int)) for r in rows]
    ranked = sorted(d90s, key=lambda kd: (kd[1] is None, kd[1] or 0))  # stable: ties keep the table order
    return [ModuleRecord(rank=i + 1, module=kind, d90=d90, d90_interpolated=None if d90 is None else float(d90),
                         reached=d90 is not None, num_params=None, best_accuracy=None, reference_accuracy=None,
                         threshold=None, targets=()) for i, (kind, d90) in enumerate(ranked)]


def read_module_table(path: str | Path) -> list[ModuleRecord]:
    """Read the per-module table: its JSON, its CSV, the folder holding them (the JSON first), or a hand-written CSV.

    A hand-written CSV has the columns ``module`` and ``d90`` (empty, ``nan`` or ``inf``: not reached) and none of the
    table's other columns (columns outside ``TABLE_COLUMNS`` are ignored): its rows are ranked by d90 (ties and
    unreached kinds in table order), ``d90_interpolated`` is d90, and the measured columns (``num_params``,
    ``best_accuracy``, ``reference_accuracy``, ``threshold``) are ``None``, ``targets`` empty. Module kinds spelled as
    by earlier vitlab versions (``attn_q``, ``attn_out``, ``mlp_fc1``, ...) are read as ``MODULE_KINDS`` names.

    Args:
        path: a ``PER_MODULE_JSON`` / ``PER_MODULE_CSV`` file, a hand-written CSV, or a folder holding the table.

    Returns:
        The ``ModuleRecord`` rows, in rank order.

    Raises:
        FileNotFoundError: no table at ``path``.
        ValueError: missing columns, an unknown or repeated module kind, a non-number, ranks other than 1..n, no rows.

    Example:
        >>> import tempfile
        >>> table = Path(tempfile.mkdtemp()) / "d90.csv"
        >>> _ = table.write_text("module,d90\\nmlp_fc1,900\\nattn.q,120\\nhigh_mixer,\\n")
        >>> [(r.rank, r.module, r.d90, r.reached) for r in read_module_table(table)]
        [(1, 'attn.q', 120, True), (2, 'mlp.fc1', 900, True), (3, 'high_mixer', None, False)]
    """
    p = Path(path)
    if p.is_dir():
        p = p / PER_MODULE_JSON if (p / PER_MODULE_JSON).exists() else p / PER_MODULE_CSV
    if not p.is_file():
        raise FileNotFoundError(f"no per-module intrinsic-dimension table at {p}; run the per-module sweep "
                                "(vitlab intrinsic-dim --per_module true) first, or name target_modules explicitly")
    if p.suffix == ".json":
        try:
            rows = json.loads(p.read_text())["modules"]
        except (KeyError, TypeError, ValueError) as err:  # JSONDecodeError is a ValueError
            raise ValueError(f"{p} is not a per-module table JSON with a 'modules' list ({err!r}); rerun the "
                             "per-module sweep") from None
        records = [_full_record(p, r) for r in rows]
    else:
        with p.open(newline="") as f:
            reader = csv.DictReader(f)
            columns, rows = set(reader.fieldnames or ()), list(reader)
        measured = columns & (set(TABLE_COLUMNS) - {"module", "d90"})
        if not {"module", "d90"} <= columns or (measured and not set(TABLE_COLUMNS) <= columns):
            raise ValueError(f"{p} has columns {sorted(columns)}: a per-module table has all of {list(TABLE_COLUMNS)} "
                             "(rewrite it with write_module_table) or, hand-written, 'module' and 'd90' only")
        records = [_full_record(p, r) for r in rows] if measured else _hand_written_records(p, rows)
    kinds = [r.module for r in records]
    if not records or len(set(kinds)) < len(kinds):
        raise ValueError(f"{p} must list each module kind once, got {kinds}")
    if sorted(r.rank for r in records) != list(range(1, len(records) + 1)):
        raise ValueError(f"{p}: ranks must be 1..{len(records)}, got {[r.rank for r in records]}")
    return sorted(records, key=lambda r: r.rank)


def select_modules(records: Sequence[ModuleRecord], k: int = 2, available: Collection[str] | None = None) -> list[str]:
    """The ``k`` best-ranked module kinds that reached the threshold (the ``target_modules: auto`` rule).

    Args:
        records: the table (``read_module_table``).
        k: how many kinds to choose (fewer if fewer qualify).
        available: consider only these kinds (those the model has something to adapt in); ``None``: all.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    usable = set(MODULE_KINDS) if available is None else set(available)
    chosen = [r.module for r in sorted(records, key=lambda r: r.rank) if r.reached and r.module in usable][:k]
    if not chosen:
        raise ValueError(f"no module kind of the table reached the threshold and is adaptable in this model (table: "
                         f"{[(r.module, r.d90) for r in records]}, adaptable: {sorted(usable)}); widen the d grid and "
                         "rerun the per-module sweep, or name target_modules explicitly")
    return chosen
