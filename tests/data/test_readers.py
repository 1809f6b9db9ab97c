"""Readers on small files the tests write, plus the real installed files when present."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from vitlab.data import load_cifar_pickle, read_cifar, read_digits, read_idx
from vitlab.data.readers import find_idx_files, read_idx_split
from vitlab.errors import DataError

from .conftest import STEMS, mnist_like, write_cifar, write_idx, write_mnist_dir


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_round_trips_every_type(tmp_path, gz, dtype):
    array = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    if dtype == np.uint8:
        array = np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    out = read_idx(write_idx(tmp_path / "a.idx", array, gz=gz))
    assert out.dtype == np.dtype(dtype).newbyteorder("=") and out.shape == (2, 3, 5)
    np.testing.assert_array_equal(out, array)


def test_read_idx_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_idx(tmp_path / "missing")
    (tmp_path / "bad").write_bytes(b"\x08\x00\x00\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    path = write_idx(tmp_path / "short", np.zeros((4, 2, 2), np.uint8))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_split_gives_nchw_uint8_and_int64(tmp_path, gz):
    arrays = mnist_like(n_train=7, n_test=3)
    found, missing = find_idx_files(write_mnist_dir(tmp_path, arrays, gz=gz))
    assert missing == [] and all(p.name.endswith(".gz") == gz for p in found.values())
    train, test = read_idx_split(found)
    assert train.images.shape == (7, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.labels.dtype == torch.int64 and test.labels.tolist() == arrays["test_labels"].tolist()
    assert torch.equal(train.images[:, 0], torch.from_numpy(arrays["train_images"]))


def test_idx_channels_last_images_become_channels_first(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    labels = np.array([0, 1, 1, 0], np.uint8)
    files = {"train_images": write_idx(tmp_path / "ti", images), "train_labels": write_idx(tmp_path / "tl", labels),
             "test_images": write_idx(tmp_path / "si", images), "test_labels": write_idx(tmp_path / "sl", labels)}
    train, _ = read_idx_split(files)
    assert train.images.shape == (4, 3, 6, 5)
    assert torch.equal(train.images[2, 1], torch.from_numpy(images[2, :, :, 1]))


def test_find_idx_files_reports_missing_names(tmp_path):
    write_idx(tmp_path / STEMS["train_images"], np.zeros((1, 2, 2), np.uint8))
    found, missing = find_idx_files(tmp_path)
    assert list(found) == ["train_images"]
    assert missing == ["train-labels-idx1-ubyte[.gz]", "t10k-images-idx3-ubyte[.gz]", "t10k-labels-idx1-ubyte[.gz]"]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("use_batches_dir", [False, True])
def test_read_cifar_from_parent_or_batches_folder(tmp_path, name, use_batches_dir):
    written = write_cifar(tmp_path, name)
    train, test, class_names = read_cifar(written["folder"] if use_batches_dir else tmp_path, name)
    n_train = 30 if name == "cifar10" else 6
    assert train.images.shape == (n_train, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == written["train_labels"] and test.labels.tolist() == written["test_labels"]
    # CIFAR rows are channel planes: the first 1024 bytes are red, row-major
    assert torch.equal(train.images[0, 0].reshape(-1), torch.from_numpy(written["train_data"][0, :1024]))
    assert torch.equal(test.images[-1, 2].reshape(-1), torch.from_numpy(written["test_data"][-1, 2048:]))
    assert list(class_names) == written["class_names"]


def test_read_cifar_missing_files_names_expectations(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        read_cifar(tmp_path, "cifar10")
    msg = str(err.value)
    assert "cifar-10-batches-py" in msg and "data_batch_1" in msg and "vitlab data install cifar10" in msg


def test_cifar_unpickler_refuses_foreign_globals(tmp_path):
    target = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(target),))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(DataError, match=f"{path}: refusing to load global posix.mkdir"):
        load_cifar_pickle(path)
    assert not target.exists()


def _corrupt(path: Path, how: str) -> None:
    raw = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": raw[: len(raw) // 2], "header": raw[:6],
                      "garbage": b"\x1f\x8b" + bytes(range(200))}[how])


@pytest.mark.parametrize(("how", "gz", "message"), [
    ("empty", False, "is empty"), ("truncated", False, "truncated or corrupt"), ("header", False, "file is truncated"),
    ("truncated", True, "corrupt or truncated gzip"), ("garbage", True, "corrupt or truncated gzip"),
])
def test_corrupt_idx_files_raise_one_data_error_naming_the_file(tmp_path, how, gz, message):
    path = write_idx(tmp_path / "images", np.zeros((5, 4, 4), np.uint8), gz=gz)
    _corrupt(path, how)
    with pytest.raises(DataError, match=message) as err:
        read_idx(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("how", ["empty", "truncated", "garbage"])
def test_corrupt_cifar_batches_raise_one_data_error_naming_the_file(tmp_path, how):
    write_cifar(tmp_path, "cifar10")
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    _corrupt(batch, how)
    with pytest.raises(DataError) as err:
        read_cifar(tmp_path, "cifar10")
    assert str(batch) in str(err.value) and "\n" not in str(err.value)


def test_a_label_outside_the_class_range_names_the_file(tmp_path):
    arrays = mnist_like(n_train=7, n_test=3)
    arrays["train_labels"][4] = 255
    found, _ = find_idx_files(write_mnist_dir(tmp_path, arrays))
    with pytest.raises(DataError, match=r"label 255 at index 4 is outside the 10 classes") as err:
        read_idx_split(found, num_classes=10)
    assert str(found["train_labels"]) in str(err.value)
    # the idx dataset takes its class count from the labels: a stray 255 among 0..9 is refused, not 256 classes
    arrays = mnist_like(n_train=40, n_test=3)
    arrays["train_labels"][:] = np.arange(40) % 10
    arrays["train_labels"][4] = 255
    found, _ = find_idx_files(write_mnist_dir(tmp_path / "idx", arrays))
    with pytest.raises(DataError, match=r"largest label is 255 but classes 10\.\.254 have no training image"):
        read_idx_split(found)


def test_cifar_label_outside_the_class_range_names_the_batch(tmp_path):
    write_cifar(tmp_path, "cifar10")
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    content = load_cifar_pickle(batch)
    content["labels"] = [10] + list(content["labels"][1:])
    batch.write_bytes(pickle.dumps(content))
    with pytest.raises(DataError, match=f"{batch}: label 10 at index 0 is outside the 10 classes"):
        read_cifar(tmp_path, "cifar10")


def test_cifar_unpickler_loads_arrays_and_decodes_bytes_keys(tmp_path):
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": np.arange(6, dtype=np.uint8).reshape(2, 3), b"labels": [1, 2]}, protocol=2))
    obj = load_cifar_pickle(path)
    assert set(obj) == {"data", "labels"} and obj["data"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_read_digits_scales_to_uint8_and_splits_in_file_order():
    from sklearn.datasets import load_digits

    train, test = read_digits()
    ref = load_digits()
    assert train.images.shape == (1437, 1, 8, 8) and test.images.shape == (360, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255 and int(train.images.min()) == 0
    expected = np.round(ref.images[-1] * 255 / 16).astype(np.uint8)
    assert np.array_equal(test.images[-1, 0].numpy(), expected)
    assert torch.equal(torch.cat([train.labels, test.labels]), torch.from_numpy(ref.target).long())


@pytest.mark.parametrize("name,class0_train", [("mnist", 5923), ("fashion_mnist", 6000)])
def test_real_installed_files(real_data_dir, name, class0_train):
    folder = Path(real_data_dir) / name
    found, missing = find_idx_files(folder)
    if missing:
        pytest.fail(f"{name} is not installed in {real_data_dir}: `make test` installs it first (`make data`), or run "
                    f"`vitlab data install {name}`")
    train, test = read_idx_split(found)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert int((train.labels == 0).sum()) == class0_train and sorted(train.labels.unique().tolist()) == list(range(10))
    assert int(test.labels.bincount().sum()) == 10000


def test_image_folder_scales_16_bit_pngs_and_names_unreadable_files(tmp_path):
    from PIL import Image

    from vitlab.data.datasets import ImageFolderDataset, read_image
    from vitlab.data.transforms import Normalize

    deep = np.array([[0, 257 * 64], [257 * 200, 65535]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")  # really a 16-bit file
    assert read_image(tmp_path / "deep.png", "L").tolist() == [[[0, 64], [200, 255]]]  # scaled, not clipped to 255
    dataset = ImageFolderDataset([(str(tmp_path / "deep.png"), 0)], Normalize([0.0], [1.0], 1), img_size=2, mode="L")
    assert dataset[0][0].flatten().tolist() == pytest.approx([0, 64 / 255, 200 / 255, 1.0])
    for name, content in (("empty.png", b""), ("text.png", b"not an image"), ("cut.png", None)):
        if content is None:
            Image.fromarray(np.full((64, 64), 7, np.uint8)).save(tmp_path / name)
            content = (tmp_path / name).read_bytes()[:60]
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match="is not a readable image") as err:
            ImageFolderDataset([(str(tmp_path / name), 0)], Normalize([0.0], [1.0], 1), img_size=2, mode="L")[0]
        assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("orientation, turns", [(1, 0), (3, 2), (6, -1), (8, 1)])
@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_photos_are_read_upright_by_their_exif_orientation(tmp_path, orientation, turns, suffix):
    # a phone photo stores its pixels sideways with an EXIF Orientation tag; it was read (and predicted) sideways
    from PIL import Image

    from vitlab.data.datasets import read_image
    from vitlab.data.transforms import pil_to_uint8

    pixels = np.zeros((4, 6, 3), dtype=np.uint8)
    pixels[0, 0], pixels[3, 5] = 255, 128  # corners tell any rotation apart
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"photo.{suffix}"
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), **({"quality": 100} if suffix == "jpg" else {}))
    upright = np.rot90(pixels, k=turns)  # what a viewer shows (k < 0: clockwise)
    got = read_image(path, "RGB").permute(1, 2, 0).numpy()
    assert got.shape == upright.shape
    assert np.abs(got.astype(int) - upright.astype(int)).max() <= (0 if suffix == "png" else 40)  # JPEG is lossy
    with Image.open(path) as image:
        pil_to_uint8(image, "L")
        assert image.size == (6, 4)  # the caller's image is not turned in place
