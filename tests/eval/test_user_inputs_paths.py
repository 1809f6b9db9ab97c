"""Paths with a ``~`` that the shell leaves alone (``--out=~/reports``, a quoted path, a path from Python or YAML):
the evaluation commands read and write them in the home folder, as ``--checkpoint`` and ``--root`` do. Before, the
reports went into a literal ``./~/reports`` folder and ``~/CIFAR-10-C`` was said not to exist."""

import numpy as np
import pytest
from torch import nn

from vitlab.errors import MissingFileError
from vitlab.eval.evaluate import robustness_report
from vitlab.eval.imagenet_c import evaluate_imagenet_c
from vitlab.eval.robustness import evaluate_corruptions


def _cifar_c_folder(folder):
    """A CIFAR-C-layout folder: one 32x32x1 image per severity of fog, labels 0..4."""
    folder.mkdir(parents=True)
    np.save(folder / "labels.npy", np.arange(5))
    np.save(folder / "fog.npy", np.zeros((5, 32, 32, 1), dtype=np.uint8))
    return folder


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home


def test_evaluate_corruptions_reads_a_tilde_folder(home):
    _cifar_c_folder(home / "set")
    result = evaluate_corruptions(nn.Sequential(nn.Flatten(), nn.Linear(1024, 10)), "~/set", progress=False)
    assert result["folder"] == str(home / "set")
    assert result["n"] == 1


def test_robustness_report_writes_into_the_home_folder(home, tmp_path, checkpoint):
    _cifar_c_folder(home / "set")
    robustness_report(checkpoint, corruption_dir="~/set", out="~/reports")
    assert (home / "reports" / "robustness_digits_published.json").is_file()
    assert not (tmp_path / "~").exists()  # no literal '~' folder in the working directory


def test_imagenet_c_names_the_expanded_folder(home):
    with pytest.raises(MissingFileError, match=f"{home}/imagenet-c does not exist"):
        evaluate_imagenet_c(nn.Linear(2, 2), "~/imagenet-c", transform=lambda image: image)


def test_generate_corruption_set_writes_into_the_home_folder(home, tmp_path):
    from vitlab.eval.corruptions import generate_corruption_set

    images = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    folder = generate_corruption_set(images, np.array([0]), "~/gen", corruptions=["glass_blur"], workers=1)
    assert folder == home / "gen"
    assert (home / "gen" / "glass_blur.npy").is_file()
    assert not (tmp_path / "~").exists()
