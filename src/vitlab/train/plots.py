"""Training-curve plot from a Lightning ``metrics.csv``."""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["plot_training_curves", "read_metrics"]


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a Lightning CSVLogger ``metrics.csv`` with empty cells dropped and values as floats."""
    with open(path, newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def plot_training_curves(metrics_csv: str | Path, out_png: str | Path) -> Path:
    """Plot per-epoch train/val loss (left) and accuracy (right) against the epoch; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_csv)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, axis in (("train/loss_epoch", ax_loss), ("val/loss", ax_loss), ("train/acc", ax_acc), ("val/acc", ax_acc)):
        points = [(r["epoch"] + 1, r[key]) for r in rows if key in r and "epoch" in r]
        if points:
            axis.plot(*zip(*points, strict=True), marker="o", label=key)
    for axis, label in ((ax_loss, "loss"), (ax_acc, "top-1 accuracy")):
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)
