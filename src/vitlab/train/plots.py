"""Training-curve plot from a Lightning ``metrics.csv`` (drawn on a ``Figure`` + Agg canvas: the global matplotlib
backend is left alone).

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "metrics.csv").write_text("epoch,step,val/loss,val/acc\\n0,9,1.5,0.4\\n1,19,1.1,0.6\\n")
    >>> plot_training_curves(folder / "metrics.csv", folder / "curves.png").stat().st_size > 0
    True
"""

from __future__ import annotations

from pathlib import Path

from vitlab.metrics import read_metrics

__all__ = ["plot_training_curves", "read_metrics"]


def plot_training_curves(metrics_csv: str | Path, out_png: str | Path) -> Path:
    """Plot per-epoch train/val loss (left) and accuracy (right) against the epoch; returns the PNG path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_metrics(metrics_csv)
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for key, axis in (("train/loss_epoch", ax_loss), ("val/loss", ax_loss), ("train/acc", ax_acc), ("val/acc", ax_acc)):
        points = [(r["epoch"] + 1, r[key]) for r in rows if key in r and "epoch" in r]
        if points:
            axis.plot(*zip(*points, strict=True), marker="o", label=key)
    for axis, label in ((ax_loss, "loss"), (ax_acc, "top-1 accuracy")):
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    return Path(out_png)
