"""The plots of a ``vitlab study`` report, one PNG and an SVG beside it per function (each a matplotlib ``Figure`` on
its own Agg canvas: the global backend and pyplot state are left alone).

The functions take data that `vitlab.study.report` already read from the study folder and return the PNG path
(the SVG has the same name with ``.svg``); ``title`` (e.g. the study's name) goes above every panel:

- ``plot_accuracy_vs_params``: clean accuracy (%) vs trainable parameters (log x) of the aggregated table rows, one
  panel per shots setting, one colour per method, one marker per negatives setting, mean ± std error bars;
- ``plot_robustness_by_severity``: accuracy (%) vs corruption severity (0 = clean), one line per table row, mean ±
  std error bars over seeds;
- ``plot_training_curves``: cross-entropy vs step of every fine-tuning run, one panel per shots setting, and the
  negative loss in a row of its own (never their sum);
- ``plot_intrinsic_dim``: accuracy vs subspace dimension d (log x) per backbone, the threshold and d90 marked;
- ``plot_per_module``: interpolated d90 per module kind (one panel per backbone), unreached kinds hatched;
- ``plot_summary_accuracy_vs_params``: the ``vitlab peft-study`` plot, accuracy (mean ± std) of its summary rows vs
  trainable parameters, one panel per shots setting (PNG only).

Example:
    >>> row = dict(backbone="vit", method="lora", negatives="none", shots=5, trainable_params=12000,
    ...            clean_acc=0.71, clean_acc_std=0.01)
    >>> import tempfile
    >>> out = plot_accuracy_vs_params([row], Path(tempfile.mkdtemp()) / "accuracy_vs_params.png")
    >>> out.name, out.stat().st_size > 0, out.with_suffix(".svg").is_file()
    ('accuracy_vs_params.png', True, True)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vitlab.eval.corruptions import SEVERITIES

__all__ = ["plot_accuracy_vs_params", "plot_intrinsic_dim", "plot_per_module", "plot_robustness_by_severity",
           "plot_summary_accuracy_vs_params", "plot_training_curves", "shots_key", "shots_title"]

_MARKERS = ("o", "^", "s", "D", "v", "P", "X")
_STYLES = ("-", "--", ":", "-.")


def shots_key(shots: int | str) -> tuple[int, float, str]:
    """Sort key of a shots setting: integer k ascending, then strings such as ``"full"``."""
    return (1, 0.0, str(shots)) if isinstance(shots, str) else (0, float(shots), "")


def shots_title(shots: int | str) -> str:
    """Panel title of a shots setting."""
    return "full training set" if shots == "full" else f"{shots} shots per class"


def _unique(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def _figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` on its own Agg canvas (the global backend and pyplot state are left alone)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _panels(n: int, width: float = 5.5, height: float = 4.2) -> tuple[Any, list[Any]]:
    fig = _figure(width * n, height)
    axes = fig.subplots(1, n, squeeze=False)
    return fig, list(axes[0])


def _save(fig: Any, out_png: str | Path, title: str | None = None) -> Path:
    """Write ``out_png`` and the same figure as SVG beside it (``.svg``); ``title`` above all panels."""
    out = Path(out_png)
    if out.suffix.lower() != ".png":
        raise ValueError(f"out_png must end in .png (the SVG is written beside it), got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    fig.savefig(out.with_suffix(".svg"))
    return out


def _styles(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Colour per method, line style per negatives setting ("none" first, solid), marker per negatives setting."""
    colours = {m: f"C{i % 10}" for i, m in enumerate(_unique(r["method"] for r in rows))}
    negatives = sorted(_unique(r["negatives"] for r in rows), key=lambda n: (n != "none", n))
    styles = {n: _STYLES[i % len(_STYLES)] for i, n in enumerate(negatives)}
    markers = {n: _MARKERS[i % len(_MARKERS)] for i, n in enumerate(negatives)}
    return colours, styles, markers


def _label(row: Mapping[str, Any], with_backbone: bool) -> str:
    text = row["method"] + ("" if row["negatives"] == "none" else f" + {row['negatives']}")
    return f"{row['backbone']}: {text}" if with_backbone else text


def _require(rows: Sequence[Any], what: str) -> None:
    if not rows:
        raise ValueError(f"nothing to plot: {what}; run the study stages that produce it, or skip this plot")


def plot_accuracy_vs_params(rows: Sequence[Mapping[str, Any]], out_png: str | Path, title: str | None = None) -> Path:
    """Clean accuracy (%) vs trainable parameters (log x), one panel per shots setting, points labelled.

    Args:
        rows: aggregated table rows with ``backbone, method, negatives, shots, trainable_params, clean_acc`` and
            ``clean_acc_std`` (fractions; ``None`` std: a single seed). Rows lacking a value are skipped.
        out_png: the PNG to write (an SVG is written beside it).
        title: text above the panels (e.g. the study's name), or None.
    """
    from matplotlib.lines import Line2D

    rows = [r for r in rows if r.get("clean_acc") is not None and (r.get("trainable_params") or 0) > 0]
    _require(rows, "no row has both a clean accuracy and a positive trainable-parameter count")
    colours, _, markers = _styles(rows)
    many = len({r["backbone"] for r in rows}) > 1
    shots = sorted({r["shots"] for r in rows}, key=shots_key)
    fig, axes = _panels(len(shots))
    for ax, shot in zip(axes, shots, strict=True):
        for r in (r for r in rows if r["shots"] == shot):
            y, std = 100 * r["clean_acc"], r.get("clean_acc_std")
            ax.errorbar(r["trainable_params"], y, yerr=None if std is None else 100 * std, capsize=3, markersize=7,
                        marker=markers[r["negatives"]], color=colours[r["method"]], linestyle="none")
            ax.annotate(_label(r, many), (r["trainable_params"], y), textcoords="offset points", xytext=(5, 4),
                        fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel("clean test accuracy (%)")
        ax.set_title(shots_title(shot))
        ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], color=c, marker="o", linestyle="none", label=m) for m, c in colours.items()]
    handles += [Line2D([], [], color="gray", marker=mk, linestyle="none", label=f"negatives: {n}")
                for n, mk in markers.items()]
    axes[-1].legend(handles=handles, fontsize="small")
    return _save(fig, out_png, title)


def plot_robustness_by_severity(rows: Sequence[Mapping[str, Any]], out_png: str | Path,
                                title: str | None = None) -> Path:
    """Accuracy (%) vs severity 0..5 (0: ``clean_acc``, N: ``corruption_acc_sN``), one line per row.

    Args:
        rows: aggregated table rows (means over seeds) with ``backbone, method, negatives, shots``, ``clean_acc``
            and ``corruption_acc_s1`` .. ``corruption_acc_s5`` (fractions or ``None``) and optionally their
            ``<column>_std`` (the error bars; ``None``: a single seed, no bar).
        out_png: the PNG to write (an SVG is written beside it).
        title: text above the panels (e.g. the study's name), or None.
    """
    def points(r: Mapping[str, Any]) -> list[tuple[int, float, float]]:
        columns = [(0, "clean_acc")] + [(s, f"corruption_acc_s{s}") for s in SEVERITIES]
        return [(s, 100 * r[c], 100 * (r.get(f"{c}_std") or 0.0)) for s, c in columns if r.get(c) is not None]

    rows = [r for r in rows if any(r.get(f"corruption_acc_s{s}") is not None for s in SEVERITIES)]
    _require(rows, "no row has a per-severity corruption accuracy")
    colours, styles, _ = _styles(rows)
    backbones = {b: _MARKERS[i % len(_MARKERS)] for i, b in enumerate(_unique(r["backbone"] for r in rows))}
    shots = sorted({r["shots"] for r in rows}, key=shots_key)
    fig, axes = _panels(len(shots))
    for ax, shot in zip(axes, shots, strict=True):
        for r in (r for r in rows if r["shots"] == shot):
            xs, ys, errors = zip(*points(r), strict=True)
            ax.errorbar(xs, ys, yerr=errors, capsize=3, color=colours[r["method"]], linestyle=styles[r["negatives"]],
                        marker=backbones[r["backbone"]], label=_label(r, len(backbones) > 1))
        ax.set_xticks(range(6), ["clean", "1", "2", "3", "4", "5"])
        ax.set_xlabel("corruption severity (mean over the 15 common corruptions)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(shots_title(shot))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, out_png, title)


def plot_training_curves(curves: Sequence[Mapping[str, Any]], out_png: str | Path, title: str | None = None) -> Path:
    """Training curves per fine-tuning run, one column per shots setting, legend by (backbone,) method + negatives.

    The top row plots the cross-entropy (``points``); a second row, drawn when any run has one, the negative loss
    (``negative_points``, before its weight λ; the ℓ2 term is negative by design). Their sum is never plotted.

    Args:
        curves: one mapping per run with ``backbone, method, negatives, shots``, ``points`` (``[(step, loss)]``),
            ``x_label``, optionally ``y_label`` (default "training loss"), ``negative_points`` and
            ``negative_x_label``; seeds of one setting share the colour and the legend entry.
        out_png: the PNG to write (an SVG is written beside it).
        title: text above the panels (e.g. the study's name), or None.
    """
    curves = [c for c in curves if c["points"]]
    _require(curves, "no run has a training loss in its metrics.csv")
    colours, styles, _ = _styles(curves)
    many = len({c["backbone"] for c in curves}) > 1
    shots = sorted({c["shots"] for c in curves}, key=shots_key)
    panels = [("points", "x_label", None)]
    if any(c.get("negative_points") for c in curves):
        panels.append(("negative_points", "negative_x_label", "negative loss (unweighted)"))
    fig = _figure(5.5 * len(shots), 4.2 * len(panels))
    axes = fig.subplots(len(panels), len(shots), squeeze=False)
    for row, (points, x_label, y_label) in enumerate(panels):
        for ax, shot in zip(axes[row], shots, strict=True):
            labelled = set()
            members = [c for c in curves if c["shots"] == shot and c.get(points)]
            for c in members:
                label = _label(c, many)
                xs, ys = zip(*sorted(c[points]), strict=True)
                ax.plot(xs, ys, color=colours[c["method"]], linestyle=styles[c["negatives"]], linewidth=1.2,
                        label=None if label in labelled else label)
                labelled.add(label)
            ax.set_xlabel(_unique(c[x_label] for c in members)[0] if members else "step")
            ax.set_ylabel(y_label or " / ".join(_unique(c.get("y_label", "training loss") for c in members)))
            ax.set_title(shots_title(shot) if y_label is None else f"{shots_title(shot)}: {y_label}")
            ax.grid(True, alpha=0.3)
            if labelled:
                ax.legend(fontsize="small")
    return _save(fig, out_png, title)


def plot_intrinsic_dim(sweeps: Mapping[str, Mapping[str, Any]], out_png: str | Path, title: str | None = None) -> Path:
    """Accuracy (%) vs subspace dimension d (log x) per backbone, its threshold line and its d90 marked.

    Args:
        sweeps: backbone -> ``intrinsic_dim.json`` content with ``points`` as ``{int d: accuracy}``, ``reference``,
            ``threshold`` and ``d90_interpolated`` (fractions; ``None``: the threshold was not reached).
        out_png: the PNG to write (an SVG is written beside it).
        title: text above the panels (e.g. the study's name), or None.
    """
    sweeps = {name: s for name, s in sweeps.items() if s["points"]}
    _require(list(sweeps), "no intrinsic-dimension sweep has a point")
    fig, axes = _panels(1, width=7.0)
    ax = axes[0]
    for i, (name, sweep) in enumerate(sweeps.items()):
        colour = f"C{i % 10}"
        dims = sorted(sweep["points"])
        ax.plot(dims, [100 * sweep["points"][d] for d in dims], marker="o", color=colour, label=name)
        threshold, reference = 100 * sweep["threshold"], 100 * sweep["reference"]
        ax.axhline(threshold, color=colour, linestyle="--", linewidth=1,
                   label=f"{name}: {threshold / reference:.0%} of reference ({threshold:.2f} %)")
        d90 = sweep.get("d90_interpolated")
        if d90 is not None:
            ax.axvline(d90, color=colour, linestyle="--", linewidth=1)
            ax.annotate(f"d90 ≈ {d90:,.0f}", (d90, threshold), textcoords="offset points", xytext=(5, -14),
                        fontsize=8, color=colour)
    ax.set_xscale("log")
    ax.set_xlabel("subspace dimension d")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Intrinsic dimension: accuracy vs d")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, out_png, title)


def plot_per_module(tables: Mapping[str, Sequence[Mapping[str, Any]]], out_png: str | Path,
                    title: str | None = None) -> Path:
    """Horizontal bars of the interpolated d90 per module kind, one panel per backbone, rank 1 at the top.

    Kinds that never reached the threshold get a hatched bar as long as the largest reached d90, labelled
    "not reached".

    Args:
        tables: backbone -> rows with ``rank, module, reached, d90_interpolated``.
        out_png: the PNG to write (an SVG is written beside it).
        title: text above the panels (e.g. the study's name), or None.
    """
    tables = {name: sorted(rows, key=lambda r: r["rank"]) for name, rows in tables.items() if rows}
    _require(list(tables), "no per-module table has a row")
    height = sum(0.4 * len(rows) + 1.2 for rows in tables.values())
    fig = _figure(7.5, height)
    axes = fig.subplots(len(tables), 1, squeeze=False)
    for ax, (name, rows) in zip(axes[:, 0], tables.items(), strict=True):
        reached = [r["d90_interpolated"] for r in rows if r["reached"] and r["d90_interpolated"] is not None]
        top = max(reached, default=1.0)
        for y, r in enumerate(rows):
            ok = r["reached"] and r["d90_interpolated"] is not None
            width = r["d90_interpolated"] if ok else top
            ax.barh(y, width, color="C0" if ok else "white", edgecolor="C0" if ok else "gray",
                    hatch=None if ok else "//")
            ax.text(width, y, f" {width:,.0f}" if ok else " not reached", va="center", fontsize=8)
        ax.set_yticks(range(len(rows)), [r["module"] for r in rows])
        ax.invert_yaxis()
        ax.set_xlim(0, top * 1.35)
        ax.set_xlabel("d90 (interpolated)")
        ax.set_title(f"{name}: d90 per module kind (rank 1 at the top)")
        ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, out_png, title)


def plot_summary_accuracy_vs_params(summary: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Accuracy (mean ± std) against trainable parameters (log x), one panel per shots setting; returns ``path``.

    Args:
        summary: `vitlab.study.results.summarize_study` rows (``method, shots, trainable_params, accuracy_mean,
            accuracy_std``).
        path: the PNG to write.
        title: prefix of each panel's title (e.g. the model and dataset).

    Example:
        >>> import tempfile
        >>> rows = [{"method": "lora", "shots": 5, "trainable_params": 5000, "accuracy_mean": 0.6,
        ...          "accuracy_std": 0.02}]
        >>> path = plot_summary_accuracy_vs_params(rows, Path(tempfile.mkdtemp()) / "plot.png", title="digits")
        >>> path.name, path.stat().st_size > 0
        ('plot.png', True)
    """
    settings = _unique(row["shots"] for row in summary)
    _require(settings, "the summary has no row")
    fig = _figure(4.5 * len(settings), 3.8)
    axes = fig.subplots(1, len(settings), squeeze=False)
    for ax, shots in zip(axes[0], settings, strict=True):
        for row in (r for r in summary if r["shots"] == shots):
            spread = row["accuracy_std"]  # None for one seed: a point without a bar, not a bar of zero
            ax.errorbar(row["trainable_params"], 100 * row["accuracy_mean"],
                        yerr=None if spread in (None, "") else 100 * float(spread), fmt="o", capsize=3,
                        label=row["method"])
            ax.annotate(row["method"], (row["trainable_params"], 100 * row["accuracy_mean"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{title} {'full data' if shots == 'full' else f'{shots}-shot'}".strip())
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
