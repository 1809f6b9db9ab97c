"""Report files of `vitlab robustness` / `vitlab diagnose-negatives`: one run's report is never silently replaced by
another run's, ``--out`` must be a folder, and generation options are checked before anything is loaded or made."""

import json
import shutil

import numpy as np
import pytest

from vitlab.cli.main import main


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path / "cache"))


@pytest.fixture
def other_run(checkpoint, tmp_path):
    """A second run folder (a copy of the tiny checkpoint under another path)."""
    return shutil.copytree(checkpoint, tmp_path / "other_run")


def test_diagnose_refuses_to_replace_the_report_of_another_run(checkpoint, other_run, tmp_path, capsys):
    out = tmp_path / "reports"
    args = ["diagnose-negatives", "--n", "4", "--kinds", "[shuffle]", "--out", str(out)]
    assert main([*args, "--checkpoint", str(checkpoint)]) == 0
    assert main([*args, "--checkpoint", str(checkpoint / "model.safetensors")]) == 0  # the same run: replaced
    first = (out / "diagnose_negatives_digits.json").read_text()
    capsys.readouterr()
    assert main([*args, "--checkpoint", str(other_run)]) == 1
    err = capsys.readouterr().err
    assert "diagnose_negatives_digits.json is the report of another checkpoint" in err and "another --out" in err
    assert (out / "diagnose_negatives_digits.json").read_text() == first


def test_robustness_refuses_to_replace_the_report_of_another_run(checkpoint, other_run, tmp_path, capsys):
    published = tmp_path / "published"
    published.mkdir()
    np.save(published / "labels.npy", np.arange(10, dtype=np.int64))
    np.save(published / "contrast.npy", np.zeros((10, 32, 32, 1), dtype=np.uint8))
    out = tmp_path / "reports"
    args = ["robustness", "--corruption_dir", str(published), "--out", str(out)]
    assert main([*args, "--checkpoint", str(checkpoint)]) == 0
    assert main([*args, "--checkpoint", str(other_run)]) == 1
    assert "robustness_digits_published.json is the report of another checkpoint" in capsys.readouterr().err
    assert json.loads((out / "robustness_digits_published.json").read_text())["checkpoint"] == str(
        checkpoint / "model.safetensors")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workers", "0"], "--workers must be an int >= 1"),
        (["--seed", "-1"], "--seed must be an int >= 0"),
        (["--out", "FILE"], "is a file: give a folder for the report files"),
    ],
)
def test_robustness_refuses_bad_options_before_generating(checkpoint, tmp_path, capsys, extra, message):
    (tmp_path / "FILE").write_text("x")
    extra = [str(tmp_path / "FILE") if word == "FILE" else word for word in extra]
    assert main(["robustness", "--checkpoint", str(checkpoint), "--n", "2", "--corruptions", "[contrast]",
                 *extra]) == 1
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err
    assert "corruption set in" not in captured.out  # refused before anything was generated
    assert not (tmp_path / "cache" / "corruptions").exists()


@pytest.mark.parametrize("extra", [["--cache_dir", "SET"], ["--workers", "2"], ["--seed", "3"]])
def test_generation_options_with_a_published_folder_are_refused(checkpoint, tmp_path, capsys, extra):
    extra = [str(tmp_path / "set") if word == "SET" else word for word in extra]
    assert main(["robustness", "--checkpoint", str(checkpoint), "--corruption_dir", str(tmp_path), *extra]) == 1
    assert f"{extra[0]} apply to generated sets only, not to --corruption_dir: drop them" in capsys.readouterr().err


def test_diagnose_refuses_a_replace_rate_that_no_chosen_view_uses(checkpoint, tmp_path, capsys):
    assert main(["diagnose-negatives", "--checkpoint", str(checkpoint), "--kinds", "[shuffle]", "--replace_rate",
                 "0.375", "--out", str(tmp_path)]) == 1
    assert "--replace_rate 0.375 applies to the infill view only" in capsys.readouterr().err


def test_published_folder_paths_that_are_not_cifar_c_folders_name_the_fix(checkpoint, tmp_path, capsys):
    archive = tmp_path / "CIFAR-10-C.tar"
    archive.write_bytes(b"\0" * 512)
    (tmp_path / "imagenet_c" / "fog" / "1").mkdir(parents=True)
    for path, message in [(archive, "is a file, not a folder: unpack it first"),
                          (tmp_path / "nowhere", "does not exist: pass a CIFAR-C-layout folder"),
                          (tmp_path / "imagenet_c", "the ImageNet-C JPEG layout: pass it with --imagenet_c")]:
        assert main(["robustness", "--checkpoint", str(checkpoint), "--corruption_dir", str(path)]) == 1
        assert message in capsys.readouterr().err


def test_a_model_smaller_than_32_px_is_pointed_to_a_folder_of_its_size(tmp_path, capsys):
    import timm

    from tests.eval.conftest import TINY_VIT
    from vitlab.checkpoint import save_checkpoint
    from vitlab.data import build_datamodule

    kwargs = dict(TINY_VIT, img_size=24)
    save_checkpoint(tmp_path / "run", timm.create_model("vit_vitlab_tiny_patch4_32", **kwargs).state_dict(),
                    kind="model", model_name="vit_vitlab_tiny_patch4_32", model_kwargs=kwargs,
                    extra={"data": build_datamodule("digits", img_size=24).data_config()})
    assert main(["robustness", "--checkpoint", str(tmp_path / "run"), "--n", "2", "--corruptions", "[fog]"]) == 1
    captured = capsys.readouterr()
    assert "takes 24x24 images, smaller than the 32x32 px" in captured.err and "--corruption_dir" in captured.err
    assert not (tmp_path / "cache" / "corruptions").exists()


def test_robustness_csv_reads_back_to_the_json_accuracies(checkpoint, tmp_path, capsys):
    import csv

    published = tmp_path / "published"
    published.mkdir()
    rng = np.random.default_rng(0)
    np.save(published / "labels.npy", rng.integers(0, 10, 40).astype(np.int64))
    for name in ("contrast", "fog"):
        np.save(published / f"{name}.npy", rng.integers(0, 256, (40, 32, 32, 1), dtype=np.uint8))
    assert main(["robustness", "--checkpoint", str(checkpoint), "--corruption_dir", str(published), "--out",
                 str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "robustness_digits_published.json").read_text())
    with (tmp_path / "out" / "robustness_digits_published.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(r["corruption"], int(r["severity"])) for r in rows] == [(c, s) for c in ("fog", "contrast")
                                                                   for s in range(1, 6)]  # Hendrycks' order
    assert {(r["corruption"], r["severity"]): float(r["accuracy"]) for r in rows} == {
        (c, s): a for c, per in report["accuracy"].items() for s, a in per.items()}


def test_diagnose_report_states_whether_the_cells_are_aligned(checkpoint, tmp_path):
    assert main(["diagnose-negatives", "--checkpoint", str(checkpoint), "--n", "4", "--patch_size", "4",
                 "--kinds", "[shuffle]", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "diagnose_negatives_digits.md").read_text()
    assert "Views with 4-px cells; model patch size 8 px, NOT aligned (not a multiple)." in text


def test_n_beyond_a_published_folder_names_the_command_line_fix(checkpoint, tmp_path, capsys):
    np.save(tmp_path / "labels.npy", np.zeros(10, dtype=np.int64))
    np.save(tmp_path / "fog.npy", np.zeros((10, 32, 32, 1), dtype=np.uint8))
    assert main(["robustness", "--checkpoint", str(checkpoint), "--corruption_dir", str(tmp_path), "--n", "3"]) == 1
    assert "has 2 images per severity: pass n <= 2 or None (--n all on the command line)" in capsys.readouterr().err


def test_diagnose_default_kinds_on_a_grid_without_infill_say_how_to_leave_it_out(tmp_path, capsys):
    import timm

    from tests.eval.conftest import TINY_VIT
    from vitlab.checkpoint import save_checkpoint
    from vitlab.data import build_datamodule

    kwargs = dict(TINY_VIT, img_size=24)  # 8-px cells: a 3x3 grid, on which 25 % infill is no whole cell count
    save_checkpoint(tmp_path / "run", timm.create_model("vit_vitlab_tiny_patch4_32", **kwargs).state_dict(),
                    kind="model", model_name="vit_vitlab_tiny_patch4_32", model_kwargs=kwargs,
                    extra={"data": build_datamodule("digits", img_size=24).data_config()})
    assert main(["diagnose-negatives", "--checkpoint", str(tmp_path / "run"), "--n", "4"]) == 1
    assert "or leave the infill view out: --kinds '[shuffle, rotate]'" in capsys.readouterr().err
    assert main(["diagnose-negatives", "--checkpoint", str(tmp_path / "run"), "--n", "4", "--kinds",
                 "[shuffle, rotate]"]) == 0


def test_a_published_folder_at_the_datasets_own_size_is_resized_as_in_training(checkpoint, tmp_path):
    # e.g. MNIST-C (28 px) for a model trained on MNIST at 32 px, or CIFAR-10-C (32 px) for a ViT fine-tuned at 224:
    # was refused ("holds 8x8x1 images but the checkpoint takes 32x32x1"); digits' native size is 8 px
    import torch
    import torchvision.transforms.v2.functional as TF

    from vitlab.eval.evaluate import robustness_report

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (5 * 12, 8, 8, 1), dtype=np.uint8)
    labels = np.tile(rng.integers(0, 10, 12), 5).astype(np.int64)  # CIFAR-C layout: 5 severities x N
    native, resized = tmp_path / "native", tmp_path / "resized"
    for folder, images in [(native, small), (resized, TF.resize(torch.from_numpy(small).permute(0, 3, 1, 2), [32, 32],
                                                               antialias=True).permute(0, 2, 3, 1).numpy())]:
        folder.mkdir()
        np.save(folder / "labels.npy", labels)
        np.save(folder / "contrast.npy", images)
    got = robustness_report(checkpoint, corruption_dir=str(native), out=tmp_path / "a", device="cpu")
    reference = robustness_report(checkpoint, corruption_dir=str(resized), out=tmp_path / "b", device="cpu")
    assert got["accuracy"] == reference["accuracy"] and len(got["accuracy"]["contrast"]) == 5
    from vitlab.checkpoint import read_metadata
    from vitlab.data.transforms import normalize_for
    from vitlab.eval.evaluate import _published_preprocess

    config = read_metadata(checkpoint)["extra"]["data"]
    batch = torch.from_numpy(small).permute(0, 3, 1, 2)
    expected = normalize_for(config)(TF.resize(batch, [32, 32], antialias=True))
    assert torch.equal(_published_preprocess(config)(batch), expected)  # the model sees what training gave it
    np.save(native / "contrast.npy", np.zeros((60, 16, 16, 1), dtype=np.uint8))  # neither its size nor the data's
    with pytest.raises(Exception, match=r"16x16x1 images but the checkpoint takes 32x32x1 \(or its dataset's native "
                                        r"8x8x1, resized as in training\)"):
        robustness_report(checkpoint, corruption_dir=str(native), out=tmp_path / "c", device="cpu")
