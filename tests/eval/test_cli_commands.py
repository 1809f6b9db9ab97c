"""`vitlab robustness` and `vitlab diagnose-negatives` end to end on scikit-learn's digits with a tiny checkpoint."""

import json
import shutil

import imagecorruptions  # noqa: F401  (dev extra: `vitlab robustness` generates corruptions with it)
import numpy as np
import pytest
import torch

from vitlab.checkpoint import load_model
from vitlab.cli.main import main
from vitlab.data.transforms import Normalize
from vitlab.eval import diagnose_negatives, evaluate_corruptions


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path / "cache"))


def _test_images(datamodule, n):
    images, labels = zip(*[datamodule.test_dataset[i] for i in range(n)], strict=True)
    return torch.stack(images), torch.stack([torch.as_tensor(y) for y in labels])


def test_robustness_generates_caches_evaluates_and_reports(checkpoint, digits, tmp_path, capsys):
    args = ["robustness", "--checkpoint", str(checkpoint), "--n", "6", "--corruptions", "[contrast, glass_blur]",
            "--workers", "1", "--cache_dir", str(tmp_path / "set"), "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "using 6 of 360 digits test images per corruption and severity" in out
    report = json.loads((tmp_path / "out" / "robustness_digits.json").read_text())
    markdown = (tmp_path / "out" / "robustness_digits.md").read_text()
    assert report["n"] == 6 and report["source"] == "generated" and report["data"] == "digits"
    assert report["command"].startswith("vitlab robustness --checkpoint") and "--n 6" in report["command"]
    assert "Test images per corruption and severity: 6 of 6." in markdown and "not the published" in markdown
    assert "Source images: the first 6 of the 360 digits test images" in markdown
    assert np.load(tmp_path / "set" / "contrast.npy").shape == (30, 32, 32, 1)
    # the same numbers as evaluating the cached set directly, and the clean accuracy of the normal test pipeline
    model, meta = load_model(checkpoint)
    config = meta["extra"]["data"]
    direct = evaluate_corruptions(model, tmp_path / "set", Normalize(config["mean"], config["std"], 1), progress=False)
    assert report["accuracy"] == {c: {str(s): a for s, a in v.items()} for c, v in direct["accuracy"].items()}
    images, labels = _test_images(digits, 6)
    with torch.no_grad():
        clean = (model(images).argmax(1) == labels).float().mean().item()
    assert report["clean_accuracy"] == pytest.approx(clean)
    assert report["metrics"]["mean_accuracy"] == pytest.approx(direct["metrics"]["mean_accuracy"])


def test_robustness_default_cache_n_all_and_published_folder(checkpoint, tmp_path, capsys):
    assert main(["robustness", "--checkpoint", str(checkpoint), "--n", "all", "--corruptions", "[contrast]",
                 "--workers", "1", "--out", str(tmp_path)]) == 0
    folder = tmp_path / "cache" / "corruptions" / "digits_32x32x1_n360_seed0"
    assert np.load(folder / "contrast.npy").shape == (1800, 32, 32, 1)
    assert json.loads((tmp_path / "robustness_digits.json").read_text())["n"] == 360
    assert "using 360 of 360 digits test images" in capsys.readouterr().out
    published = tmp_path / "published"
    published.mkdir()
    for name in ("contrast.npy", "labels.npy"):
        shutil.copy(folder / name, published / name)
    assert main(["robustness", "--checkpoint", str(checkpoint), "--corruption_dir", str(published), "--n", "100",
                 "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "robustness_digits_published.json").read_text())
    assert report["source"] == "published" and report["n"] == 100 and report["n_available"] == 360
    assert report["clean_accuracy"] is None and list(report["accuracy"]) == ["contrast"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--n", "0"], "--n must be a positive int or 'all'"),
        (["--n", "361"], "test set has 360 images: use --n all or less"),
        (["--alexnet_normalise", "true"], "apply to ImageNet-C only"),
        (["--alexnet-normalise"], "apply to ImageNet-C only"),  # a bare flag, as the issue writes it, means true
        (["--data", "fashion_mnist", "--root", "/nonexistent"], "fashion_mnist files not found in /nonexistent"),
    ],
)
def test_robustness_errors_print_one_line(checkpoint, capsys, extra, message):
    assert main(["robustness", "--checkpoint", str(checkpoint), *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vitlab robustness: error:") and message in err and "Traceback" not in err


def test_robustness_refuses_a_folder_of_other_images(checkpoint, tmp_path, capsys):
    np.save(tmp_path / "labels.npy", np.zeros(10, dtype=np.int64))
    np.save(tmp_path / "fog.npy", np.zeros((10, 28, 28, 3), dtype=np.uint8))
    assert main(["robustness", "--checkpoint", str(checkpoint), "--corruption_dir", str(tmp_path)]) == 1
    assert "holds 28x28x3 images but the checkpoint takes 32x32x1" in capsys.readouterr().err


def test_diagnose_negatives_matches_the_library_call(checkpoint, digits, tmp_path, capsys):
    assert main(["diagnose-negatives", "--checkpoint", str(checkpoint), "--n", "40", "--out", str(tmp_path),
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "40 of 360 digits test images" in out and "8-px cells; model patch size 8 px, aligned" in out
    assert "(chance 10.0 %)" in out and "| chance | 10.0 | 10.0 | - |" in out
    result = json.loads((tmp_path / "diagnose_negatives_digits.json").read_text())
    assert result["n"] == 40 and result["patch_size"] == 8 and result["chance"] == 0.1
    model, _ = load_model(checkpoint)
    expected = diagnose_negatives(model, digits.test_dataloader(), 8, n=40, seed=0)
    assert list(result["views"]) == ["clean", "shuffle", "rotate", "infill"]
    for view, values in expected["views"].items():
        assert result["views"][view] == pytest.approx(values)
    assert (tmp_path / "diagnose_negatives_digits.md").read_text().startswith("# Negative-view diagnostics")


def test_diagnose_negatives_options_and_errors(checkpoint, tmp_path, capsys):
    assert main(["diagnose-negatives", "--checkpoint", str(checkpoint), "--n", "8", "--patch_size", "4",
                 "--kinds", "[shuffle]", "--out", str(tmp_path)]) == 0
    assert "4-px cells; model patch size 8 px, NOT aligned" in capsys.readouterr().out
    result = json.loads((tmp_path / "diagnose_negatives_digits.json").read_text())
    assert list(result["views"]) == ["clean", "shuffle"] and result["patch_size"] == 4
    assert main(["diagnose-negatives", "--checkpoint", str(checkpoint), "--patch_size", "5", "--out",
                 str(tmp_path)]) == 1
    assert "Patch sizes that fit this 32x32 input" in capsys.readouterr().err
    assert main(["diagnose-negatives", "--checkpoint", str(tmp_path / "missing")]) == 1
    assert "no weights at" in capsys.readouterr().err


def test_list_options_take_one_name_or_the_comma_form(checkpoint, tmp_path):
    """`--corruptions contrast` (one name, no brackets) failed with jsonargparse's 'Does not validate against any of
    the Union subtypes'; one name and the comma form read as lists, as the README's CLI conventions say."""
    common = ["--checkpoint", str(checkpoint), "--n", "2", "--device", "cpu"]
    assert main(["robustness", *common, "--corruptions", "contrast", "--workers", "1",
                 "--out", str(tmp_path / "a")]) == 0
    assert list(json.loads((tmp_path / "a" / "robustness_digits.json").read_text())["accuracy"]) == ["contrast"]
    assert main(["robustness", *common, "--corruptions", "contrast,brightness", "--workers", "1",
                 "--out", str(tmp_path / "b")]) == 0
    assert list(json.loads((tmp_path / "b" / "robustness_digits.json").read_text())["accuracy"]) == [
        "contrast", "brightness"]
    assert main(["diagnose-negatives", *common, "--kinds", "shuffle", "--out", str(tmp_path / "c")]) == 0
    report = json.loads(next((tmp_path / "c").glob("diagnose_negatives_*.json")).read_text())
    assert "shuffle" in json.dumps(report) and "rotate" not in json.dumps(report)
