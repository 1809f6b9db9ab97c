"""Training curves: cross-entropy and each loss term in their own panels (the Figure is inspected, not pixels)."""

from __future__ import annotations

from pathlib import Path

from vitlab.train.plots import plot_training_curves, training_curves_figure

# a run with the l2 negative term: its loss goes below 0, so the total train/loss falls under the cross-entropy
_CSV = ("epoch,step,train/loss_step,train/negatives/loss_step,train/loss_epoch,train/loss_ce,"
        "train/negatives/loss_epoch,train/negatives/neg_acc,train/acc,val/loss,val/acc\n"
        "0,4,0.5,-0.9,,,,,,,\n"
        "0,9,,,0.4,1.6,-1.2,0.3,0.35,1.4,0.5\n"
        "1,14,0.1,-1.1,,,,,,,\n"
        "1,19,,,-0.2,1.1,-1.3,0.2,0.6,1.0,0.7\n")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "metrics.csv"
    path.write_text(text)
    return path


def _lines(axis) -> dict[str, list[tuple[float, float]]]:
    return {line.get_label(): list(zip(*line.get_data(), strict=True)) for line in axis.get_lines()}


def test_cross_entropy_and_negative_loss_get_separate_panels(tmp_path):
    fig = training_curves_figure(_write(tmp_path, _CSV))
    assert [ax.get_title() for ax in fig.axes] == ["cross-entropy", "negatives loss (unweighted)", "accuracy"]
    ce, negatives, accuracy = (_lines(ax) for ax in fig.axes)
    assert ce == {"train/loss_ce": [(1, 1.6), (2, 1.1)], "val/loss": [(1, 1.4), (2, 1.0)]}
    assert negatives == {"train/negatives/loss_epoch": [(1, -1.2), (2, -1.3)]}
    assert accuracy == {"train/acc": [(1, 0.35), (2, 0.6)], "val/acc": [(1, 0.5), (2, 0.7)]}
    # the total and the step-wise values are not plotted anywhere
    assert not any(key.endswith("_step") or key == "train/loss_epoch" for ax in fig.axes for key in _lines(ax))
    assert fig.axes[0].get_legend() is not None and fig.axes[1].get_ylabel() == "loss"


def test_runs_without_terms_or_loss_ce_plot_the_total_as_cross_entropy(tmp_path):
    fig = training_curves_figure(_write(tmp_path, "epoch,step,train/loss_epoch,train/acc,val/loss,val/acc\n"
                                                  "0,9,1.7,0.3,1.5,0.4\n"))
    assert [ax.get_title() for ax in fig.axes] == ["cross-entropy", "accuracy"]
    assert _lines(fig.axes[0]) == {"train/loss_epoch": [(1, 1.7)], "val/loss": [(1, 1.5)]}


def test_no_epoch_metrics_gives_one_panel_that_says_so(tmp_path):
    fig = training_curves_figure(_write(tmp_path, "step,train/loss_step\n4,0.5\n"))
    assert [ax.get_title() for ax in fig.axes] == ["no per-epoch metrics"] and not fig.axes[0].get_lines()
    out = plot_training_curves(tmp_path / "metrics.csv", tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "<svg" in out.with_suffix(".svg").read_text()[:2000]
