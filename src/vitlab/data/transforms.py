"""Image geometry, positive-augmentation presets, normalisation and the inference transform.

Geometry rule (`fit_geometry`, shared by training, evaluation and `vitlab predict`):

1. images already ``img_size`` x ``img_size`` are left alone (so ``img_size=28`` keeps MNIST-family images native);
2. datasets with a ``pad_to`` side (MNIST family: 28 -> 32) are zero-padded symmetrically to it;
3. if the side still differs from ``img_size``, the image is resized (bilinear, antialiased) to ``img_size``.
   Hence MNIST-family images are zero-padded to 32 by default and, for other sizes, padded to 32 then resized.

Augmentation presets (torchvision.transforms.v2, per sample, on uint8 images), in the ImageNet-C-disjoint form of the
negative-augmentation paper: the four ops that overlap ImageNet-C corruptions (brightness, contrast, color,
sharpness) are removed.

- ``none``: no augmentation;
- ``randaugment``: `RandAugmentImageNetCDisjoint` (RandAugment with those four ops removed from its op table);
- ``augmix``: ``v2.AugMix(all_ops=False)``, which already leaves out exactly those four ops.

What is torchvision and what is vitlab's own: every pixel operation is a ``torchvision.transforms.v2`` op
(``pad``, ``resize``, ``center_crop``, ``to_dtype``, ``normalize``, ``rgb_to_grayscale``, RandAugment, AugMix). vitlab
keeps only the thin classes that apply them *once per batch* ([B, C, H, W] tensors, through the datasets'
``__getitems__``) and split normalisation from the channel repeat (random erasing runs between them, on the source
channels): ``benchmarks/bench_data.py`` measured this batched pipeline 17x faster than the per-sample
``v2.Compose`` pipeline on Fashion-MNIST without augmentation (1.6x with RandAugment), with the same tensors.
`pil_to_uint8` exists because PIL's own conversion clips 16-bit images to white.

Example:
    >>> import torch
    >>> fit_geometry(torch.zeros(5, 1, 28, 28, dtype=torch.uint8), img_size=32, pad_to=32).shape
    torch.Size([5, 1, 32, 32])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from vitlab.checks import check_int, check_stats
from vitlab.errors import ConfigError, DataError

__all__ = [
    "AUGMENT_PRESETS", "IMAGENET_C_OPS", "RandAugmentImageNetCDisjoint", "build_augment", "fit_geometry",
    "resize_center_crop", "Normalize", "check_augment_strengths", "check_unit_mean", "EvalTransform",
    "build_eval_transform", "normalize_for", "pil_to_uint8",
]

#: Augmentation preset names accepted by `build_augment` and `build_datamodule(augment=...)`.
AUGMENT_PRESETS: tuple[str, ...] = ("none", "randaugment", "augmix")

#: RandAugment/AugMix ops removed because they overlap ImageNet-C corruptions.
IMAGENET_C_OPS: tuple[str, ...] = ("Brightness", "Color", "Contrast", "Sharpness")


class RandAugmentImageNetCDisjoint(v2.RandAugment):
    """torchvision's v2 RandAugment without the brightness, color, contrast and sharpness ops.

    Input: uint8 tensor [..., 1 or 3, H, W] or PIL image; output: same type and shape.

    Example:
        >>> import torch
        >>> aug = RandAugmentImageNetCDisjoint(num_ops=2, magnitude=9)
        >>> aug(torch.zeros(1, 32, 32, dtype=torch.uint8)).shape
        torch.Size([1, 32, 32])
    """

    _AUGMENTATION_SPACE = {k: v for k, v in v2.RandAugment._AUGMENTATION_SPACE.items() if k not in IMAGENET_C_OPS}


#: RandAugment's magnitude is an index into ``num_magnitude_bins`` = 31 bins: 0..30.
RANDAUGMENT_MAX_MAGNITUDE = 30
#: AugMix's severity range.
AUGMIX_SEVERITY_RANGE = (1, 10)


def check_augment_strengths(randaugment_num_ops: Any = 2, randaugment_magnitude: Any = 9,
                            augmix_severity: Any = 3) -> tuple[int, int, int]:
    """Check the preset strengths (whatever the preset, so a bad value is never silently kept): RandAugment's
    ``num_ops`` >= 0 and ``magnitude`` in 0..30, AugMix's ``severity`` in 1..10; returns them as Python ints.

    Raises:
        ConfigError: a value of the wrong type or out of range, naming the option and the range.
    """
    num_ops = check_int("randaugment_num_ops", randaugment_num_ops, minimum=0,
                        fix="the number of RandAugment ops per image, e.g. 2")
    magnitude = check_int("randaugment_magnitude", randaugment_magnitude, minimum=0,
                          maximum=RANDAUGMENT_MAX_MAGNITUDE, fix="RandAugment's magnitude bin, e.g. 9")
    severity = check_int("augmix_severity", augmix_severity, minimum=AUGMIX_SEVERITY_RANGE[0],
                         maximum=AUGMIX_SEVERITY_RANGE[1], fix="AugMix's severity, e.g. 3")
    return num_ops, magnitude, severity


def build_augment(
    preset: str, *, randaugment_num_ops: int = 2, randaugment_magnitude: int = 9, augmix_severity: int = 3
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The per-sample augmentation for `preset` (one of `AUGMENT_PRESETS`), or None for ``"none"``.

    The returned callable maps uint8 [C, H, W] to uint8 [C, H, W]. The strengths are checked by
    `check_augment_strengths` for every preset.
    """
    if preset not in AUGMENT_PRESETS:
        raise ConfigError(f"unknown augment preset {preset!r}; valid presets: {', '.join(AUGMENT_PRESETS)}")
    randaugment_num_ops, randaugment_magnitude, augmix_severity = check_augment_strengths(
        randaugment_num_ops, randaugment_magnitude, augmix_severity)
    if preset == "randaugment":
        return RandAugmentImageNetCDisjoint(num_ops=randaugment_num_ops, magnitude=randaugment_magnitude)
    if preset == "augmix":
        return v2.AugMix(severity=augmix_severity, all_ops=False)
    return None


def fit_geometry(images: torch.Tensor, img_size: int, pad_to: int | None = None) -> torch.Tensor:
    """Apply the module's geometry rule to uint8 images [..., C, H, W] -> [..., C, img_size, img_size]."""
    img_size = check_int("img_size", img_size, minimum=1)
    if not isinstance(images, torch.Tensor) or images.ndim < 3 or 0 in images.shape[-2:]:
        raise DataError(f"expected images as a tensor [..., C, H, W] with H, W >= 1, got "
                        f"{type(images).__name__} {list(getattr(images, 'shape', []))}")
    h, w = images.shape[-2:]
    if (h, w) == (img_size, img_size):
        return images
    if pad_to is not None and h <= pad_to and w <= pad_to:
        top, left = (pad_to - h) // 2, (pad_to - w) // 2
        images = TF.pad(images, [left, top, pad_to - w - left, pad_to - h - top], fill=0)
    if tuple(images.shape[-2:]) != (img_size, img_size):
        images = TF.resize(images, [img_size, img_size], antialias=True)
    return images


def resize_center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side of uint8 [..., C, H, W] to `size` (antialiased), then center-crop to size x size."""
    if tuple(image.shape[-2:]) != (size, size):
        image = TF.center_crop(TF.resize(image, size, antialias=True), [size, size])
    return image


def check_unit_mean(mean: Sequence[float], std: object = None) -> Sequence[float]:
    """``mean`` if every value is in [0, 1] (the scale of ``x / 255`` that `Normalize` subtracts it from); else a
    `vitlab.errors.ConfigError` naming the fix (statistics on the 0-255 scale, as mmcv writes them, divided by 255).

    Example:
        >>> check_unit_mean([0.485, 0.456, 0.406])
        [0.485, 0.456, 0.406]
    """
    if any(not 0.0 <= float(m) <= 1.0 for m in mean):
        scaled = [round(float(m) / 255, 4) for m in mean]
        hint = (f" and std {[round(float(v) / 255, 4) for v in std]}" if isinstance(std, Sequence)
                and all(isinstance(v, (int, float)) for v in std) else "")
        raise ConfigError(f"mean must hold values in [0, 1] (images are scaled to x / 255 before normalising), got "
                          f"{list(mean)}: statistics on the 0-255 scale must be divided by 255, e.g. mean {scaled}"
                          f"{hint}")
    return mean


class Normalize:
    """uint8 images [B, C, H, W] -> float32 ((x / 255 - mean) / std), channels repeated to `out_chans`.

    Args:
        mean: per-channel mean of the C source channels, in [0, 1], or of the ``out_chans`` channels (grey images
            are then repeated before normalising: an RGB model's statistics applied to grey data).
        std: per-channel standard deviation, as many values as ``mean``.
        out_chans: channels the model wants: C, or 3 when C == 1 (the grey channel is repeated).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], out_chans: int) -> None:
        mean, std = check_unit_mean(check_stats("mean", mean), std), check_stats("std", std, positive=True)
        if len(mean) != len(std):
            raise ConfigError(f"mean {list(mean)} and std {list(std)} need equal lengths (one value per channel)")
        if out_chans != len(mean) and not (len(mean) == 1 and out_chans == 3):
            raise ConfigError(f"cannot turn {len(mean)}-channel images into {out_chans} channels; "
                             "only 1 -> 3 (repeat) is supported")
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self.out_chans = out_chans

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.repeat(self.scale(images))

    def scale(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, C, H, W] -> float32 (x / 255 - mean) / std, still C channels (torchvision v2 ``to_dtype`` +
        ``normalize``, one call for the whole batch)."""
        if images.dtype != torch.uint8:
            raise TypeError(f"Normalize expects uint8 images, got {images.dtype}: convert float images in [0, 1] with "
                            "(x * 255).round().to(torch.uint8)")
        if images.shape[-3] not in (1, len(self.mean)):
            raise ConfigError(f"images have {images.shape[-3]} channels but mean/std have {len(self.mean)} values: "
                              "give one mean/std value per image channel")
        if images.shape[-3] == 1 and len(self.mean) > 1:  # grey data, per-channel statistics of RGB weights
            images = images.expand(*images.shape[:-3], len(self.mean), *images.shape[-2:])
        return TF.normalize(TF.to_dtype(images, torch.float32, scale=True), self.mean, self.std, inplace=True)

    def repeat(self, x: torch.Tensor) -> torch.Tensor:
        """Repeat a 1-channel float batch [B, 1, H, W] to [B, out_chans, H, W] (no-op when channels match)."""
        if x.shape[-3] == self.out_chans:
            return x
        return x.expand(*x.shape[:-3], self.out_chans, *x.shape[-2:]).contiguous()


def normalize_for(data_config: dict[str, Any]) -> Normalize:
    """The ``Normalize`` of a run's recorded data config (``in_chans``, ``source_chans``, ``mean``, ``std``).

    The recorded statistics have one value per model channel. When they repeat one value (grey data repeated to RGB
    with the dataset's statistics) the source channels are normalised, then repeated; per-channel statistics (an RGB
    backbone's on grey data) are applied after repeating.

    Example:
        >>> normalize_for({"in_chans": 3, "source_chans": 1, "mean": [0.5] * 3, "std": [0.5] * 3}).mean
        [0.5]
    """
    mean, std = list(data_config["mean"]), list(data_config["std"])
    source = int(data_config.get("source_chans") or data_config["in_chans"])
    uniform = len(set(mean)) == 1 and len(set(std)) == 1
    return Normalize(mean[:source] if uniform else mean, std[:source] if uniform else std,
                     int(data_config["in_chans"]))


class EvalTransform:
    """Turn one image into the model's normalised float tensor [in_chans, img_size, img_size].

    Accepts a PIL image, a uint8 numpy array [H, W] or [H, W, C], or a uint8 tensor [C, H, W]; uint16 arrays and
    tensors (16-bit images as ``cv2.imread(path, cv2.IMREAD_UNCHANGED)`` reads them) are scaled to 8 bits as 16-bit
    PNG files are, ``round(v * 255 / 65535)`` (see `pil_to_uint8`). Steps:
    convert to the dataset's source channels (RGB -> grey by luma, grey -> RGB by repeat, alpha dropped);
    when the dataset has a native size and the image differs, resize its shorter side to it and center-crop
    (datasets without one: straight to ``img_size`` that way); apply `fit_geometry`; normalise; repeat
    channels up to ``in_chans``.

    Args:
        data_config: the dict from ``VitlabDataModule.data_config()`` (keys ``img_size``, ``in_chans``, ``mean``,
            ``std``; optional ``source_chans``, ``native_size``, ``pad_to``).
    """

    def __init__(self, data_config: dict[str, Any]) -> None:
        fix = "build it with VitlabDataModule.data_config() (a checkpoint records it)"
        if not isinstance(data_config, Mapping):
            raise ConfigError(f"data_config must be a dict, got {type(data_config).__name__}: {fix}")
        missing = [k for k in ("img_size", "in_chans", "mean", "std") if k not in data_config]
        if missing:
            raise ConfigError(f"data_config lacks {missing}; {fix}")
        self.img_size = check_int("data_config img_size", data_config["img_size"], minimum=1, fix=fix)
        self.in_chans = check_int("data_config in_chans", data_config["in_chans"], minimum=1, fix=fix)
        source = data_config.get("source_chans")
        self.source_chans = self.in_chans if not source else check_int("data_config source_chans", source, minimum=1)
        if self.source_chans not in (1, 3):
            raise ConfigError(f"data_config source_chans must be 1 or 3, got {self.source_chans}: {fix}")
        native, pad = data_config.get("native_size"), data_config.get("pad_to")
        self.native_size = None if native is None else check_int("data_config native_size", native, minimum=1)
        self.pad_to = None if pad is None else check_int("data_config pad_to", pad, minimum=1)
        mean, std = check_stats("data_config mean", data_config["mean"]), check_stats(
            "data_config std", data_config["std"], positive=True)
        if len(mean) != self.in_chans or len(std) != self.in_chans:
            raise ConfigError(f"data_config mean/std must have in_chans={self.in_chans} entries, got {list(mean)} / "
                              f"{list(std)}: {fix}")
        self.normalize = normalize_for(data_config)

    def _to_tensor(self, image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
        layouts = "a PIL image, a uint8 array [H, W] or [H, W, C], or a uint8 tensor [C, H, W] (C = 1..4)"
        given = image
        if isinstance(image, (str, Path)):
            raise TypeError(f"got the path {str(image)!r}, not an image: open it first, e.g. PIL.Image.open(path); "
                            f"expected {layouts}")
        if isinstance(image, Image.Image):
            if 0 in image.size:
                raise DataError(f"the image is empty ({image.size[0]}x{image.size[1]} pixels); expected {layouts}")
            return pil_to_uint8(image, "L" if self.source_chans == 1 else "RGB")
        if isinstance(image, np.ndarray):
            if image.ndim not in (2, 3):
                raise DataError(f"expected an array [H, W] or [H, W, C], got shape {list(image.shape)}; "
                                f"expected {layouts}")
            if image.ndim == 3 and image.shape[2] not in (1, 2, 3, 4):
                raise DataError(f"an array [H, W, C] needs C = 1..4 channels (grey, grey+alpha, RGB, RGBA), got "
                                f"shape {list(image.shape)}; expected {layouts}")
            image = torch.from_numpy(np.ascontiguousarray(image))
            image = image.unsqueeze(0) if image.ndim == 2 else image.permute(2, 0, 1)
        if isinstance(image, torch.Tensor) and image.dtype == torch.uint16:  # 16-bit: scaled as a 16-bit PNG
            image = ((image.to(torch.int64) * 255 + 32767) // 65535).to(torch.uint8)
        if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.ndim != 3:
            convert = ("(x * 255).round().to(torch.uint8)" if isinstance(given, torch.Tensor)
                       else "(x * 255).round().astype('uint8')")
            fixes = [] if getattr(image, "dtype", None) == torch.uint8 else [
                f"convert float images in [0, 1] with {convert}"]
            if isinstance(image, torch.Tensor) and image.ndim == 4:
                fixes.insert(0, "it takes one image at a time: transform a batch image by image, e.g. "
                             "torch.stack([transform(x) for x in batch])")
            elif isinstance(image, torch.Tensor) and image.ndim == 2:
                fixes.insert(0, "give a grey [H, W] tensor its channel axis: image.unsqueeze(0)")
            if not isinstance(image, torch.Tensor):
                fixes = [f"a {type(given).__name__} is no image: pass one of those"]
            fix = "; ".join(fixes) or f"convert float images in [0, 1] with {convert}"
            raise TypeError(f"expected {layouts}, got {type(given).__name__} {getattr(given, 'dtype', '')} "
                            f"{list(getattr(given, 'shape', []))}; {fix}")
        if image.shape[0] not in (1, 2, 3, 4):
            hint = (" It looks channels-last [H, W, C]: use image.permute(2, 0, 1)."
                    if image.shape[-1] in (1, 3, 4) else "")
            raise DataError(f"a tensor image must be [C, H, W] with C = 1..4 channels, got shape "
                            f"{list(image.shape)}.{hint} Expected {layouts}")
        if 0 in image.shape[-2:]:
            raise DataError(f"the image is empty ({image.shape[-1]}x{image.shape[-2]} pixels); expected {layouts}")
        if image.shape[0] in (2, 4):  # grey+alpha or RGBA: drop alpha
            image = image[:-1]
        if image.shape[0] == 3 and self.source_chans == 1:
            image = TF.rgb_to_grayscale(image)
        elif image.shape[0] == 1 and self.source_chans == 3:
            image = image.expand(3, -1, -1)
        return image

    def __call__(self, image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
        x = self._to_tensor(image)
        if self.native_size is None:
            x = resize_center_crop(x, self.img_size)
        else:
            x = fit_geometry(resize_center_crop(x, int(self.native_size)), self.img_size, self.pad_to)
        return self.normalize(x.unsqueeze(0))[0]


def build_eval_transform(data_config: dict[str, Any]) -> EvalTransform:
    """The inference transform for a model trained with `data_config` (see `EvalTransform`).

    Example:
        >>> import numpy as np
        >>> cfg = {"img_size": 32, "in_chans": 3, "mean": [0.286] * 3, "std": [0.353] * 3, "source_chans": 1,
        ...        "native_size": 28, "pad_to": 32}
        >>> build_eval_transform(cfg)(np.zeros((28, 28), dtype=np.uint8)).shape
        torch.Size([3, 32, 32])
    """
    return EvalTransform(data_config)


#: PIL modes of 16-bit greyscale images (PNG); ``"I"`` is also 16-bit when the file is a PNG.
SIXTEEN_BIT_MODES: tuple[str, ...] = ("I;16", "I;16B", "I;16L", "I;16N")


def pil_to_uint8(image: Image.Image, mode: str) -> torch.Tensor:
    """A PIL image as a uint8 tensor [C, H, W] in ``mode`` (``"L"``: C = 1, ``"RGB"``: C = 3), upright.

    An EXIF orientation tag (phone and camera photos) is applied, as image viewers do (``ImageOps.exif_transpose``):
    the pixels of such a photo are stored sideways. 8-bit images go through PIL's ``convert``. 16-bit greyscale
    images (PNG) are scaled to 8 bits, ``round(v * 255 / 65535)``, where ``convert`` would clip every value above 255
    to white. 32-bit integer or float images have no fixed range and are refused with `vitlab.errors.DataError`.

    Example:
        >>> import numpy as np
        >>> sixteen = Image.fromarray(np.array([[0, 257 * 128, 65535]], dtype=np.uint16))
        >>> pil_to_uint8(sixteen, "L").tolist()
        [[[0, 128, 255]]]
    """
    if mode not in ("L", "RGB"):
        raise ConfigError(f"mode must be 'L' or 'RGB', got {mode!r}")
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        image = ImageOps.exif_transpose(image)  # a transposed copy; the caller's image is left as it is
    if image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and image.format == "PNG"):
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise DataError(f"a 16-bit image holds values outside 0..65535 ({values.min()}..{values.max()})")
        grey = torch.from_numpy(((values * 255 + 32767) // 65535).astype(np.uint8)).unsqueeze(0)
        return grey.expand(3, -1, -1).contiguous() if mode == "RGB" else grey
    if image.mode in ("I", "F"):
        raise DataError(f"{image.mode!r}-mode images (32-bit integer or float pixels) have no fixed value range: "
                        "save the image as 8- or 16-bit")
    return TF.pil_to_tensor(image.convert(mode))
