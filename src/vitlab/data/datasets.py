"""Map-style datasets that yield normalised float images, plus an epoch-seeded shuffling sampler.

Both datasets implement ``__getitems__`` (which ``torch.utils.data.DataLoader`` calls with a whole batch of
indices): the batch is gathered once, geometry and normalisation run as tensor ops on the whole batch, and only the
optional augmentation runs per sample. Items are ``(image float32 [C, H, W], label int64 [])``; the default collate
stacks them into ``[B, C, H, W]`` and ``[B]``.

Example:
    >>> import torch
    >>> from vitlab.data.transforms import Normalize
    >>> ds = TensorImageDataset(torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.arange(4),
    ...                         Normalize([0.5], [0.5], out_chans=3), img_size=32, pad_to=32)
    >>> x, y = ds[0]
    >>> x.shape, x.dtype, y.dtype
    (torch.Size([3, 32, 32]), torch.float32, torch.int64)
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, RandomSampler
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from vitlab.checks import check_int, check_seed
from vitlab.errors import ConfigError, DataError, MissingFileError

from .transforms import Normalize, fit_geometry, pil_to_uint8, resize_center_crop

__all__ = [
    "TensorImageDataset", "ImageFolderDataset", "EpochRandomSampler", "image_folder_classes", "read_image",
    "scan_image_folder", "integer_labels",
]

Augment = Callable[[torch.Tensor], torch.Tensor]


class _ImageDataset(Dataset, ABC):
    """Shared batch pipeline: load uint8 -> geometry -> per-sample augment -> normalise -> erase -> repeat."""

    def __init__(self, normalize: Normalize, augment: Augment | None = None,
                 erase: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if isinstance(augment, str):
            raise ConfigError(f"augment must be a callable uint8 [C, H, W] -> uint8 [C, H, W] or None, got the string "
                              f"{augment!r}: build a preset with vitlab.data.build_augment({augment!r})")
        for name, value in (("augment", augment), ("erase", erase)):
            if value is not None and not callable(value):
                raise ConfigError(f"{name} must be a callable or None, got {type(value).__name__}")
        self.normalize, self.augment, self.erase = normalize, augment, erase

    def _augment_one(self, image: torch.Tensor) -> torch.Tensor:
        """``augment(image)``, checked to be a uint8 tensor of ``image``'s shape (one O(1) check per sample)."""
        out = self.augment(image)
        if not isinstance(out, torch.Tensor) or out.dtype != torch.uint8 or out.shape != image.shape:
            got = (f"{out.dtype} {list(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__)
            raise ConfigError(f"augment must map a uint8 image {list(image.shape)} to a uint8 tensor of the same "
                              f"shape, got {got}: the dataset converts to float, normalises and resizes (img_size) "
                              "itself, so leave v2.ToDtype / v2.Normalize / v2.ToPILImage / resizing crops out of "
                              "augment (use size-keeping ops, e.g. v2.RandomCrop(size, padding=4))")
        return out

    @abstractmethod
    def _load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images [B, C, img_size, img_size] and int64 labels [B] for `indices`."""

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self._load(indices)
        if self.augment is not None:
            images = torch.stack([self._augment_one(img) for img in images])
        x = self.normalize.scale(images)
        if self.erase is not None:
            x = self.erase(x)
        x = self.normalize.repeat(x)
        return list(zip(x.unbind(0), labels.unbind(0), strict=True))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])[0]


class TensorImageDataset(_ImageDataset):
    """In-memory images: uint8 [N, C, H, W] at native size, labels int64 [N].

    Args:
        images: uint8 [N, C, H, W] (C = 1 or 3).
        labels: integer class labels [N]: a tensor, array or list of ints (float or bool labels are refused, never
            truncated).
        normalize: float conversion, normalisation and channel repeat (`Normalize`).
        img_size: output side; `fit_geometry` (pad to `pad_to`, then resize) runs per batch.
        pad_to: zero-pad side for small native images (MNIST family: 32), or None.
        augment: per-sample uint8 [C, H, W] -> uint8 [C, H, W] augmentation (same shape; e.g. a size-keeping
            ``v2.Compose``), or None. A float, PIL or resized output is refused (`vitlab.errors.ConfigError`).
        erase: batch-wise random erasing on normalised floats [B, C, H, W] (timm's RandomErasing), or None.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | Sequence[int], normalize: Normalize,
                 img_size: int, pad_to: int | None = None, augment: Augment | None = None,
                 erase: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        labels = integer_labels(labels)
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 \
                or len(images) != len(labels):
            raise ConfigError(f"images must be a uint8 tensor [N, C, H, W] with one label each; got "
                              f"{type(images).__name__} {getattr(images, 'dtype', '')} "
                              f"{list(getattr(images, 'shape', []))} and {len(labels)} labels")
        super().__init__(normalize, augment, erase)
        self.images, self.labels = images, labels
        self.img_size = check_int("img_size", img_size, minimum=1)
        self.pad_to = None if pad_to is None else check_int("pad_to", pad_to, minimum=1)

    def __len__(self) -> int:
        return len(self.labels)

    def _load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return fit_geometry(self.images[idx], self.img_size, self.pad_to), self.labels[idx]


def integer_labels(labels: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """``labels`` as an int64 tensor [N]; float, bool, complex or string labels are refused (never truncated).

    Raises:
        ConfigError: the labels are not a 1-D sequence of integers.

    Example:
        >>> integer_labels([0, 2, 1]).dtype
        torch.int64
    """
    try:
        tensor = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ConfigError(f"labels must be integer class indices [N], got {type(labels).__name__} ({err})") from None
    if tensor.ndim != 1 or tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise ConfigError(f"labels must be integer class indices [N], got {tensor.dtype} {list(tensor.shape)}; "
                          "float labels are not truncated: convert them (e.g. labels.long()) only if they are "
                          "whole numbers")
    return tensor.to(torch.int64)


def _folder(folder: str | Path) -> Path:
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise MissingFileError(f"image folder not found: {folder}; expected {folder}/<class>/<image>.png")
    if not folder.is_dir():
        raise ConfigError(f"{folder} is a file, not a folder: give the split folder holding <class>/<image>.png")
    return folder


def image_folder_classes(folder: str | Path) -> tuple[str, ...]:
    """Sorted class-folder names of an ImageFolder split, e.g. ``root/train`` (torchvision's rule, except that
    hidden folders, whose names start with ``"."`` such as ``.ipynb_checkpoints`` or ``.git``, are skipped).

    Raises:
        MissingFileError: the folder does not exist or has no class sub-folders. ConfigError: it is a file.
    """
    folder = _folder(folder)
    classes = tuple(sorted(e.name for e in folder.iterdir() if e.is_dir() and not e.name.startswith(".")))
    if not classes:
        raise MissingFileError(f"{folder} has no class folders; expected {folder}/<class>/<image>.png")
    return classes


def _visible_image(path: str, folder: Path) -> bool:
    """torchvision's extension rule, minus hidden files and anything under a hidden folder (e.g. ``._x.png``)."""
    return has_file_allowed_extension(path, IMG_EXTENSIONS) and not any(
        part.startswith(".") for part in Path(path).relative_to(folder).parts)


class _VisibleImageFolder(ImageFolder):
    """torchvision's ImageFolder with `image_folder_classes` as its class rule (hidden folders are not classes)."""

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes = list(image_folder_classes(directory))
        return classes, {name: i for i, name in enumerate(classes)}


def scan_image_folder(folder: str | Path, class_names: Sequence[str] | None = None) -> list[tuple[str, int]]:
    """List ``(path, label)`` for an ImageFolder tree ``folder/<class>/<image>`` (torchvision's ImageFolder rules:
    files with an image extension, sub-folders walked), skipping hidden folders and files (names starting with
    ``"."``).

    Args:
        folder: the split folder, e.g. ``root/train``.
        class_names: the label order (from the training folder); None uses ``folder``'s own sorted class folders,
            every one of which must hold an image. With `class_names` (a test split) a class may have no images,
            but the split must hold at least one.

    Raises:
        MissingFileError: `folder` does not exist. ConfigError: it is a file. DataError: a class folder in `folder`
            is not among `class_names`, a training class folder holds no image, the split holds none, or an image
            file is a dangling symlink.
    """
    folder = _folder(folder)
    tree = _VisibleImageFolder(str(folder), is_valid_file=lambda path: _visible_image(path, folder), allow_empty=True)
    dangling = [path for path, _ in tree.samples if not os.path.exists(path)]
    if dangling:
        shown = ", ".join(dangling[:3]) + (", ..." if len(dangling) > 3 else "")
        raise DataError(f"{len(dangling)} image file(s) in {folder} are symlinks to nothing ({shown}): restore their "
                        "targets or delete the links (found now, not mid-epoch)")
    if class_names is None:
        empty = sorted(set(tree.classes) - {tree.classes[t] for _, t in tree.samples})
        if empty:
            raise DataError(f"class folder{'s' if len(empty) > 1 else ''} {', '.join(str(folder / c) for c in empty)} "
                            f"hold{'' if len(empty) > 1 else 's'} no image files ({', '.join(IMG_EXTENSIONS)}): add "
                            "images, or remove the folder so it is not a class")
        return list(tree.samples)
    unknown = sorted(set(tree.classes) - set(class_names))
    if unknown:
        raise DataError(f"{folder} has class folders {unknown} that the training folder lacks; "
                         f"training classes: {list(class_names)}")
    if not tree.samples:
        raise DataError(f"{folder} holds no image files ({', '.join(IMG_EXTENSIONS)}) in its class folders: put the "
                        f"evaluation images in {folder}/<class>/<image>.png")
    index = {name: i for i, name in enumerate(class_names)}
    return [(path, index[tree.classes[t]]) for path, t in tree.samples]


def read_image(path: str | Path, mode: str = "RGB") -> torch.Tensor:
    """Read one image file as uint8 ``[C, H, W]`` in PIL ``mode`` ("L": C = 1, "RGB": C = 3) with `pil_to_uint8`:
    16-bit grayscale images are scaled to 8 bits (65535 -> 255), not clipped to white as PIL's conversion does.

    Raises:
        MissingFileError: no such file. DataError: the file is not an image, is truncated or corrupt, or would
            decode to more pixels than PIL allows (a decompression bomb) (names it).

    Example:
        >>> import numpy as np, tempfile, os
        >>> from PIL import Image
        >>> path = os.path.join(tempfile.mkdtemp(), "deep.png")
        >>> Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16)).save(path)
        >>> read_image(path, "L").tolist()
        [[[0, 128, 255]]]
    """
    if mode not in ("L", "RGB"):
        raise ConfigError(f"mode must be 'L' (grey) or 'RGB', got {mode!r}")
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not an image file")
    if not path.is_file():
        raise MissingFileError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return pil_to_uint8(img, mode)
    except DataError as err:
        raise DataError(f"{path}: {err}") from None
    except Image.DecompressionBombError as err:  # a few-KB file that would decode to GBs of pixels
        raise DataError(f"{path} is refused as a decompression bomb ({err}): shrink the image, or raise "
                        "PIL.Image.MAX_IMAGE_PIXELS if you trust it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:  # PIL's errors for broken files
        raise DataError(f"{path} is not a readable image ({type(err).__name__}: {err}); replace or remove the "
                        "file") from None


class ImageFolderDataset(_ImageDataset):
    """Images read from disk per sample with `read_image` (converted to ``mode`` "L" or "RGB", 16-bit images scaled
    to 8 bits), shorter side resized to `img_size`, center-cropped, then normalised like `TensorImageDataset`.
    An unreadable file raises `vitlab.errors.DataError` naming it.

    Args:
        samples: ``(path, label)`` pairs, e.g. from `scan_image_folder`.
        normalize, augment, erase: as in `TensorImageDataset`.
        img_size: output side.
        mode: PIL mode every file is converted to: "L" (1 channel) or "RGB" (3).
    """

    def __init__(self, samples: Sequence[tuple[str, int]], normalize: Normalize, img_size: int, mode: str = "RGB",
                 augment: Augment | None = None, erase: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if mode not in ("L", "RGB"):
            raise ConfigError(f"mode must be 'L' (grey) or 'RGB', got {mode!r}")
        super().__init__(normalize, augment, erase)
        self.samples, self.img_size, self.mode = list(samples), img_size, mode

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        images = [resize_center_crop(read_image(self.samples[i][0], self.mode), self.img_size) for i in indices]
        labels = torch.tensor([self.samples[i][1] for i in indices], dtype=torch.int64)
        return torch.stack(images), labels


class EpochRandomSampler(RandomSampler):
    """Random order drawn from ``torch.Generator`` seeded by ``(seed, epoch)``: the same seed gives the same order,
    and a run resumed at an epoch boundary sees the same order as an uninterrupted one.

    Lightning calls `set_epoch` before every epoch (as for ``DistributedSampler``, which replaces this sampler under
    DDP); without it each new iteration moves to the next epoch by itself.
    """

    def __init__(self, data_source: Sequence, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed, self.epoch, self._epoch_set = check_seed("seed", seed), 0, False

    def set_epoch(self, epoch: int) -> None:
        """Use the order of epoch ``epoch`` (an int >= 0) for the next iteration."""
        self.epoch, self._epoch_set = check_int("epoch", epoch, minimum=0, fix="Lightning passes the epoch index"), True

    def __iter__(self):
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**64)
        if not self._epoch_set:
            self.epoch += 1
        self._epoch_set = False
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()
