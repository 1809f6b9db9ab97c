"""Bad input to vitlab.data raises a vitlab error whose message names the fix; nothing silently does the wrong thing."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.checks import check_float, check_int, check_stats
from vitlab.data import EpochRandomSampler, TensorImageDataset, build_datamodule, build_eval_transform, few_shot_indices
from vitlab.data.datasets import image_folder_classes, read_image, scan_image_folder
from vitlab.data.loading import resolve_idx_files
from vitlab.data.readers import read_cifar
from vitlab.data.transforms import Normalize, build_augment, fit_geometry
from vitlab.errors import ConfigError, DataError, MissingFileError

from .conftest import STEMS, mnist_like, write_cifar, write_idx, write_image_folder, write_mnist_dir

GREY_CONFIG = {"img_size": 32, "in_chans": 3, "mean": [0.286] * 3, "std": [0.353] * 3, "source_chans": 1,
               "native_size": 28, "pad_to": 32}


# ---- 1. few-shot never drops a class ----
def test_few_shot_indices_refuses_a_class_with_no_examples():
    with pytest.raises(ConfigError, match=r"class 2 has none \(0 examples\); use a smaller k"):
        few_shot_indices(torch.tensor([0, 0, 1, 1, 3, 3]), 1, 0)


def test_few_shot_indices_counts_classes_from_num_classes_not_from_the_labels_present():
    with pytest.raises(ConfigError, match=r"each of the 5 classes, but class 4 has none"):
        few_shot_indices(torch.tensor([0, 1, 2, 3]), 1, 0, num_classes=5)
    assert few_shot_indices(torch.tensor([0, 1, 2, 3]), 1, 0, num_classes=4).tolist() == [0, 1, 2, 3]


def test_few_shot_with_limit_train_leaving_out_classes_is_an_error_naming_them_and_the_fix():
    dm = build_datamodule("digits", few_shot={"shots": 1, "seed": 0}, limit_train=5)
    with pytest.raises(ConfigError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert "each of the 10 classes" in message and "have none" in message and "no limit_train" in message


def test_few_shot_too_few_examples_suggests_the_fix():
    with pytest.raises(ConfigError, match=r"class 1 has 1, fewer than k=2; use a smaller k"):
        few_shot_indices([0, 0, 1], 2, 0)


@pytest.mark.parametrize("labels,match", [
    (torch.tensor([], dtype=torch.long), "labels is empty"), (["a", "b"], "integer class labels"),
    (torch.tensor([True, False]), "1-D integer"), (torch.tensor([-1, 0]), ">= 0"),
])
def test_few_shot_indices_refuses_bad_labels(labels, match):
    with pytest.raises(ConfigError, match=match):
        few_shot_indices(labels, 1, 0)


@pytest.mark.parametrize("seed", [-1, 1.5, None, "0", 2**63, True])
def test_few_shot_indices_refuses_bad_seeds(seed):
    with pytest.raises(ConfigError, match=r"seed must be an int in 0\.\.2\*\*63 - 1"):
        few_shot_indices([0, 1], 1, seed)


# ---- 2. build_eval_transform ----
@pytest.mark.parametrize("image,match", [
    (torch.zeros(28, 28, 3, dtype=torch.uint8), r"\[C, H, W\].*channels-last \[H, W, C\]: use image.permute"),
    (np.zeros((28, 28, 5), np.uint8), r"\[H, W, C\] needs C = 1..4"),
    (np.zeros((0, 0), np.uint8), r"empty \(0x0 pixels\)"),
    (torch.zeros(1, 0, 5, dtype=torch.uint8), r"empty \(5x0 pixels\)"),
])
def test_eval_transform_refuses_bad_layouts_naming_the_expected_one(image, match):
    with pytest.raises(DataError, match=match) as err:
        build_eval_transform(GREY_CONFIG)(image)
    assert "PIL image" in str(err.value)


def test_eval_transform_refuses_an_empty_pil_image():
    with pytest.raises(DataError, match="empty"):
        build_eval_transform(GREY_CONFIG)(Image.new("L", (0, 0)))


@pytest.mark.parametrize("config,match", [
    (None, "data_config must be a dict"), ({**GREY_CONFIG, "img_size": 0}, "img_size must be an int >= 1"),
    ({**GREY_CONFIG, "img_size": "abc"}, "img_size must be an int"), ({**GREY_CONFIG, "std": [0, 0, 0]}, "std"),
    ({**GREY_CONFIG, "mean": [float("nan")] * 3}, "finite"), ({"img_size": 32}, "lacks"),
])
def test_eval_transform_refuses_bad_configs(config, match):
    with pytest.raises(ConfigError, match=match) as err:
        build_eval_transform(config)
    assert "data_config" in str(err.value)


def test_fit_geometry_refuses_img_size_zero():
    with pytest.raises(ConfigError, match="img_size must be an int >= 1"):
        fit_geometry(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), 0)


# ---- 3. datamodule options are checked at construction ----
@pytest.mark.parametrize("kwargs,match", [
    ({"seed": True}, "seed must be an int"), ({"seed": 1.5}, "seed must be an int"), ({"seed": -1}, "seed"),
    ({"val_fraction": "0.1"}, "val_fraction must be a finite number"), ({"val_fraction": None}, "val_fraction"),
    ({"val_fraction": True}, "val_fraction"), ({"eval_batch_size": 2.5}, "eval_batch_size must be None or an int"),
    ({"eval_batch_size": "4"}, "eval_batch_size"), ({"limit_train": 2.5}, "limit_train must be None or an int"),
    ({"limit_train": True}, "limit_train"), ({"num_workers": 1.5}, "num_workers must be an int >= 0"),
    ({"num_workers": None}, "num_workers"), ({"num_workers": False}, "num_workers"),
    ({"in_chans": True}, "in_chans must be an int"), ({"in_chans": 3.0}, "in_chans must be an int"),
    ({"in_chans": 0}, "in_chans"), ({"randaugment_magnitude": -5}, r"randaugment_magnitude must be an int in 0\.\.30"),
    ({"randaugment_magnitude": 31}, r"0\.\.30"), ({"augment": "randaugment", "randaugment_num_ops": 2.5}, "num_ops"),
    ({"augmix_severity": 0}, r"augmix_severity must be an int in 1\.\.10"), ({"augmix_severity": 2.5}, "severity"),
    ({"pin_memory": "yes"}, "pin_memory must be True or False"), ({"pin_memory": 1}, "pin_memory"),
    ({"root": 123}, "root must be a folder path"), ({"cache_dir": 5}, "cache_dir must be a folder path"),
    ({"mean": "0.5", "std": "0.5"}, "mean must be a non-empty list"), ({"mean": [], "std": []}, "non-empty"),
    ({"mean": [float("nan")], "std": [1.0]}, "finite"),
    ({"mean": [0.5], "std": [0.0]}, "std must hold finite numbers > 0"),
    ({"mean": [0.5], "std": [float("inf")]}, "finite numbers > 0"), ({"mixup": float("nan")}, "mixup"),
])
def test_datamodule_options_are_checked_at_construction(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_datamodule("digits", **kwargs)  # no setup(): the check happens at construction


def test_numpy_integers_are_accepted_where_the_value_is_clearly_an_integer():
    dm = build_datamodule("digits", batch_size=np.int64(8), seed=np.int32(3), limit_train=np.int64(50),
                          img_size=np.int64(16), few_shot={"shots": np.int64(1), "seed": np.int64(0)})
    assert type(dm.hparams.batch_size) is int and type(dm.hparams.few_shot["shots"]) is int
    assert few_shot_indices([0, 0, 1, 1], np.int64(2), np.int64(0)).tolist() == [0, 1, 2, 3]
    assert len(EpochRandomSampler(range(3), np.int64(1))) == 3


def test_check_helpers():
    assert check_int("x", np.int16(3), minimum=0) == 3
    with pytest.raises(ConfigError, match=r"x must be an int >= 0, got np\.True_"):
        check_int("x", np.bool_(True), minimum=0)
    assert check_float("p", 1, minimum=0, maximum=1) == 1.0
    with pytest.raises(ConfigError, match="p must be a finite number"):
        check_float("p", 1, minimum=0, maximum=1, below_maximum=True)
    assert check_stats("mean", np.array([0.5, 0.25])) == (0.5, 0.25)


def test_build_augment_checks_strengths_for_every_preset():
    with pytest.raises(ConfigError, match="randaugment_magnitude"):
        build_augment("none", randaugment_magnitude=-1)
    with pytest.raises(ConfigError, match="unknown augment preset"):
        build_augment("RandAugment")


def test_normalize_refuses_non_finite_statistics():
    with pytest.raises(ConfigError, match="finite"):
        Normalize([float("nan")], [0.5], 1)


def test_sampler_seed_is_checked_and_large_seeds_work():
    with pytest.raises(ConfigError, match="seed"):
        EpochRandomSampler(range(3), None)
    assert sorted(EpochRandomSampler(range(5), 2**63 - 1)) == list(range(5))


# ---- 4. ImageFolder ----
def test_hidden_folders_are_not_classes(tmp_path):
    root = write_image_folder(tmp_path / "images")
    for split in ("train", "test"):
        (root / split / ".ipynb_checkpoints").mkdir()
        Image.new("RGB", (8, 8)).save(root / split / ".ipynb_checkpoints" / "x.png")
    Image.new("RGB", (8, 8)).save(root / "train" / "cat" / "._resource_fork.png")  # macOS AppleDouble file
    (root / "train" / "cat" / ".cache").mkdir()
    (root / "train" / "cat" / ".cache" / "y.png").write_bytes(b"not an image")
    assert image_folder_classes(root / "train") == ("cat", "dog", "eel")
    samples = scan_image_folder(root / "train")
    assert len(samples) == 10 and not any("/." in path for path, _ in samples)
    dm = build_datamodule("imagefolder", root=root, val_fraction=0.0, batch_size=4)
    dm.setup("fit")
    assert dm.num_classes == 3 and len(dm.test_dataset) == 3


def test_an_empty_test_split_is_a_data_error_naming_the_folder(tmp_path):
    root = write_image_folder(tmp_path / "images")
    for path in (root / "test").rglob("*.png"):
        path.unlink()
    dm = build_datamodule("imagefolder", root=root)
    with pytest.raises(DataError, match=rf"{root / 'test'} holds no image files"):
        dm.setup("fit")


def test_an_empty_training_class_folder_is_a_vitlab_error_naming_it(tmp_path):
    root = write_image_folder(tmp_path / "images")
    (root / "train" / "fox").mkdir()
    with pytest.raises(DataError, match=rf"class folder {root / 'train' / 'fox'} holds no image files.*remove the"):
        build_datamodule("imagefolder", root=root).setup("fit")


def test_dangling_symlinks_are_named_at_setup_and_live_links_and_mixed_modes_load(tmp_path):
    root = write_image_folder(tmp_path / "images")
    Image.new("RGBA", (9, 7), (1, 2, 3, 4)).save(root / "train" / "dog" / "alpha.PNG")  # uppercase extension, RGBA
    Image.new("P", (5, 11)).save(root / "train" / "eel" / "palette.BMP")
    (root / "train" / "dog" / "link.png").symlink_to(root / "train" / "cat" / "0.png")
    (root / "train" / "lynx").symlink_to(root / "train" / "cat", target_is_directory=True)
    dm = build_datamodule("imagefolder", root=root, img_size=8, val_fraction=0.0, batch_size=64)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert dm.class_names == ("cat", "dog", "eel", "lynx") and images.shape == (17, 3, 8, 8)
    assert sorted(labels.tolist()) == [0] * 4 + [1] * 5 + [2] * 4 + [3] * 4
    (root / "train" / "cat" / "gone.png").symlink_to(tmp_path / "nowhere.png")  # also seen through lynx/
    with pytest.raises(DataError, match=r"2 image file\(s\) in .*train are symlinks to nothing .*gone.png.*delete"):
        build_datamodule("imagefolder", root=root).setup("fit")


def test_read_image_bad_mode_is_a_config_error_about_the_mode(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(path)
    with pytest.raises(ConfigError, match=r"mode must be 'L' \(grey\) or 'RGB', got 'P'") as err:
        read_image(path, "P")
    assert "replace" not in str(err.value)
    with pytest.raises(ConfigError, match="is a folder, not an image file"):
        read_image(tmp_path)


@pytest.mark.parametrize("function", [image_folder_classes, scan_image_folder])
def test_image_folder_helpers_name_a_missing_path_or_a_file(tmp_path, function):
    with pytest.raises(MissingFileError, match=rf"image folder not found: {tmp_path / 'nope'}"):
        function(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'file.txt'} is a file, not a folder"):
        function(tmp_path / "file.txt")


# ---- 5. float labels are refused, never truncated ----
def test_cifar_float_labels_are_a_data_error(tmp_path):
    info = write_cifar(tmp_path, "cifar10")
    batch = info["folder"] / "data_batch_1"
    obj = pickle.loads(batch.read_bytes())
    obj[b"labels"] = [0.5, 1.2, 2.0, 3.0, 4.0, 5.0]
    batch.write_bytes(pickle.dumps(obj))
    with pytest.raises(DataError, match=r"data_batch_1: 'labels' must hold integer class labels, got float64"):
        read_cifar(tmp_path, "cifar10")


def test_tensor_dataset_refuses_float_labels_and_accepts_a_list_of_ints():
    images, norm = torch.zeros(2, 1, 8, 8, dtype=torch.uint8), Normalize([0.5], [0.5], 1)
    with pytest.raises(ConfigError, match="labels must be integer class indices.*not truncated"):
        TensorImageDataset(images, torch.tensor([0.7, 1.2]), norm, 8)
    ds = TensorImageDataset(images, [0, 1], norm, 8)
    assert ds[1][1].dtype == torch.int64 and int(ds[1][1]) == 1


# ---- 6. IDX ----
def test_idx_test_images_of_another_size_are_refused(tmp_path):
    arrays = mnist_like()
    write_mnist_dir(tmp_path, arrays)
    write_idx(tmp_path / STEMS["test_images"], arrays["test_images"][:, :20, :20].copy())
    dm = build_datamodule("idx", root=tmp_path)
    with pytest.raises(DataError, match=r"holds 20x20 images .* are 28x28 .*Convert the test images"):
        dm.setup("fit")


def test_idx_path_that_is_a_folder_says_so(tmp_path):
    write_mnist_dir(tmp_path, mnist_like())
    with pytest.raises(ConfigError, match=r"is a folder, not an IDX file.*leave train_images out"):
        resolve_idx_files(tmp_path, {"train_images": str(tmp_path)})
    with pytest.raises(ConfigError, match="is a folder, not an IDX file"):
        build_datamodule("idx", root=tmp_path, train_images=Path(tmp_path)).setup("fit")


def test_normalize_refuses_images_whose_channels_do_not_match_the_statistics():
    with pytest.raises(ConfigError, match="images have 2 channels but mean/std have 3 values"):
        Normalize([0.5] * 3, [0.5] * 3, 3)(torch.zeros(1, 2, 2, 2, dtype=torch.uint8))


@pytest.mark.parametrize("name", [["mnist"], None, 5])
def test_a_dataset_name_that_is_not_a_string_lists_the_valid_names(name):
    with pytest.raises(ConfigError, match="unknown dataset .*valid names: mnist"):
        build_datamodule(name)
