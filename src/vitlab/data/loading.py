"""Find a dataset's files (vitlab's cache or the user's ``root``) and load them, with errors that name the fix.

Example:
    >>> from vitlab.data.loading import load_in_memory
    >>> data = load_in_memory("digits")
    >>> len(data.train.labels), len(data.test.labels), data.class_names[:3]
    (1437, 360, ('0', '1', '2'))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vitlab.errors import ConfigError, DataError, MissingFileError

from .install import dataset_dir, is_installed
from .readers import Split, find_idx_files, read_cifar, read_digits, read_idx_split
from .registry import IDX_FILE_STEMS, get_spec

__all__ = ["LoadedData", "channel_stats", "load_in_memory", "resolve_idx_files", "resolve_image_folder"]


@dataclass(frozen=True)
class LoadedData:
    """Train and test splits in file order, uint8 [N, C, H, W] images, and the class names in label order."""

    train: Split
    test: Split
    class_names: tuple[str, ...]


def _not_installed(name: str, folder: Path) -> MissingFileError:
    return MissingFileError(
        f"{name} is not installed in vitlab's cache ({folder}). Run `vitlab data install {name}` (or call "
        f"datamodule.prepare_data()), or point $VITLAB_DATA at a cache that holds it."
    )


def resolve_idx_files(root: str | Path | None, files: dict[str, str | Path | None]) -> dict[str, Path]:
    """Paths of the four IDX files for the ``idx`` dataset.

    Args:
        root: folder for relative paths and for the standard names (``train-images-idx3-ubyte[.gz]``, ...).
        files: ``train_images``/``train_labels``/``test_images``/``test_labels`` -> path or None (standard name).

    Raises:
        MissingFileError: a file is missing or no root was given for an unnamed file. ConfigError: a path given is a
            folder, not a file.
    """
    unknown = set(files) - set(IDX_FILE_STEMS)
    if unknown:
        raise ConfigError(f"unknown idx file keys {sorted(unknown)}; valid keys: {', '.join(IDX_FILE_STEMS)}")
    standard = find_idx_files(root)[0] if root is not None else {}
    resolved, problems = {}, []
    for key, stem in IDX_FILE_STEMS.items():
        given = files.get(key)
        if given is None:
            if key in standard:
                resolved[key] = standard[key]
            else:
                problems.append(f"{key}: no path given and no {stem}[.gz] in root={root}")
            continue
        given_path = Path(given).expanduser()  # "~/data/x-ubyte" is the home folder's, as root's "~" is
        path = given_path if root is None or given_path.is_absolute() else Path(root).expanduser() / given_path
        if path.is_dir():
            raise ConfigError(f"{key}={given!r}: {path} is a folder, not an IDX file. Give the file itself (e.g. "
                              f"{path / stem}), or pass root={str(path)!r} and leave {key} out to use the "
                              "standard MNIST names")
        if path.is_file():
            resolved[key] = path
        else:
            problems.append(f"{key}: {path} does not exist")
    if problems:
        raise MissingFileError(
            "idx dataset files not found:\n  " + "\n  ".join(problems) + "\nPass root=FOLDER holding the four "
            "MNIST-layout files, or the paths train_images=, train_labels=, test_images=, test_labels=."
        )
    return resolved


def load_in_memory(
    name: str,
    root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    idx_files: dict[str, str | Path | None] | None = None,
) -> LoadedData:
    """Load an in-memory dataset (everything except ``imagefolder``).

    Args:
        name: ``mnist``, ``fashion_mnist``, ``digits``, ``cifar10``, ``cifar100`` or ``idx``.
        root: the user's folder (nothing is installed there); None reads vitlab's cache.
        cache_dir: cache root when `root` is None; default ``$VITLAB_DATA`` or ``~/.cache/vitlab``.
        idx_files: for ``idx`` only, see `resolve_idx_files`.

    Raises:
        MissingFileError: the files are missing; the message names the install command or the expected files.
        DataError: a file is corrupt, truncated or empty, or a label is outside the class range (names the file).
    """
    spec = get_spec(name)
    if name == "imagefolder":
        raise ConfigError("imagefolder is read from disk per sample; use resolve_image_folder")
    if name == "digits":
        if root is not None:
            raise ConfigError("digits ships with scikit-learn and reads no files: leave root unset (root=None; "
                              "data.root: null)")
        train, test = read_digits()
        return LoadedData(train, test, spec.class_names)
    if name == "idx":
        train, test = read_idx_split(resolve_idx_files(root, idx_files or {}))  # checks the labels (0..K-1)
        num_classes = int(train.labels.max()) + 1
        return LoadedData(train, test, tuple(str(i) for i in range(num_classes)))
    folder = Path(root) if root is not None else dataset_dir(name, cache_dir)
    if root is None and not is_installed(name, cache_dir):
        raise _not_installed(name, folder)
    try:
        if name in ("cifar10", "cifar100"):
            train, test, class_names = read_cifar(folder, name)
            return LoadedData(train, test, class_names)
        found, missing = find_idx_files(folder)
        if missing:
            raise MissingFileError(
                f"{name} files not found in {folder}: missing {', '.join(missing)}. Put the IDX files there (raw or "
                f".gz), or leave root unset (root=None; data.root: null) to use vitlab's cache, which `vitlab data "
                f"install {name}` fills."
            )
        train, test = read_idx_split(found, num_classes=spec.num_classes)
        return LoadedData(train, test, spec.class_names)
    except DataError as err:
        if root is not None:
            raise
        # `vitlab data install` skips a dataset whose files are all there, so a damaged one must go first
        raise DataError(f"{err} (in vitlab's cache: delete {folder} and run `vitlab data install {name}`)") from None


def resolve_image_folder(root: str | Path | None) -> tuple[Path, Path]:
    """``(train_dir, test_dir)`` of an ImageFolder root: ``root/train`` and ``root/test`` (else ``root/val``).

    Raises:
        ValueError / FileNotFoundError: no root, or the folders are missing; the message shows the layout.
    """
    layout = "root/train/<class>/<image>.png and root/test/<class>/... (or root/val/<class>/...)"
    if root is None:
        raise ConfigError(f"imagefolder reads your own images: pass root=PATH laid out as {layout}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingFileError(f"imagefolder root {root} does not exist: pass the folder laid out as {layout}")
    test = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test is None:
        hint = ""
        if root.name in ("train", "test", "val") and (root.parent / "train").is_dir():
            hint = f"; {root} is itself a split folder: pass its parent, root={root.parent}"
        raise MissingFileError(f"imagefolder root {root} must hold train/ and test/ (or val/): {layout}{hint}")
    return root / "train", test


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std (in [0, 1] units) of uint8 images [N, C, H, W], via 256-bin histograms."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        mean = float((counts * values).sum() / counts.sum())
        var = float((counts * (values - mean) ** 2).sum() / counts.sum())
        means.append(mean)
        stds.append(max(var**0.5, 1e-3))
    return tuple(means), tuple(stds)
