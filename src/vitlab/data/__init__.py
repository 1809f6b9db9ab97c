"""vitlab.data: real datasets offline, one LightningDataModule, augmentation presets, the inference transform.

Public API:

- names: `DATASET_NAMES` (``mnist``, ``fashion_mnist``, ``digits``, ``cifar10``, ``cifar100``, ``imagefolder``,
  ``idx``), `INSTALLABLE`, `AUGMENT_PRESETS`;
- cache: `install_dataset(name, cache_dir=None, progress=True)`, `list_datasets(cache_dir=None)`,
  `default_cache_dir()` (``$VITLAB_DATA`` or ``~/.cache/vitlab``), `is_installed`, `InstallError`;
- training data: `build_datamodule(name, root=None, img_size=32, in_chans=None, ...)` -> `VitlabDataModule`
  (``few_shot={"shots": K, "seed": S}``: K images per class, see `few_shot_indices`);
- inference: `build_eval_transform(data_config)` (image -> normalised float [C, H, W]);
- readers: `read_idx`, `read_cifar`, `read_digits`, `load_cifar_pickle`.

Example:
    >>> from vitlab.data import build_datamodule, build_eval_transform
    >>> dm = build_datamodule("digits", batch_size=32)
    >>> dm.num_classes, dm.in_chans, build_eval_transform(dm.data_config()).img_size
    (10, 1, 32)
"""

from .datamodule import VitlabDataModule, build_datamodule, check_few_shot, few_shot_indices
from .datasets import EpochRandomSampler, ImageFolderDataset, TensorImageDataset
from .install import InstallError, default_cache_dir, install_dataset, is_installed, list_datasets
from .readers import load_cifar_pickle, read_cifar, read_digits, read_idx
from .registry import DATASET_NAMES, INSTALLABLE, check_name, get_spec
from .transforms import (
    AUGMENT_PRESETS,
    IMAGENET_C_OPS,
    RandAugmentImageNetCDisjoint,
    build_augment,
    build_eval_transform,
    fit_geometry,
)

__all__ = [
    "AUGMENT_PRESETS", "DATASET_NAMES", "IMAGENET_C_OPS", "INSTALLABLE", "EpochRandomSampler", "ImageFolderDataset",
    "InstallError", "RandAugmentImageNetCDisjoint", "TensorImageDataset", "VitlabDataModule", "build_augment",
    "build_datamodule", "build_eval_transform", "check_few_shot", "check_name", "default_cache_dir", "few_shot_indices",
    "fit_geometry", "get_spec",
    "install_dataset", "is_installed", "list_datasets", "load_cifar_pickle", "read_cifar", "read_digits", "read_idx",
]
