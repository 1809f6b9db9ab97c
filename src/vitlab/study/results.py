"""The tables of a study: writing and reading them, and the one aggregation of seeds.

- `aggregate_seeds`: rows grouped by some keys, per column the mean, sample std and 95 % t-interval over the group's
  seeds (`mean_interval`); the ``vitlab peft-study`` summary (`summarize_study`) and the study report both use it;
- `write_csv` / `read_result_rows`: the fine-tuning results table (``results.csv`` of ``vitlab peft-study`` and
  ``finetune/results.csv`` of ``vitlab study``), one row per run;
- `load_study(folder)` validates and returns everything `vitlab.study.report` renders: the metadata, the per-run rows
  of the study's ``results.csv`` (``REQUIRED_COLUMNS``; accuracies are fractions, empty = not measured), the rows
  grouped by (backbone, method, negatives, shots), each run's training curve, and the optional
  ``intrinsic/<backbone>/intrinsic_dim.json`` and ``intrinsic_dim_per_module.csv`` (read by
  `vitlab.peft.intrinsic.per_module.read_module_table`).

Example:
    >>> rows = [{"method": "lora", "seed": s, "accuracy": a} for s, a in enumerate([0.70, 0.72, 0.74])]
    >>> group = aggregate_seeds(rows, ("method",), ("accuracy",))[0]
    >>> group["method"], group["seeds"], round(group["accuracy"], 4), round(group["accuracy_std"], 4)
    ('lora', 3, 0.72, 0.02)

Usage (with a folder written by ``vitlab study``)::

    study = load_study("runs/study")
    study["rows"][0]["clean_acc"]  # mean clean accuracy of the first (backbone, method, negatives, shots) group
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vitlab.errors import DataError, MissingFileError
from vitlab.eval.defaults import SEVERITIES

__all__ = ["ACCURACY_COLUMNS", "CONFIDENCE_COLUMNS", "REQUIRED_COLUMNS", "SEVERITY_COLUMNS", "STUDY_HINT",
           "aggregate_seeds", "load_study", "mean_interval", "read_result_rows", "summarize_study", "training_curves",
           "write_csv"]

SEVERITY_COLUMNS = tuple(f"corruption_acc_s{s}" for s in SEVERITIES)
ACCURACY_COLUMNS = ("clean_acc", "corruption_acc", *SEVERITY_COLUMNS, "extra_corruption_acc", "neg_shuffle_acc",
                    "neg_rotate_acc", "neg_infill_acc")
#: Mean max-softmax confidence on each negative-view kind (the paper's diagnostic beside the views' accuracy);
#: optional columns: tables written before they existed read as not measured.
CONFIDENCE_COLUMNS = ("neg_shuffle_conf", "neg_rotate_conf", "neg_infill_conf")
REQUIRED_COLUMNS = ("run", "backbone", "method", "negatives", "shots", "seed", "trainable_params", *ACCURACY_COLUMNS,
                    "train_time_s", "run_dir")
STUDY_HINT = "run `vitlab study --config configs/study.yaml` first"
_INT_COLUMNS = ("seed", "trainable_params", "adaptation_params", "train_size", "steps")
_FLOAT_COLUMNS = ("accuracy", "train_time_s", "peak_memory_mb", "peak_gpu_memory_mb", "wall_time_s")


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write dict rows as CSV (columns: union of keys, first-seen order); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_result_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a fine-tuning ``results.csv`` (`vitlab.study.launch.launch_run` rows; numbers parsed, empty cells
    left out; ``[]`` when the file does not exist)."""
    if not path.is_file():
        return []
    rows = []
    fix = "fix that row, or delete it (or the file) to rerun those runs"
    with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: a file saved again by a spreadsheet
        reader = csv.DictReader(handle)
        if reader.fieldnames and (missing := [c for c in ("run", "shots") if c not in reader.fieldnames]):
            raise _fail(path, f"lacks the column(s) {missing}", "delete the file to rerun its runs")
        for line, row in enumerate(reader, start=2):
            if None in row:  # more cells than columns
                raise _fail(path, f"line {line} has more cells than the header has columns", fix)
            row = {k: v for k, v in row.items() if v not in (None, "")}
            if "run" not in row:
                raise _fail(path, f"line {line} names no run", fix)
            shots = row.get("shots", "")
            if shots != "full" and not shots.isdigit():
                raise _fail(path, f"line {line}: shots={shots!r} is neither a count nor 'full'", fix)
            row["shots"] = shots if shots == "full" else int(shots)
            row.update({k: _number(path, line, k, row[k], int) for k in _INT_COLUMNS if k in row})
            row.update({k: _number(path, line, k, row[k]) for k in _FLOAT_COLUMNS if k in row})
            rows.append(row)
    return rows


def _fail(path: Path, problem: str, fix: str) -> DataError:
    return DataError(f"{path}: {problem}; {fix}")


def _number(path: Path, line: int, column: str, text: str | None, cast: type = float) -> Any:
    if not (text := (text or "").strip()):
        return None
    try:
        return cast(float(text))
    except ValueError:
        raise _fail(path, f"line {line}: {column}={text!r} is not a number", "fix or rewrite that row") from None


def _read_results(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if missing := [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]:
            raise _fail(path, f"lacks the required columns {missing}",
                        f"rewrite it with `vitlab study` (columns: {', '.join(REQUIRED_COLUMNS)})")
        runs = []
        for line, row in enumerate(reader, start=2):
            run = {c: (row[c] or "").strip() for c in ("run", "backbone", "method", "negatives", "run_dir")}
            run["negatives"] = run["negatives"] or "none"
            shots = (row["shots"] or "").strip()
            run["shots"] = int(shots) if shots.isdigit() else shots
            run["seed"] = _number(path, line, "seed", row["seed"], int)
            run["trainable_params"] = _number(path, line, "trainable_params", row["trainable_params"], int)
            for column in (*ACCURACY_COLUMNS, *CONFIDENCE_COLUMNS):
                value = run[column] = _number(path, line, column, row.get(column))
                if value is not None and not 0 <= value <= 1:
                    raise _fail(path, f"line {line}: {column}={value} is not a fraction in [0, 1]",
                                "write accuracies as fractions (0.9123, not 91.23)")
            runs.append(run)
    return runs


def mean_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float, float] | None:
    """Mean, sample std and the two-sided Student-t interval of the mean: ``(mean, std, low, high)``.

    ``low, high = mean ∓ t_{(1 + confidence) / 2, n - 1} · std / sqrt(n)``; ``None`` for fewer than 2 values (no
    spread can be estimated from one seed).

    Example:
        >>> mean, std, low, high = mean_interval([0.70, 0.72, 0.74])
        >>> round(mean, 4), round(std, 4), round(low, 4), round(high, 4)
        (0.72, 0.02, 0.6703, 0.7697)
    """
    if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence!r}")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v)]
    if bad:
        raise ValueError(f"mean_interval takes finite numbers (one per seed), got {bad[:3]!r}: drop the failed runs' "
                         "values (None / nan) before aggregating")
    if len(values) < 2:
        return None
    from scipy.stats import t

    mean, std = statistics.mean(values), statistics.stdev(values)
    half = float(t.ppf((1 + confidence) / 2, len(values) - 1)) * std / len(values) ** 0.5
    return mean, std, mean - half, mean + half


def aggregate_seeds(rows: Sequence[Mapping[str, Any]], keys: Sequence[str],
                    columns: Sequence[str]) -> list[dict[str, Any]]:
    """Group ``rows`` by ``keys`` (in order of first appearance) and summarise each of ``columns`` over a group.

    Each group is one dict: the ``keys``' values, ``seeds`` (the number of rows), ``members`` (the rows) and, per
    column, ``<column>`` (mean of the values that are not ``None``; ``None`` when there are none), ``<column>_n`` (their
    number), ``<column>_std`` (sample std, ddof 1) and ``<column>_ci`` (95 % t-interval ``(low, high)``), both ``None``
    below 2 values (`mean_interval`).
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        if missing := [k for k in (*keys, *columns) if k not in row]:
            raise ValueError(f"row {dict(row)} lacks {missing}")
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for values, members in groups.items():
        group: dict[str, Any] = dict(zip(keys, values, strict=True))
        group.update(seeds=len(members), members=members)
        for column in columns:
            measured = [float(m[column]) for m in members if m[column] is not None]
            spread = mean_interval(measured)
            group[column] = statistics.mean(measured) if measured else None
            group[f"{column}_n"] = len(measured)
            group[f"{column}_std"] = spread[1] if spread else None
            group[f"{column}_ci"] = spread[2:] if spread else None
        out.append(group)
    return out


def summarize_study(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ``vitlab peft-study`` summary: per ``(method, shots)`` the accuracy mean, sample std over seeds and 95 %
    t-interval of the mean (``accuracy_ci_low`` / ``_high``; std and interval ``None`` for one seed: no spread can be
    estimated from it), the trainable parameters and the means of ``train_time_s`` / ``peak_memory_mb`` where present.

    Each row needs ``method``, ``shots`` (int or ``"full"``), ``seed``, ``accuracy``, ``trainable_params``.

    Example:
        >>> summarize_study([{"method": "linear", "shots": 5, "seed": s, "accuracy": a, "trainable_params": 1290}
        ...                  for s, a in enumerate([0.5, 0.6, 0.7])])[0]["accuracy_std"]
        0.1
    """
    for row in rows:
        if missing := sorted({"method", "shots", "seed", "accuracy", "trainable_params"} - set(row)):
            raise ValueError(f"study row {dict(row)} lacks {missing}")
    summary = []
    for group in aggregate_seeds(rows, ("method", "shots"), ("accuracy",)):
        interval = group["accuracy_ci"] or (None, None)
        entry = {"method": group["method"], "shots": group["shots"], "seeds": group["seeds"],
                 "accuracy_mean": round(group["accuracy"], 6), "accuracy_std": _rounded(group["accuracy_std"]),
                 "accuracy_ci_low": _rounded(interval[0]), "accuracy_ci_high": _rounded(interval[1]),
                 "trainable_params": int(group["members"][0]["trainable_params"])}
        for key in ("train_time_s", "peak_memory_mb"):
            values = [float(r[key]) for r in group["members"] if r.get(key) not in (None, "")]
            if values:
                entry[key] = round(sum(values) / len(values), 3)
        summary.append(entry)
    return summary


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The report's table rows: runs grouped by (backbone, method, negatives, shots), see `aggregate_seeds`."""
    rows = []
    for group in aggregate_seeds(runs, ("backbone", "method", "negatives", "shots"),
                                 (*ACCURACY_COLUMNS, *CONFIDENCE_COLUMNS)):
        members = group.pop("members")
        params = [m["trainable_params"] for m in members if m["trainable_params"] is not None]
        rows.append({**{k: group.pop(k) for k in ("backbone", "method", "negatives", "shots", "seeds")},
                     "seed_list": [m["seed"] for m in members], "runs": [m["run"] for m in members],
                     "trainable_params": params[0] if params else None, **group})
    return rows


def _read_sweep(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["points"] = {int(d): float(a) for d, a in data["points"].items()}
        data["reference"], data["threshold"] = float(data["reference"]), float(data["threshold"])
        for key in ("d90", "d90_interpolated"):  # absent / null: not reached; a number written as text counts
            if data.get(key) is not None:
                data[key] = float(data[key]) if key == "d90_interpolated" else int(float(data[key]))
        if data.get("d90") is not None and data["d90"] not in data["points"]:
            raise ValueError(f"d90 {data['d90']} is not one of the measured points {sorted(data['points'])}")
    except (KeyError, TypeError, ValueError, AttributeError) as err:  # JSONDecodeError is a ValueError
        raise _fail(path, f"not an intrinsic_dim.json with reference, threshold and points ({err!r})",
                    "rerun `vitlab intrinsic-dim` for that backbone, or delete the file") from None
    return data


def _read_module_table(path: Path) -> list[dict[str, Any]]:
    """The per-module table's rows for the report (module kinds as in ``MODULE_KINDS``: ``attn.q``, ``mlp.fc1``)."""
    from vitlab.peft.intrinsic.per_module import read_module_table

    try:
        records = read_module_table(path)
    except ValueError as err:
        raise _fail(path, f"not a per-module table ({err})", "rerun `vitlab intrinsic-dim --per-module`") from None
    if any(r.best_accuracy is None for r in records):
        raise _fail(path, "a hand-written module,d90 table (no measured accuracies)",
                    "rerun `vitlab intrinsic-dim --per-module`")
    return [dict(rank=r.rank, module=r.module, reached=r.reached,
                 d90_interpolated=r.d90_interpolated, best_accuracy=r.best_accuracy) for r in records]


def _series(rows: list[dict[str, float]], keys: tuple[str, ...]) -> tuple[list[tuple[float, float]], str, str | None]:
    """``(points, x label, key)`` of the first of ``keys`` the rows hold (x: step where every such row has one)."""
    key = next((k for k in keys if any(k in r for r in rows)), None)
    if key is None:
        return [], "step", None
    x = "step" if all("step" in r for r in rows if key in r) else "epoch"
    return [(r[x], r[key]) for r in rows if key in r and x in r], x, key


def training_curves(folder: Path, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run with a metrics.csv: the cross-entropy and the negative loss as separate curves.

    ``points``: ``train/loss_ce`` (the cross-entropy alone) vs step, ``y_label`` "cross-entropy"; runs logged before
    it existed fall back to the total ``train/loss_step`` (then ``train/loss_epoch``), ``y_label`` "training loss
    (total)". ``negative_points``: ``train/negatives/loss_step`` (then ``_epoch``), the negative term before its
    weight, ``[]`` for a run without negatives.
    """
    from vitlab.metrics import read_metrics  # here: importing torch (vitlab.metrics) would slow the parsers' --help

    curves = []
    for run in runs:
        if not run["run_dir"] or not (path := folder / run["run_dir"] / "metrics.csv").is_file():
            continue
        try:
            rows = read_metrics(path)
        except ValueError as err:
            raise _fail(path, f"not a Lightning metrics.csv ({err})", "rerun that fine-tuning run") from None
        points, x, key = _series(rows, ("train/loss_ce", "train/loss_step", "train/loss_epoch"))
        negative, negative_x, _ = _series(rows, ("train/negatives/loss_step", "train/negatives/loss_epoch"))
        curves.append(dict(run, points=points, x_label=x,
                           y_label="cross-entropy" if key == "train/loss_ce" else "training loss (total)",
                           negative_points=negative, negative_x_label=negative_x))
    return curves


def load_study(study_dir: str | Path) -> dict[str, Any]:
    """``{"folder", "meta", "runs", "rows", "sweeps", "tables"}`` of a study folder (see the module docstring).

    Raises:
        MissingFileError: the folder, ``study.json`` or ``results.csv`` is missing (run ``vitlab study`` first).
        DataError: a malformed file; the message names the file, line or columns and the fix.
    """
    folder = Path(study_dir)
    for path in (folder, folder / "study.json", folder / "results.csv"):
        if not path.exists():
            raise MissingFileError(f"{path} does not exist; {STUDY_HINT} (it writes study.json and results.csv)")
    try:
        meta = json.loads((folder / "study.json").read_text(encoding="utf-8"))
    except ValueError as err:
        raise _fail(folder / "study.json", f"not valid JSON ({err})", "rerun `vitlab study` to rewrite it") from None
    if missing := [k for k in ("name", "command") if not isinstance(meta, dict) or not isinstance(meta.get(k), str)]:
        raise _fail(folder / "study.json", f"lacks the string key(s) {missing}", "rerun `vitlab study` to rewrite it")
    runs = _read_results(folder / "results.csv")
    subs = sorted(p for p in (folder / "intrinsic").glob("*") if p.is_dir())
    return dict(folder=folder, meta=meta, runs=runs, rows=_aggregate(runs),
                sweeps={p.name: _read_sweep(p / "intrinsic_dim.json") for p in subs
                        if (p / "intrinsic_dim.json").is_file()},
                tables={p.name: _read_module_table(p / "intrinsic_dim_per_module.csv") for p in subs
                        if (p / "intrinsic_dim_per_module.csv").is_file()})
