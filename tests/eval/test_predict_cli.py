"""`vitlab predict` on folders and in machine-readable formats (JSON lines, CSV), and `vitlab eval`'s transfer
warning only for a valid dataset."""

import csv
import io
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from vitlab.cli.main import main
from vitlab.errors import ConfigError
from vitlab.eval.evaluate import evaluate_checkpoint, predict_images


@pytest.fixture
def folder(tmp_path):
    """b.png, a.jpg (RGB), c.png (RGBA) and notes.txt in one folder."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (9, 7), dtype=np.uint8)).save(tmp_path / "b.png")
    Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (6, 6, 4), dtype=np.uint8), "RGBA").save(tmp_path / "c.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_a_folder_stands_for_its_image_files_in_name_order(checkpoint, folder, tmp_path):
    rows = predict_images(checkpoint, [folder], topk=2)
    assert [row["image"] for row in rows] == [str(folder / name) for name in ("a.jpg", "b.png", "c.png")]
    assert rows == predict_images(checkpoint, [folder / "a.jpg", folder / "b.png", folder / "c.png"], topk=2)
    (tmp_path / "empty").mkdir()
    mixed = predict_images(checkpoint, [tmp_path / "empty", folder / "a.jpg"])
    assert mixed[0]["error"] == f"{tmp_path / 'empty'}: a folder without image files (PNG, JPEG, ...)"
    with pytest.raises(ConfigError, match="non-empty list of image files or folders"):
        predict_images(checkpoint, str(folder / "a.jpg"))  # a single path string, not a list


def test_a_tilde_path_is_the_home_folder(checkpoint, folder, monkeypatch):
    """A quoted `~` (or one from Python / YAML, where no shell expands it) names the home folder, for the weights and
    the images alike (it said "no weights at ~/run")."""
    import shutil

    home = folder / "home"
    shutil.copytree(checkpoint, home / "run")
    monkeypatch.setenv("HOME", str(home))
    shutil.copy(folder / "a.jpg", home / "a.jpg")
    rows = predict_images("~/run", ["~/a.jpg", "~"], topk=2)
    assert [row["image"] for row in rows] == [str(home / "a.jpg")] * 2
    assert rows[0] == predict_images(checkpoint, [folder / "a.jpg"], topk=2)[0] | {"image": str(home / "a.jpg")}


def test_jsonl_output_parses_back_to_the_predictions(checkpoint, folder, capsys):
    assert main(["predict", "--checkpoint", str(checkpoint), "--topk", "3", "--format", "jsonl", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = predict_images(checkpoint, [folder], topk=3)
    assert [json.loads(line) for line in lines] == [
        {"image": row["image"], "predictions": [{"class": c, "probability": p} for c, p in row["predictions"]]}
        for row in expected]


def test_csv_output_has_one_row_per_prediction_and_per_error(checkpoint, folder, capsys):
    missing = folder / "missing.png"
    assert main(["predict", "--checkpoint", str(checkpoint), "--topk", "2", "--format", "csv",
                 str(folder / "b.png"), str(missing)]) == 1
    captured = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    (name1, p1), (name2, p2) = predict_images(checkpoint, [folder / "b.png"], topk=2)[0]["predictions"]
    assert [(r["image"], r["rank"], r["class"]) for r in rows] == [
        (str(folder / "b.png"), "1", name1), (str(folder / "b.png"), "2", name2), (str(missing), "", "")]
    assert float(rows[0]["probability"]) == pytest.approx(p1, rel=1e-5) and rows[2]["error"].endswith(
        "no such image file")
    assert "1 of 2 images could not be read" in captured.err


def test_eval_warns_about_transfer_only_for_a_dataset_it_can_evaluate(checkpoint):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ConfigError, match="unknown dataset 'digitz'"):
            evaluate_checkpoint(checkpoint, "digitz")


def test_eval_split_val_is_the_runs_own_hold_out(checkpoint, digits, tmp_path):
    import shutil

    import torch

    from vitlab.checkpoint import load_model
    from vitlab.data import build_datamodule

    run = shutil.copytree(checkpoint, tmp_path / "run")
    (run / "config.yaml").write_text("seed: 7\ndata:\n  name: digits\n  val_fraction: 0.3\n")
    result = evaluate_checkpoint(run, "digits", split="val", device="cpu")
    held_out = build_datamodule("digits", img_size=32, in_chans=1, val_fraction=0.3, seed=7)
    held_out.setup("validate")
    model, _ = load_model(run)
    images, labels = map(torch.cat, zip(*held_out.val_dataloader(), strict=True))
    with torch.no_grad():
        expected = (model(images).argmax(1) == labels).float().mean().item()
    assert result["samples"] == len(labels) and result["acc"] == pytest.approx(expected)
    with pytest.warns(UserWarning, match="no run config.yaml beside it: --split val is the default hold-out"):
        evaluate_checkpoint(checkpoint, "digits", split="val", device="cpu")


@pytest.mark.parametrize(
    ("data", "message"),
    [("cifar100", "cifar100 has 100 classes but .* predicts 10: evaluate it on a dataset with 10 classes"),
     ("cifar10", "takes 1-channel images but cifar10 has 3-channel \\(RGB\\) images: evaluate it on a 1-channel")],
)
def test_eval_refuses_a_dataset_the_checkpoint_cannot_take_before_reading_it(checkpoint, tmp_path, monkeypatch,
                                                                             capsys, data, message):
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path / "empty_cache"))  # not installed: refused before any read
    with pytest.raises(ConfigError, match=message):
        evaluate_checkpoint(checkpoint, data)
    assert main(["robustness", "--checkpoint", str(checkpoint), "--data", data]) == 1
    assert "not installed" not in capsys.readouterr().err


def test_eval_without_data_uses_the_runs_dataset(checkpoint, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(checkpoint), "--device", "cpu"]) == 0
    default = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert default == evaluate_checkpoint(checkpoint, "digits", device="cpu")
    import timm

    from tests.eval.conftest import TINY_VIT
    from vitlab.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "bare", timm.create_model("vit_vitlab_tiny_patch4_32", **TINY_VIT).state_dict(),
                    kind="model", model_name="vit_vitlab_tiny_patch4_32", model_kwargs=TINY_VIT)
    with pytest.raises(ConfigError, match="does not record its dataset .*pass --data NAME"):
        evaluate_checkpoint(tmp_path / "bare")
