"""Writers for small dataset files in every format vitlab reads, and an isolated data cache per test."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B, np.dtype(np.int32): 0x0C,
             np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STEMS = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets an empty vitlab cache inside its tmp_path (real data is read via `real_data_dir`)."""
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path / "cache"))


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write `array` as an IDX file (big-endian), gzip-compressed when `gz`."""
    array = np.asarray(array)
    header = bytes([0, 0, IDX_CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def mnist_like(n_train: int = 40, n_test: int = 12, side: int = 28, seed: int = 0) -> dict[str, np.ndarray]:
    """Random uint8 images (values 1..255, so zero padding is recognisable) and labels i % 10."""
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(1, 256, (n_train, side, side), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(1, 256, (n_test, side, side), dtype=np.uint8),
        "test_labels": ((np.arange(n_test) * 3) % 10).astype(np.uint8),
    }


def write_mnist_dir(folder: Path, arrays: dict[str, np.ndarray], gz: bool = False) -> Path:
    """Write the four MNIST-layout IDX files into `folder`."""
    for key, stem in STEMS.items():
        write_idx(folder / (stem + (".gz" if gz else "")), arrays[key], gz=gz)
    return folder


@pytest.fixture
def mnist_dir(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    """A folder with raw (uncompressed) MNIST-layout IDX files and the arrays written into it."""
    arrays = mnist_like()
    return write_mnist_dir(tmp_path / "mnist_files", arrays), arrays


def _dump(obj: dict, path: Path, protocol: int, legacy_numpy: bool) -> None:
    data = pickle.dumps(obj, protocol=protocol)
    if legacy_numpy:  # files pickled by old numpy name `numpy.core.multiarray`; the reader must map it
        data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    path.write_bytes(data)


def write_cifar(root: Path, name: str, n_train_per_file: int = 6, n_test: int = 5, seed: int = 0) -> dict:
    """Write a tiny CIFAR python layout under ``root/cifar-10-batches-py`` or ``root/cifar-100-python``.

    CIFAR-10 files use bytes keys and pickle protocol 2 with legacy numpy names (like the official Python-2 files);
    CIFAR-100 files use str keys and protocol 5. Returns the arrays written (data rows [N, 3072]).
    """
    rng = np.random.default_rng(seed)
    cifar10 = name == "cifar10"
    folder = root / ("cifar-10-batches-py" if cifar10 else "cifar-100-python")
    folder.mkdir(parents=True)
    k = 10 if cifar10 else 100
    key = (lambda s: s.encode()) if cifar10 else (lambda s: s)
    label_key = "labels" if cifar10 else "fine_labels"
    train_files = [f"data_batch_{i}" for i in range(1, 6)] if cifar10 else ["train"]
    out = {"train_data": [], "train_labels": []}
    for fname in train_files:
        data = rng.integers(0, 256, (n_train_per_file, 3072), dtype=np.uint8)
        labels = rng.integers(0, k, n_train_per_file).tolist()
        obj = {key("data"): data, key(label_key): labels, key("batch_label"): key(fname)}
        if not cifar10:
            obj["coarse_labels"] = [lab // 5 for lab in labels]
        _dump(obj, folder / fname, 2 if cifar10 else 5, cifar10)
        out["train_data"].append(data)
        out["train_labels"].extend(labels)
    test = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    test_labels = rng.integers(0, k, n_test).tolist()
    _dump({key("data"): test, key(label_key): test_labels}, folder / ("test_batch" if cifar10 else "test"),
          2 if cifar10 else 5, cifar10)
    names = CIFAR10_NAMES if cifar10 else [f"class{i:02d}" for i in range(k)]
    meta = {key("label_names"): [key(n) for n in names]} if cifar10 else {"fine_label_names": names}
    _dump(meta, folder / ("batches.meta" if cifar10 else "meta"), 2 if cifar10 else 5, cifar10)
    return {"train_data": np.concatenate(out["train_data"]), "train_labels": out["train_labels"], "test_data": test,
            "test_labels": test_labels, "class_names": names, "folder": folder}


def write_image_folder(root: Path) -> Path:
    """``root/train/{cat,dog,eel}/*.png`` (mixed sizes, RGB and L) and ``root/test/{cat,eel}/*.png``."""
    rng = np.random.default_rng(0)
    layout = {"train": {"cat": 4, "dog": 3, "eel": 3}, "test": {"cat": 2, "eel": 1}}
    for split, classes in layout.items():
        for cls, count in classes.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                shape = (12 + i, 10, 3) if i % 2 == 0 else (9, 14)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    return root
