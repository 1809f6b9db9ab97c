"""Training-curve plot from a Lightning ``metrics.csv`` (drawn on a ``Figure`` + Agg canvas: the global matplotlib
backend is left alone).

One panel per quantity, never their sum: the cross-entropy (``train/loss_ce``, ``val/loss``), then one panel per loss
term the run logged (``train/<term>/<key>_epoch``, e.g. the negative loss ``train/negatives/loss_epoch``, which may
be negative, as the ℓ2 term is), then the accuracy. The total ``train/loss`` is plotted only for runs that did not
log ``train/loss_ce`` (older runs, where it is the cross-entropy plus every term).

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "metrics.csv").write_text("epoch,step,val/loss,val/acc\\n0,9,1.5,0.4\\n1,19,1.1,0.6\\n")
    >>> plot_training_curves(folder / "metrics.csv", folder / "curves.png").stat().st_size > 0
    True
    >>> [ax.get_title() for ax in training_curves_figure(folder / "metrics.csv").axes]
    ['cross-entropy', 'accuracy']
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from vitlab.metrics import read_metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_training_curves", "read_metrics", "training_curves_figure"]

_TERM_LOSS = re.compile(r"^train/([^/]+)/(.+)_epoch$")


def _panels(columns: set[str]) -> list[tuple[str, str, list[str]]]:
    """``(title, y label, metric keys)`` of each panel, for the keys present in ``columns``."""
    ce = ["train/loss_ce" if "train/loss_ce" in columns else "train/loss_epoch", "val/loss"]
    terms: dict[str, list[str]] = {}
    for key in sorted(columns):
        match = _TERM_LOSS.match(key)
        if match:
            terms.setdefault(match.group(1), []).append(key)
    panels = [("cross-entropy", "loss", ce)]
    panels += [(f"{name} loss (unweighted)", "loss", keys) for name, keys in terms.items()]
    panels.append(("accuracy", "top-1 accuracy", ["train/acc", "val/acc"]))
    return [(title, label, [k for k in keys if k in columns]) for title, label, keys in panels
            if any(k in columns for k in keys)]


def training_curves_figure(metrics_csv: str | Path) -> Figure:
    """The training-curve ``Figure``: per-epoch values against the epoch, one panel (``Axes``) per quantity.

    Panels (titles): ``"cross-entropy"`` (``train/loss_ce`` and ``val/loss``), ``"<term> loss (unweighted)"`` for each
    loss term (e.g. ``"negatives loss (unweighted)"``: ``train/negatives/loss_epoch``, before its weight λ), and
    ``"accuracy"`` (``train/acc``, ``val/acc``). A panel with no data is left out; each line is labelled by its key.
    A file without any per-epoch value (a run stopped within its first epoch) gives one empty panel saying so.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_metrics(metrics_csv)
    columns = {k for r in rows if "epoch" in r for k in r}
    panels = _panels(columns)
    fig = Figure(figsize=(4.2 * max(len(panels), 1) + 1, 4))
    FigureCanvasAgg(fig)
    if not panels:
        axis = fig.subplots()
        axis.set_title("no per-epoch metrics")
        axis.text(0.5, 0.5, f"{Path(metrics_csv).name} holds no per-epoch loss or accuracy\n"
                  "(the run stopped within its first epoch)", ha="center", va="center", transform=axis.transAxes)
        return fig
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for axis, (title, label, keys) in zip(axes, panels, strict=True):
        for key in keys:
            points = [(r["epoch"] + 1, r[key]) for r in rows if key in r and "epoch" in r]
            axis.plot(*zip(*points, strict=True), marker="o", label=key)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    return fig


def plot_training_curves(metrics_csv: str | Path, out_png: str | Path) -> Path:
    """Write `training_curves_figure` of ``metrics_csv`` to ``out_png`` and, for a ``.png``, the same as ``.svg``
    beside it; returns the written path.

    ``~`` is expanded in both paths; a missing parent folder of ``out_png`` is created; a name without a suffix gets
    ``.png`` (matplotlib's default format, and the returned path says so); an existing folder is refused.
    """
    out = Path(out_png).expanduser()
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a folder: give the image's file path, e.g. {out / 'training_curves.png'}")
    if not out.suffix:
        out = out.with_suffix(".png")
    fig = training_curves_figure(Path(metrics_csv).expanduser())
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    if out.suffix.lower() == ".png":
        fig.savefig(out.with_suffix(".svg"))
    return out
