"""Readers for the on-disk formats vitlab accepts: IDX (raw or gzip), CIFAR python pickles, sklearn digits.

Every reader returns a `Split`: ``images`` uint8 ``[N, C, H, W]`` and ``labels`` int64 ``[N]`` (torch tensors).
CIFAR pickles are read with a restricted unpickler that only builds dicts, lists, strings, bytes and numpy
arrays; any other global in the file is refused, so a tampered file cannot run code.

A corrupt, truncated or empty file, and a label outside the class range, raise `vitlab.errors.DataError` naming the
file and what is wrong; a missing file raises `vitlab.errors.MissingFileError`.

Example:
    >>> from vitlab.data.readers import read_digits
    >>> train, test = read_digits()
    >>> train.images.shape, train.images.dtype, test.labels.shape
    (torch.Size([1437, 1, 8, 8]), torch.uint8, torch.Size([360]))
"""

from __future__ import annotations

import gzip
import importlib
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from vitlab.errors import ConfigError, DataError, MissingFileError

from .registry import IDX_FILE_STEMS

__all__ = [
    "Split", "check_labels", "read_idx", "find_idx_files", "read_idx_split", "resolve_cifar_dir", "read_cifar",
    "read_digits", "load_cifar_pickle",
]

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CIFAR_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_CIFAR_FILES = {
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta", "labels", "label_names"),
    "cifar100": (["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}
DIGITS_TRAIN_SIZE = 1437  # sklearn digits has no official test set: the first 1437 images train, the last 360 test


class Split(NamedTuple):
    """One split held in memory: ``images`` uint8 [N, C, H, W], ``labels`` int64 [N]."""

    images: torch.Tensor
    labels: torch.Tensor


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed, detected from its first bytes) into a numpy array.

    Args:
        path: the file, e.g. ``train-images-idx3-ubyte`` or ``train-images-idx3-ubyte.gz``.

    Returns:
        An array with the shape the header declares, e.g. uint8 [60000, 28, 28]; big-endian types become native.

    Raises:
        MissingFileError: no such file. ConfigError: a folder. DataError: empty file, corrupt or truncated gzip, bad
            magic number, unknown type code, or a size that does not match the header.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not an IDX file: pass a file in it (e.g. "
                          f"{path}/train-images-idx3-ubyte), or build_datamodule('idx', root={str(path)!r}) to read "
                          "the MNIST-named files there")
    if not path.is_file():
        raise MissingFileError(f"IDX file not found: {path}")
    raw = path.read_bytes()
    if not raw:
        raise DataError(f"{path} is empty (0 bytes): download or copy the file again")
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
            raise DataError(f"{path} is a corrupt or truncated gzip file ({err}): download or copy it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (the magic number must be 0x00 0x00 <type> <ndim>)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: the header declares {ndim} dimensions but the file ends after {len(raw)} bytes; "
                        "the file is truncated")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - 4 - 4 * ndim != expected:
        raise DataError(f"{path}: header declares shape {shape} ({expected} bytes) but the file holds "
                        f"{len(raw) - 4 - 4 * ndim} data bytes; the file is truncated or corrupt")
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def find_idx_files(folder: str | Path) -> tuple[dict[str, Path], list[str]]:
    """Locate the four MNIST-layout IDX files in `folder` (also in its ``MNIST/raw`` or ``FashionMNIST/raw``).

    Returns:
        ``(found, missing)``: found maps ``train_images``/``train_labels``/``test_images``/``test_labels`` to paths
        (the raw file or its ``.gz``); missing lists the expected file names that were not found.
    """
    folder = Path(folder).expanduser()
    candidates = [folder, folder / "MNIST" / "raw", folder / "FashionMNIST" / "raw"]
    found: dict[str, Path] = {}
    missing: list[str] = []
    for key, stem in IDX_FILE_STEMS.items():
        hits = [d / name for d in candidates for name in (stem, stem + ".gz") if (d / name).is_file()]
        if hits:
            found[key] = hits[0]
        else:
            missing.append(f"{stem}[.gz]")
    return found, missing


def check_labels(labels: np.ndarray, num_classes: int, path: str | Path) -> None:
    """Refuse labels outside ``[0, num_classes)``, naming the file, the offending value and its first position."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataError(f"{path}: label {int(labels[bad[0]])} at index {int(bad[0])} is outside the {num_classes} "
                        f"classes [0, {num_classes - 1}] ({bad.size} such labels); the file is corrupt or belongs to "
                        "another dataset")


def _split_from_idx(images_path: Path, labels_path: Path, num_classes: int | None = None) -> Split:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3)):
        raise DataError(f"{images_path}: expected uint8 images [N, H, W] or [N, H, W, 1|3], "
                        f"got {images.dtype} {list(images.shape)}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
        raise DataError(f"{labels_path}: expected {len(images)} integer labels [N], got {labels.dtype} "
                        f"{list(labels.shape)}")
    if len(images) == 0:
        raise DataError(f"{images_path} holds no images (N = 0)")
    check_labels(labels, 2**31 if num_classes is None else num_classes, labels_path)
    tensor = torch.from_numpy(images)
    tensor = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2).contiguous()
    return Split(tensor, torch.from_numpy(labels.astype(np.int64)))


def read_idx_split(files: dict[str, Path], num_classes: int | None = None) -> tuple[Split, Split]:
    """Read train and test splits from IDX paths keyed like `IDX_FILE_STEMS` (see `find_idx_files`).

    Images [N, H, W] become [N, 1, H, W]; channels-last [N, H, W, C] becomes [N, C, H, W]. Test images must have
    the training images' size and channels (else the geometry rule would scale the splits differently).

    Args:
        files: the four paths.
        num_classes: labels must lie in ``[0, num_classes)``; ``None`` (the ``idx`` dataset, whose class count
            comes from the labels) still refuses negative labels, and every class up to the largest training label
            must have a training image (a stray label 255 among 0..9 is an error, not 256 classes).

    Raises:
        DataError: a corrupt file, a label out of range, or test images of another size or channel count than the
            training images, naming the file.
    """
    train = _split_from_idx(files["train_images"], files["train_labels"], num_classes)
    test = _split_from_idx(files["test_images"], files["test_labels"], num_classes)
    if train.images.shape[1:] != test.images.shape[1:]:
        c, h, w = train.images.shape[1:]
        tc, th, tw = test.images.shape[1:]
        raise DataError(f"{files['test_images']} holds {th}x{tw} images with {tc} channel(s) but the training images "
                        f"({files['train_images']}) are {h}x{w} with {c}: the two splits would be padded or resized "
                        "to different scales. Convert the test images to the training images' size and channels")
    if num_classes is None:
        counts = torch.bincount(train.labels)
        missing = torch.nonzero(counts == 0).flatten()
        if missing.numel():
            top = int(train.labels.max())
            raise DataError(f"{files['train_labels']}: the largest label is {top} but classes "
                            f"{_ranges(missing.tolist())} have no training image; a corrupt label? Labels must be "
                            "0..K-1 with every class present")
        check_labels(test.labels.numpy(), len(counts), files["test_labels"])
    return train, test


def _ranges(values: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1..3, 7"``."""
    parts, start = [], values[0]
    for previous, current in zip(values, [*values[1:], None], strict=True):
        if current is None or current != previous + 1:
            parts.append(str(start) if start == previous else f"{start}..{previous}")
            start = current
    return ", ".join(parts)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds only builtin containers and numpy arrays/scalars/dtypes."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise DataError(f"refusing to load global {module}.{name}: a CIFAR batch file holds only dicts, lists "
                            "and numpy arrays, so this file is not one (it may be crafted to run code); delete it "
                            "and unpack the CIFAR archive again")
        if module.startswith("numpy.core") and hasattr(np, "_core"):  # numpy >= 2 renamed the private module
            module = "numpy._core" + module[len("numpy.core"):]
        return getattr(importlib.import_module(module), name)


def load_cifar_pickle(path: str | Path) -> dict[str, Any]:
    """Load one CIFAR python-format file (a pickled dict) safely; bytes keys are decoded to str.

    Raises:
        MissingFileError: no such file. DataError: the file is empty, truncated or corrupt, references anything
            other than builtins and numpy arrays, or is not a pickled dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"CIFAR batch file not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes): unpack the CIFAR archive again")
    try:
        with path.open("rb") as f:
            obj = _RestrictedUnpickler(f, encoding="latin1").load()
    except DataError as err:
        raise DataError(f"{path}: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            UnicodeDecodeError, struct.error) as err:  # what a truncated or scrambled pickle raises while loading
        raise DataError(f"{path} is not a readable CIFAR batch (truncated or corrupt: {err}); unpack the CIFAR "
                        "archive again") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict (a CIFAR batch), got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def resolve_cifar_dir(root: str | Path, name: str) -> Path:
    """Return the CIFAR batches folder: ``root/cifar-10-batches-py`` (or ``cifar-100-python``) or `root` itself.

    Raises:
        MissingFileError: neither holds the expected files; the message lists them.
    """
    root = Path(root).expanduser()
    train_files, test_files, meta, _, _ = _CIFAR_FILES[name]
    expected = [*train_files, *test_files, meta]
    for folder in (root / _CIFAR_DIRS[name], root):
        if all((folder / f).is_file() for f in expected):
            return folder
    other = next(n for n in _CIFAR_DIRS if n != name)
    other_files = [*_CIFAR_FILES[other][0], *_CIFAR_FILES[other][1], _CIFAR_FILES[other][2]]
    if any(all((folder / f).is_file() for f in other_files) for folder in (root / _CIFAR_DIRS[other], root)):
        raise MissingFileError(f"{root} holds {other}, not {name}: use the dataset name {other} (data.name: {other}), "
                               f"or pass the folder that holds {_CIFAR_DIRS[name]}/")
    raise MissingFileError(
        f"{name} files not found under {root}: expected {root / _CIFAR_DIRS[name]}/ (or {root}/ itself) to hold "
        f"{', '.join(expected)} (the python version of {name}). Leave root unset (root=None; data.root: null) to use "
        f"vitlab's cache (`vitlab data install {name}` downloads it), or unpack cifar-*-python.tar.gz into {root}."
    )


def _cifar_part(folder: Path, files: list[str], label_key: str, num_classes: int) -> Split:
    images, labels = [], []
    for fname in files:
        batch = load_cifar_pickle(folder / fname)
        data = np.asarray(batch.get("data"))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or not len(data):
            raise DataError(f"{folder / fname}: 'data' must be uint8 [N, 3072] with N > 0, got {data.dtype} "
                            f"{list(data.shape)}")
        try:
            lab = np.asarray(batch.get(label_key, []))
        except (TypeError, ValueError) as err:
            raise DataError(f"{folder / fname}: '{label_key}' is not a list of integer labels ({err})") from None
        if lab.size and lab.dtype.kind not in "iu":  # floats would be truncated (0.5 -> 0), strings are no labels
            raise DataError(f"{folder / fname}: '{label_key}' must hold integer class labels, got {lab.dtype} values "
                            f"such as {lab.ravel()[:3].tolist()}; the file is corrupt or not a CIFAR batch: unpack "
                            "the CIFAR archive again")
        lab = lab.astype(np.int64)
        if lab.shape != (len(data),):
            raise DataError(f"{folder / fname}: '{label_key}' must hold {len(data)} labels, got shape {lab.shape}")
        check_labels(lab, num_classes, folder / fname)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    return Split(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


def read_cifar(root: str | Path, name: str) -> tuple[Split, Split, tuple[str, ...]]:
    """Read CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``, fine labels) from the python layout.

    Returns:
        ``(train, test, class_names)``; images uint8 [N, 3, 32, 32] in file order (train 50000, test 10000).
    """
    if name not in _CIFAR_FILES:
        raise ConfigError(f"read_cifar reads 'cifar10' or 'cifar100', not {name!r}")
    folder = resolve_cifar_dir(root, name)
    train_files, test_files, meta_file, label_key, names_key = _CIFAR_FILES[name]
    meta = load_cifar_pickle(folder / meta_file)
    if not isinstance(meta.get(names_key), (list, tuple)) or not meta[names_key]:
        raise DataError(f"{folder / meta_file}: expected a non-empty list '{names_key}' of class names")
    class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key])
    num_classes = len(class_names)
    return (_cifar_part(folder, train_files, label_key, num_classes),
            _cifar_part(folder, test_files, label_key, num_classes), class_names)


def read_digits() -> tuple[Split, Split]:
    """scikit-learn's 8x8 digits: values 0..16 scaled to uint8 0..255 (``round(v * 255 / 16)``).

    The first 1437 images (file order) are the training split, the last 360 the test split.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    n = DIGITS_TRAIN_SIZE
    return Split(images[:n], labels[:n]), Split(images[n:], labels[n:])
