"""Bad inputs a user of the datamodule tries: each refused with a message naming the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.data import (
    EpochRandomSampler,
    build_datamodule,
    build_eval_transform,
    install_dataset,
    load_cifar_pickle,
    read_cifar,
    read_idx,
)
from vitlab.data.datasets import read_image, scan_image_folder
from vitlab.data.transforms import Normalize
from vitlab.errors import ConfigError, DataError, MissingFileError

from .conftest import STEMS, mnist_like, write_cifar, write_mnist_dir


def test_mean_std_on_the_0_255_scale_are_refused_naming_the_division():
    # was: accepted, every pixel normalised to about -2 (x / 255 minus 128), silently
    with pytest.raises(ConfigError, match=r"mean must hold values in \[0, 1\].*mean \[0\.502\] and std \[0\.251\]"):
        build_datamodule("digits", mean=[128.0], std=[64.0])
    with pytest.raises(ConfigError, match=r"divided by 255"):
        Normalize([123.675, 116.28, 103.53], [58.395, 57.12, 57.375], out_chans=3)


def test_unit_scale_statistics_still_normalise():
    norm = Normalize([0.5], [0.25], out_chans=1)
    out = norm(torch.tensor([[[[0, 255]]]], dtype=torch.uint8))
    assert torch.equal(out, torch.tensor([[[[-2.0, 2.0]]]]))
    assert build_datamodule("digits", mean=[0.0], std=[1.0]).mean == (0.0,)


def test_a_val_fraction_that_leaves_no_training_image_names_the_fix():
    dm = build_datamodule("digits", val_fraction=0.9999, batch_size=8)
    with pytest.raises(ConfigError, match=r"no training images left: 1437 .*smaller val_fraction \(below 0\.999652 "):
        dm.setup("fit")


def _image_folder(root):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 20, 30)).save(root / split / cls / "0.png")
    return root


def test_image_folder_root_that_is_the_train_split_names_its_parent(tmp_path):
    # was: "must hold train/ and test/" for the train folder itself (inviting root/train/train)
    root = _image_folder(tmp_path / "data")
    with pytest.raises(MissingFileError, match=r"is itself a split folder: pass its parent, root=.*data$"):
        build_datamodule("imagefolder", root=root / "train").setup("fit")
    with pytest.raises(MissingFileError, match=r"nope does not exist"):
        build_datamodule("imagefolder", root=tmp_path / "nope").setup("fit")
    dm = build_datamodule("imagefolder", root=root, img_size=8, val_fraction=0)
    dm.setup("fit")
    assert dm.class_names == ("a", "b") and len(dm.train_dataset) == 2


def test_eval_transform_scales_uint16_arrays_as_16_bit_pngs(tmp_path):
    # was: TypeError "convert float images in [0, 1] with (x * 255)..." for the array cv2 reads from a 16-bit PNG
    values = np.array([[0, 257 * 64, 257 * 128, 65535]] * 4, dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    transform = build_eval_transform({"img_size": 4, "in_chans": 1, "mean": [0.0], "std": [1.0], "source_chans": 1})
    from_png = transform(Image.open(tmp_path / "g16.png"))
    assert torch.equal(transform(values), from_png)
    assert torch.equal(transform(torch.from_numpy(values)[None]), from_png)
    assert from_png[0, 0].mul(255).round().tolist() == [0.0, 64.0, 128.0, 255.0]


def test_eval_transform_given_a_path_says_to_open_it(tmp_path):
    transform = build_eval_transform({"img_size": 4, "in_chans": 1, "mean": [0.0], "std": [1.0], "source_chans": 1})
    with pytest.raises(TypeError, match=r"got the path .*x\.png', not an image: open it first, e.g\. PIL\.Image\.open"):
        transform(str(tmp_path / "x.png"))


@pytest.mark.parametrize("epoch", ["1", 1.5, -1, None])
def test_sampler_set_epoch_refuses_a_non_epoch_at_once(epoch):
    # was: accepted, then a TypeError (or a torch seed error) at the next iteration
    with pytest.raises(ConfigError, match=r"epoch must be an int >= 0"):
        EpochRandomSampler(range(6), seed=3).set_epoch(epoch)


def test_sampler_set_epoch_picks_that_epochs_order():
    a, b = EpochRandomSampler(range(6), seed=3), EpochRandomSampler(range(6), seed=3)
    a.set_epoch(2)
    orders = [list(b) for _ in range(3)]  # without set_epoch, b walks through epochs 0, 1, 2 by itself
    assert list(a) == orders[2] and sorted(orders[2]) == list(range(6)) and orders[0] != orders[2]


@pytest.mark.parametrize("written,asked", [("cifar100", "cifar10"), ("cifar10", "cifar100")])
def test_cifar_root_of_the_other_cifar_names_the_right_dataset(tmp_path, written, asked):
    # was: "cifar10 files not found ... unpack cifar-*-python.tar.gz" for a folder that holds CIFAR-100
    write_cifar(tmp_path, written)
    with pytest.raises(MissingFileError, match=rf"holds {written}, not {asked}: use the dataset name {written}"):
        build_datamodule(asked, root=tmp_path).setup("fit")
    dm = build_datamodule(written, root=tmp_path, val_fraction=0)
    dm.setup("fit")
    assert dm.num_classes == (10 if written == "cifar10" else 100) and len(dm.test_dataset) == 5


@pytest.mark.parametrize("below", ["", "sub"])
def test_install_into_a_cache_that_is_a_file_names_the_option(tmp_path, monkeypatch, below):
    # was: FileExistsError / NotADirectoryError from os.mkdir (before any download is tried)
    blocker = tmp_path / "cache_file"
    blocker.write_text("not a folder")
    cache = blocker / below if below else blocker
    with pytest.raises(ConfigError, match=r"cache_file is a file, not a folder; pass cache_dir=FOLDER"):
        install_dataset("mnist", cache_dir=cache, progress=False)
    monkeypatch.setenv("VITLAB_DATA", str(cache))
    with pytest.raises(ConfigError, match=r"or set VITLAB_DATA=FOLDER"):
        build_datamodule("mnist").prepare_data()


def test_idx_file_paths_with_a_tilde_are_in_the_home_folder(tmp_path, monkeypatch):
    # was: "train_images: ~/digits/train-images-idx3-ubyte does not exist" (the '~' was taken literally)
    monkeypatch.setenv("HOME", str(tmp_path))
    arrays = mnist_like()
    write_mnist_dir(tmp_path / "digits", arrays)
    names = {key: f"~/digits/{stem}" for key, stem in STEMS.items()}
    dm = build_datamodule("idx", val_fraction=0, **names)
    dm.setup("fit")
    assert len(dm.train_dataset) == len(arrays["train_labels"]) and len(dm.test_dataset) == len(arrays["test_labels"])
    assert dm.num_classes == 10


def test_the_public_readers_take_tilde_paths(tmp_path, monkeypatch):
    # were: "IDX file not found: ~/m/...", "cifar10 files not found under ~/c", "image folder not found: ~/f/train",
    # "image file not found: ~/f/train/a/0.png" (torchvision's datasets expand '~' too)
    monkeypatch.setenv("HOME", str(tmp_path))
    arrays = mnist_like()
    write_mnist_dir(tmp_path / "m", arrays)
    assert np.array_equal(read_idx(f"~/m/{STEMS['train_labels']}"), arrays["train_labels"])
    write_cifar(tmp_path / "c", "cifar10")
    train, test, names = read_cifar("~/c", "cifar10")
    assert len(names) == 10 and len(test.labels) == 5
    assert "data" in load_cifar_pickle("~/c/cifar-10-batches-py/test_batch")
    _image_folder(tmp_path / "f")
    assert [label for _, label in scan_image_folder("~/f/train")] == [0, 1]
    assert read_image("~/f/train/a/0.png", "RGB")[:, 0, 0].tolist() == [10, 20, 30]


def test_a_decompression_bomb_in_an_image_folder_is_a_one_line_error_naming_it(tmp_path, monkeypatch):
    # was: PIL's DecompressionBombError (not an OSError) escaped as a traceback
    root = _image_folder(tmp_path / "data")
    Image.new("L", (64, 64)).save(root / "train" / "a" / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 = 4096 > 2 * 1000: PIL refuses it as a bomb
    with pytest.raises(DataError, match=r"big\.png is refused as a decompression bomb .*MAX_IMAGE_PIXELS"):
        read_image(root / "train" / "a" / "big.png", "L")
    assert read_image(root / "train" / "a" / "0.png", "L").shape == (1, 8, 8)


def test_a_damaged_file_in_vitlabs_cache_says_to_delete_and_reinstall(tmp_path, monkeypatch):
    # was: "... truncated gzip file: download or copy it again", while `vitlab data install` said "already installed"
    cache = tmp_path / "cache"
    monkeypatch.setenv("VITLAB_DATA", str(cache))
    write_mnist_dir(cache / "mnist", mnist_like(), gz=True)
    path = cache / "mnist" / f"{STEMS['train_images']}.gz"
    path.write_bytes(path.read_bytes()[:60])
    dm = build_datamodule("mnist")
    dm.prepare_data()  # every file is there: nothing is installed
    with pytest.raises(DataError, match=rf"truncated gzip.*in vitlab's cache: delete {cache / 'mnist'} and run "
                                        r"`vitlab data install mnist`"):
        dm.setup("fit")
    with pytest.raises(DataError, match=r"truncated gzip file \([^)]*\): download or copy it again$"):
        build_datamodule("mnist", root=cache / "mnist").setup("fit")  # the user's own folder: no cache advice
