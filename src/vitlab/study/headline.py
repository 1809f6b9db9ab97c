"""Headline effects of a study: for each advance, two numbers compared, their difference, its spread and a verdict.

A study config lists its comparisons under ``headlines`` (`vitlab.study.config.HeadlineSpec`): on one results column
(``metric``, e.g. ``clean_acc`` or ``neg_shuffle_conf``), the group of runs selected by ``a`` against the group
selected by ``b``, each selection naming some of (backbone, method, negatives, shots) and matching exactly one group.
`headline_rows` computes from the per-run rows, per comparison:

- each group's mean over its seeds, its number of seeds and trainable parameters;
- the difference A − B of the two means;
- the spread, named: where both groups ran the same ≥ 2 seeds, the sample std over seeds of the per-seed difference
  ("paired": a seed draws the same few-shot training images for both, so the draw cancels); otherwise
  √(std_A² + std_B²) of the groups' sample stds over seeds ("unpaired"); with one seed in either group there is none
  ("1 seed");
- the verdict: ``LARGER`` when |difference| > spread, ``NOISE`` otherwise or without a spread.

`d90_row` states whether an intrinsic-dimension sweep reached its threshold on its grid.

Example:
    >>> runs = [{"backbone": b, "method": "full", "negatives": "none", "shots": 20, "seed": s, "trainable_params": p,
    ...          "clean_acc": a} for b, p, s, a in [("iformer", 1616410, 0, 0.70), ("iformer", 1616410, 1, 0.69),
    ...                                             ("vit", 1004170, 0, 0.63), ("vit", 1004170, 1, 0.60)]]
    >>> spec = {"advance": "architecture", "metric": "clean_acc", "a": {"backbone": "iformer"},
    ...         "b": {"backbone": "vit"}}
    >>> row = headline_rows(runs, [spec])[0]
    >>> round(row["difference"], 4), round(row["spread"], 4), row["spread_kind"], row["verdict"]
    (0.08, 0.0141, 'paired', 'larger than its spread')
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from vitlab.study.results import ACCURACY_COLUMNS, CONFIDENCE_COLUMNS

__all__ = ["GROUP_KEYS", "HEADLINE_METRICS", "LARGER", "NOISE", "check_headline", "d90_row", "headline_rows",
           "select_group"]

#: The keys a selection may name: the report's grouping of runs.
GROUP_KEYS = ("backbone", "method", "negatives", "shots")
#: The results columns a headline may compare (fractions: accuracies and negative-view confidences).
HEADLINE_METRICS = (*ACCURACY_COLUMNS, *CONFIDENCE_COLUMNS)
LARGER = "larger than its spread"
NOISE = "not distinguishable from noise at this budget"


def _matches(group: Mapping[str, Any], selection: Mapping[str, Any]) -> bool:
    return all(str(group[k]) == str(v) for k, v in selection.items())


def check_headline(spec: Mapping[str, Any], groups: Iterable[tuple[Any, ...]], where: str = "headline") -> None:
    """Refuse a headline spec before anything runs: an unknown metric, or a selection that does not pick exactly one of
    the ``groups`` a study plans (``(backbone, method, negatives, shots)`` tuples).

    Raises:
        ValueError: naming the valid metrics, or the planned groups so that the selection can be narrowed.
    """
    if spec.get("metric") not in HEADLINE_METRICS:
        raise ValueError(f"{where}.metric {spec.get('metric')!r} is not a results column; choose one of "
                         f"{list(HEADLINE_METRICS)}")
    planned = [dict(zip(GROUP_KEYS, g, strict=True)) for g in dict.fromkeys(groups)]
    for side in ("a", "b"):
        selection = spec.get(side)
        if not isinstance(selection, Mapping) or not selection or set(selection) - set(GROUP_KEYS):
            raise ValueError(f"{where}.{side} must name some of {list(GROUP_KEYS)}, got {selection!r}")
        found = [g for g in planned if _matches(g, selection)]
        if len(found) != 1:
            raise ValueError(f"{where}.{side} {dict(selection)} picks {len(found)} of the planned groups "
                             f"{[tuple(g.values()) for g in planned]}, not one: name more (or other) keys")
    if dict(spec["a"]) == dict(spec["b"]):
        raise ValueError(f"{where} compares {dict(spec['a'])} with itself: give a and b different selections")


def select_group(runs: Sequence[Mapping[str, Any]], selection: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The runs of the one (backbone, method, negatives, shots) group that ``selection`` matches.

    Raises:
        ValueError: ``selection`` names a key outside `GROUP_KEYS`, or matches no group or several (the message lists
            the groups, so the selection can name one more key).
    """
    if not selection or set(selection) - set(GROUP_KEYS):
        raise ValueError(f"a headline selection names some of {list(GROUP_KEYS)}, got {dict(selection)!r}")
    matched = [r for r in runs if _matches(r, selection)]
    groups = {tuple(r[k] for k in GROUP_KEYS) for r in matched}
    if len(groups) != 1:
        found = sorted({tuple(str(r[k]) for k in GROUP_KEYS) for r in runs})
        raise ValueError(f"headline selection {dict(selection)} matches {len(groups)} groups of runs, not one; the "
                         f"study's groups (backbone, method, negatives, shots) are {found}: name more keys")
    return matched


def _by_seed(group: Sequence[Mapping[str, Any]], metric: str) -> dict[int, float]:
    return {int(r["seed"]): float(r[metric]) for r in group if r.get(metric) is not None}


def _spread(a: dict[int, float], b: dict[int, float]) -> tuple[float | None, str]:
    """``(spread, kind)``: paired std of per-seed differences, unpaired √(std_A² + std_B²), or ``(None, "1 seed")``."""
    common = sorted(set(a) & set(b))
    if len(common) >= 2 and len(common) == len(a) == len(b):
        return statistics.stdev(a[s] - b[s] for s in common), "paired"
    if len(a) >= 2 and len(b) >= 2:
        return math.hypot(statistics.stdev(a.values()), statistics.stdev(b.values())), "unpaired"
    return None, "1 seed"


def headline_rows(runs: Sequence[Mapping[str, Any]], specs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per headline comparison (see the module docstring).

    Args:
        runs: per-run rows with `GROUP_KEYS`, ``seed``, ``trainable_params`` and each spec's metric (a fraction, or
            ``None`` when not measured).
        specs: ``{"advance", "metric", "a", "b"}`` mappings (`vitlab.study.config.HeadlineSpec` as a dict).

    Returns:
        ``{"advance", "metric", "a", "b"}`` as given plus ``a_mean``, ``b_mean``, ``a_seeds``, ``b_seeds``,
        ``a_params``, ``b_params``, ``difference`` (A − B; ``None`` when a group has no value), ``spread``
        (``None`` without one), ``spread_kind`` (``"paired"``, ``"unpaired"`` or ``"1 seed"``) and ``verdict``.

    Raises:
        ValueError: a selection matching no group or several, or a metric the runs do not have.
    """
    rows = []
    for spec in specs:
        metric = spec["metric"]
        if runs and metric not in runs[0]:
            raise ValueError(f"headline metric {metric!r} is not a results column; columns: {sorted(runs[0])}")
        values = {}
        row: dict[str, Any] = {key: spec[key] for key in ("advance", "metric", "a", "b")}
        for side in ("a", "b"):
            group = select_group(runs, spec[side])
            values[side] = _by_seed(group, metric)
            row[f"{side}_mean"] = statistics.mean(values[side].values()) if values[side] else None
            row[f"{side}_seeds"] = len(values[side])
            row[f"{side}_params"] = group[0].get("trainable_params")
        measured = row["a_mean"] is not None and row["b_mean"] is not None
        row["difference"] = row["a_mean"] - row["b_mean"] if measured else None
        row["spread"], row["spread_kind"] = _spread(values["a"], values["b"])
        larger = measured and row["spread"] is not None and abs(row["difference"]) > row["spread"]
        row["verdict"] = LARGER if larger else NOISE
        rows.append(row)
    return rows


def d90_row(name: str, sweep: Mapping[str, Any]) -> dict[str, Any]:
    """Whether the intrinsic-dimension sweep ``name`` reached its threshold on its grid.

    Args:
        name: the sweep's label (its backbone).
        sweep: an ``intrinsic_dim.json`` as read by `vitlab.study.results.load_study` (``points`` {d: accuracy},
            ``reference``, ``threshold``, ``d90`` (smallest measured d reaching the threshold, or absent)).

    Returns:
        ``{"name", "d90", "accuracy" (at d90, or the best measured), "threshold", "reference", "reached", "points"}``.

    Example:
        >>> d90_row("vit", {"points": {10: 0.2, 100: 0.4, 1000: 0.55}, "reference": 0.59, "threshold": 0.531,
        ...                 "d90": 1000})["reached"]
        True
    """
    points = {int(d): float(a) for d, a in sweep["points"].items()}
    d90 = sweep.get("d90")
    reached = d90 is not None and int(d90) in points
    accuracy = points[int(d90)] if reached else max(points.values(), default=None)
    return {"name": name, "d90": int(d90) if reached else None, "accuracy": accuracy,
            "threshold": float(sweep["threshold"]), "reference": float(sweep["reference"]), "reached": reached,
            "points": len(points)}
