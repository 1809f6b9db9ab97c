"""Library plots draw on their own Figure + Agg canvas: matplotlib's global backend and pyplot are left alone."""

import matplotlib
import matplotlib.pyplot as plt
from PIL import Image

from vitlab.study import plots as study_plots
from vitlab.train.plots import plot_training_curves


def _forbidden(*args, **kwargs):
    raise AssertionError("library code used matplotlib's global state")


def test_plots_never_touch_the_backend_or_pyplot(monkeypatch, tmp_path):
    for target, name in ((matplotlib, "use"), (plt, "figure"), (plt, "subplots"), (plt, "switch_backend")):
        monkeypatch.setattr(target, name, _forbidden)
    open_figures = plt.get_fignums()
    (tmp_path / "metrics.csv").write_text("epoch,step,val/loss,val/acc,train/loss_epoch,train/acc\n"
                                          "0,9,1.5,0.4,,\n0,9,,,1.7,0.3\n1,19,1.1,0.6,,\n")
    row = dict(backbone="vit", method="lora", negatives="none", shots=5, trainable_params=12000, clean_acc=0.71,
               clean_acc_std=0.01, accuracy_mean=0.7, accuracy_std=0.02)
    paths = [plot_training_curves(tmp_path / "metrics.csv", tmp_path / "curves.png"),
             study_plots.plot_accuracy_vs_params([row], tmp_path / "study.png"),
             study_plots.plot_summary_accuracy_vs_params([row], tmp_path / "peft.png")]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 200
    assert plt.get_fignums() == open_figures  # no pyplot figure left open

