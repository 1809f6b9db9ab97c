"""`build_datamodule` / `VitlabDataModule`: one LightningDataModule for every dataset vitlab knows.

Example:
    >>> from vitlab.data import build_datamodule
    >>> dm = build_datamodule("digits", img_size=32, in_chans=3, batch_size=64)
    >>> dm.prepare_data(); dm.setup("fit")
    >>> x, y = next(iter(dm.train_dataloader()))
    >>> x.shape, x.dtype, y.dtype, dm.num_classes
    (torch.Size([64, 3, 32, 32]), torch.float32, torch.int64, 10)
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup
from timm.data.random_erasing import RandomErasing
from torch.utils.data import DataLoader

from vitlab.checks import (
    MAX_SEED,
    check_bool,
    check_float,
    check_int,
    check_optional_int,
    check_path,
    check_seed,
    check_stats,
)
from vitlab.errors import ConfigError

from .datasets import (
    EpochRandomSampler,
    ImageFolderDataset,
    TensorImageDataset,
    image_folder_classes,
    scan_image_folder,
)
from .install import install_dataset, is_installed
from .loading import LoadedData, channel_stats, load_in_memory, resolve_idx_files, resolve_image_folder
from .registry import check_name, get_spec
from .transforms import AUGMENT_PRESETS, Normalize, build_augment, check_augment_strengths, check_unit_mean

__all__ = ["VitlabDataModule", "build_datamodule", "check_few_shot", "few_shot_indices"]


def few_shot_indices(labels: Sequence[int] | torch.Tensor, k: int, seed: int,
                     num_classes: int | None = None) -> torch.Tensor:
    """Indices of ``k`` examples per class, drawn with a seeded generator (global RNG untouched), sorted.

    Every class ``0 .. num_classes - 1`` must have at least ``k`` examples: a class with fewer (or none, e.g. after
    ``limit_train`` kept only some classes) is an error naming it, never silently left out.

    Args:
        labels: ``[N]`` integer class labels of the training set (a tensor, array or list of ints).
        k: examples per class (an int >= 1; NumPy integers are accepted).
        seed: subset seed, an int in ``0 .. 2**63 - 1``.
        num_classes: the dataset's class count; None takes ``max(labels) + 1`` (so a gap, e.g. labels 0, 1, 3 with
            no 2, is still an error).

    Returns:
        ``[k * num_classes]`` int64 indices into ``labels``.

    Raises:
        ConfigError: bad ``k``/``seed``/``labels``, or a class with fewer than ``k`` examples (the message names
            the classes and the fix).

    Example:
        >>> few_shot_indices([0, 1, 0, 1, 0, 1], k=2, seed=0).tolist()
        [0, 3, 4, 5]
    """
    try:
        labels = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ConfigError(f"labels must be a 1-D sequence of integer class labels, got {type(labels).__name__} "
                          f"({err})") from None
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ConfigError(f"labels must be a 1-D integer tensor, got shape {tuple(labels.shape)} {labels.dtype}")
    if labels.numel() == 0:
        raise ConfigError("labels is empty: few-shot needs the training labels (no training images were left?)")
    if int(labels.min()) < 0:
        raise ConfigError(f"labels must be class indices >= 0, got {int(labels.min())}")
    k = check_int("k", k, minimum=1, fix="the number of examples per class")
    seed = check_seed("seed", seed)
    top = int(labels.max()) + 1
    if num_classes is None:
        num_classes = top
    num_classes = check_int("num_classes", num_classes, minimum=1)
    if top > num_classes:
        raise ConfigError(f"label {top - 1} is outside the {num_classes} classes [0, {num_classes - 1}]")
    counts = torch.bincount(labels.to(torch.int64), minlength=num_classes)
    short = torch.nonzero(counts < k).flatten().tolist()
    if short:
        fix = "use a smaller k (shots), or more training images (no limit_train, a smaller val_fraction)"
        if k == 1 or all(counts[c] == 0 for c in short):
            which = ", ".join(map(str, short[:20])) + (", ..." if len(short) > 20 else "")
            raise ConfigError(f"few-shot needs k={k} examples of each of the {num_classes} classes, but "
                              f"class{'es' if len(short) > 1 else ''} {which} "
                              f"{'have' if len(short) > 1 else 'has'} none (0 examples); {fix}")
        detail = ", ".join(f"class {c} has {int(counts[c])}" for c in short[:20]) + (", ..." if len(short) > 20 else "")
        raise ConfigError(f"few-shot needs k={k} examples of each of the {num_classes} classes, but {detail}, "
                          f"fewer than k={k}; {fix}")
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for cls in range(num_classes):
        members = torch.nonzero(labels == cls).flatten()
        picked.append(members[torch.randperm(len(members), generator=generator)[:k]])
    return torch.sort(torch.cat(picked)).values


def check_few_shot(few_shot: Mapping[str, Any] | None) -> dict[str, int] | None:
    """Validate a ``few_shot`` option: ``None`` (every training image) or ``{"shots": K >= 1, "seed": S >= 0}``.

    Example:
        >>> check_few_shot({"shots": 5, "seed": 1})
        {'shots': 5, 'seed': 1}
    """
    if few_shot is None:
        return None
    fix = "give data.options.few_shot as {shots: K, seed: S} (K >= 1 images per class, S >= 0), or leave it out"
    if not isinstance(few_shot, Mapping) or set(few_shot) != {"shots", "seed"}:
        raise ConfigError(f"few_shot must be a mapping with exactly the keys shots and seed, got {few_shot!r}: {fix}")
    shots = check_int("few_shot.shots", few_shot["shots"], minimum=1, fix=fix)
    seed = check_int("few_shot.seed", few_shot["seed"], minimum=0, maximum=MAX_SEED, fix=fix)
    return {"shots": shots, "seed": seed}


@dataclasses.dataclass(frozen=True)
class _Meta:
    source_chans: int
    native_size: int | None
    pad_to: int | None
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


class VitlabDataModule(L.LightningDataModule):
    """Train / validation / test loaders for one dataset, yielding ``(float32 [B, C, H, W], int64 [B])``.

    Rules:
        * Splits: validation is carved from the official training set (``val_fraction``, default 0.1) by a random
          permutation drawn from ``torch.Generator().manual_seed(seed)``; ``limit_train`` keeps the first N of the
          remaining training indices; ``few_shot={"shots": K, "seed": S}`` then keeps K images per class of those
          (`few_shot_indices`, drawn from ``torch.Generator().manual_seed(S)``, the same subset for the same S); a
          class of the dataset with fewer than K images there (e.g. left out by ``limit_train``) is an error, never
          dropped. Test is the official test set in file order (digits: last 360 images; imagefolder:
          ``root/test``, else ``root/val``).
        * ImageFolder: class folders are the visible sub-folders of ``root/train`` (names starting with ``.``, e.g.
          ``.ipynb_checkpoints``, are skipped, as are hidden files); every training class folder must hold an image
          and the test folder at least one (else `vitlab.errors.DataError` naming the folder).
        * Geometry: images already ``img_size`` are unchanged; MNIST-family 28-px images (also 28-px ``idx`` files)
          are zero-padded to 32 (not resized), then resized (bilinear, antialiased) if ``img_size`` != 32; other
          datasets are resized to ``img_size``; imagefolder files: shorter side resized to ``img_size``, center crop.
          ``idx`` test images must have the training images' size and channels (else an error: the rule above
          would scale the two splits differently).
        * Options are checked when the module is built (`vitlab.errors.ConfigError` naming the option and the
          range), not in ``setup()`` or DataLoader workers; integer options take Python or NumPy integers, never
          bools or floats.
        * Channels: ``in_chans=None`` keeps the data's channels; grayscale data repeats its channel when
          ``in_chans=3``; 3-channel data with ``in_chans=1`` is an error (build the model with ``in_chans=3``),
          except imagefolder, whose files are converted to "L" (``in_chans=1``) or "RGB" (default).
        * Normalisation: ``(x / 255 - mean) / std`` per channel with the per-dataset constants listed in
          `vitlab.data.registry` (imagefolder: ImageNet mean/std, or 0.5/0.5 for grey; idx: computed from the
          training images); ``mean``/``std`` override them.
        * Hyper-parameters: the options are in ``hparams`` and in Trainer checkpoints, but are not sent to loggers
          (Lightning refuses to merge them with a `ClassificationTask`'s ``img_size`` / ``in_chans`` when the two
          differ, e.g. the data's ``in_chans=None`` and the model's 1).
        * Installation: with ``root=None``, `prepare_data` installs missing data into vitlab's cache (progress shown);
          with ``root=PATH`` nothing is installed and missing files raise an error naming the fix.
        * Augmentation (training only): ``augment`` preset per sample (see `vitlab.data.transforms`), then
          ``random_erasing`` (timm RandomErasing, pixel mode, probability p) on the normalised image; ``mixup`` /
          ``cutmix`` alphas > 0 enable timm's Mixup in `on_after_batch_transfer` while training, which turns labels
          into soft float targets [B, num_classes] (no label smoothing there; the training loss applies it) and needs
          an even ``batch_size`` (the last incomplete training batch is dropped).

    Args:
        name: one of `vitlab.data.DATASET_NAMES`.
        root: your own data folder (see rules), or None for vitlab's cache.
        img_size: output side in pixels.
        in_chans: channels the model takes (1 or 3), or None for the data's own.
        batch_size: training batch size. eval_batch_size: validation/test batch size (default: batch_size).
        val_fraction: share of the training set held out for validation, in [0, 1).
        augment: ``"none"`` (or None), ``"randaugment"`` or ``"augmix"``.
        seed: seed of the validation split and of the training order (epoch ``e`` uses ``(seed, e)``), an int in
            ``0 .. 2**63 - 1``.
        num_workers: DataLoader worker processes. pin_memory: DataLoader pin_memory.
        persistent_workers: keep the worker processes alive between epochs; None (default): whenever
            ``num_workers > 0``; True needs ``num_workers > 0``.
        mixup, cutmix: timm Mixup ``mixup_alpha`` / ``cutmix_alpha`` (0 disables).
        random_erasing: probability of timm's RandomErasing per training image (0 disables).
        limit_train: keep at most this many training images (after the validation split), or None.
        few_shot: ``{"shots": K, "seed": S}``: train on K images per class of the training split (after the
            validation split and ``limit_train``), or None for all; e.g. ``few_shot={"shots": 5, "seed": 0}``
            (in a run config: ``data: {options: {few_shot: {shots: 5, seed: 0}}}``).
        cache_dir: vitlab's cache root when ``root`` is None (default ``$VITLAB_DATA`` or ``~/.cache/vitlab``).
        train_images, train_labels, test_images, test_labels: ``idx`` only; IDX file paths (relative to ``root``
            when given). Unset ones default to the MNIST names ``train-images-idx3-ubyte[.gz]`` etc. in ``root``.
        mean, std: per-channel normalisation override: one value per data channel, or per model input channel
            (``in_chans``; grey data is then repeated before normalising, e.g. an RGB backbone's statistics).
        randaugment_num_ops, randaugment_magnitude, augmix_severity: preset strengths.
    """

    def __init__(
        self, name: str, root: str | Path | None = None, img_size: int = 32, in_chans: int | None = None,
        batch_size: int = 128, val_fraction: float = 0.1, augment: str = "none", seed: int = 0, num_workers: int = 0,
        mixup: float = 0.0, cutmix: float = 0.0, random_erasing: float = 0.0, limit_train: int | None = None,
        eval_batch_size: int | None = None, cache_dir: str | Path | None = None, train_images: str | None = None,
        train_labels: str | None = None, test_images: str | None = None, test_labels: str | None = None,
        mean: Sequence[float] | None = None, std: Sequence[float] | None = None, randaugment_num_ops: int = 2,
        randaugment_magnitude: int = 9, augmix_severity: int = 3, pin_memory: bool = False,
        few_shot: Mapping[str, int] | None = None, persistent_workers: bool | None = None,
    ) -> None:
        super().__init__()
        self.spec = get_spec(check_name(name))
        # every option is checked here, at construction (not in setup() or inside DataLoader workers); the checked
        # values are plain Python ints/floats/strs, so save_hyperparameters() below records those
        root, cache_dir = check_path("root", root), check_path("cache_dir", cache_dir)
        root = None if root is None else str(Path(root).expanduser())
        _check(root is None or not Path(root).is_file(), f"root={root!r} is a file, not a folder: pass the folder "
               "that holds the data (unpack an archive first, e.g. tar xzf FILE -C FOLDER)")
        img_size = check_int("img_size", img_size, minimum=4)
        _check(img_size * img_size <= Image.MAX_IMAGE_PIXELS, f"img_size={img_size} makes {img_size}x{img_size} "
               f"images, above PIL's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels (side <= "
               f"{math.isqrt(Image.MAX_IMAGE_PIXELS)}); use the model's input size, e.g. 32 or 224 (raise "
               "PIL.Image.MAX_IMAGE_PIXELS only if you really mean it)")
        if in_chans is not None:
            in_chans = check_int("in_chans", in_chans, minimum=1, fix="None (the data's channels), 1 or 3")
        _check(in_chans in (None, 1, 3), f"in_chans must be None, 1 or 3, got {in_chans!r}")
        batch_size = check_int("batch_size", batch_size, minimum=1)
        eval_batch_size = check_optional_int("eval_batch_size", eval_batch_size, minimum=1,
                                             fix="leave it out to use batch_size")
        val_fraction = check_float("val_fraction", val_fraction, minimum=0.0, maximum=1.0, below_maximum=True,
                                   fix="the share of the training set held out for validation (1 would leave no "
                                   "training image; 0 disables validation)")
        if augment is None:  # torchvision's "no transform"
            augment = "none"
        _check(isinstance(augment, str), f"augment takes a preset name ({', '.join(AUGMENT_PRESETS)}), got a "
               f"{type(augment).__name__}: for your own per-sample transform (uint8 [C, H, W] -> uint8, same shape, "
               "e.g. a size-keeping v2.Compose), set datamodule.train_dataset.augment = transform after setup()")
        _check(augment in AUGMENT_PRESETS, f"unknown augment {augment!r}; valid presets: {', '.join(AUGMENT_PRESETS)}")
        seed = check_seed("seed", seed)
        num_workers = check_int("num_workers", num_workers, minimum=0, fix="0 loads in the main process")
        mixup = check_float("mixup", mixup, minimum=0.0, fix="a Beta alpha >= 0 (0 disables)")
        cutmix = check_float("cutmix", cutmix, minimum=0.0, fix="a Beta alpha >= 0 (0 disables)")
        _check(not (mixup or cutmix) or batch_size % 2 == 0, f"mixup/cutmix need an even batch_size, got {batch_size}")
        random_erasing = check_float("random_erasing", random_erasing, minimum=0.0, maximum=1.0,
                                     fix="random_erasing is a probability (0 disables)")
        limit_train = check_optional_int("limit_train", limit_train, minimum=1,
                                         fix="leave it out to keep every training image")
        pin_memory = check_bool("pin_memory", pin_memory)
        if persistent_workers is not None:
            persistent_workers = check_bool("persistent_workers", persistent_workers)
            _check(not persistent_workers or num_workers > 0, "persistent_workers=True keeps worker processes alive, "
                   "but num_workers=0 starts none: set num_workers >= 1, or leave persistent_workers unset")
        if mean is not None:
            mean = list(check_unit_mean(check_stats("mean", mean), std))
        if std is not None:
            std = list(check_stats("std", std, positive=True))
        randaugment_num_ops, randaugment_magnitude, augmix_severity = check_augment_strengths(
            randaugment_num_ops, randaugment_magnitude, augmix_severity)
        few_shot = check_few_shot(few_shot)
        train_images, train_labels, test_images, test_labels = (
            None if p is None else str(p) for p in (train_images, train_labels, test_images, test_labels)
        )  # str, not Path: hyper-parameters must load with torch.load(weights_only=True)
        idx_files = dict(train_images=train_images, train_labels=train_labels, test_images=test_images,
                         test_labels=test_labels)
        _check(name == "idx" or all(v is None for v in idx_files.values()),
               "train_images/train_labels/test_images/test_labels apply to name='idx' only")
        _check((mean is None) == (std is None), "give both mean and std, or neither")
        if name == "imagefolder" and root is None:
            resolve_image_folder(root)  # the error showing the folder layout to pass as root
        if name == "idx" and root is None and None in idx_files.values():
            resolve_idx_files(root, idx_files)  # names each file with no path and no root to find it in
        # kept in checkpoints, not sent to loggers: Lightning refuses to merge them with a task's own (a task built
        # from a timm name records img_size / in_chans as the model's, e.g. in_chans 1 where the data's is None)
        self.save_hyperparameters(logger=False)
        self.name, self.root, self.cache_dir, self.idx_files = name, root, cache_dir, idx_files
        self.img_size, self.batch_size, self.seed = img_size, batch_size, seed
        self._in_chans, self._meta, self._data = in_chans, None, None
        self._augment = build_augment(augment, randaugment_num_ops=randaugment_num_ops,  # checks the strengths
                                      randaugment_magnitude=randaugment_magnitude, augmix_severity=augmix_severity)
        self.train_dataset = self.val_dataset = self.test_dataset = None
        self.mixup_fn: Mixup | None = None
        if self.spec.channels is not None:  # known without reading files: refuse a misfit now, not in setup()
            self._check_channels(self.spec.channels)

    # ---- metadata (available before setup; idx/cifar100/imagefolder read their files on first use) ----
    def _load(self) -> LoadedData:
        if self._data is None:
            self._data = load_in_memory(self.name, self.root, self.cache_dir, self.idx_files)
        return self._data

    def _resolve(self) -> _Meta:
        if self._meta is not None:
            return self._meta
        spec, hp = self.spec, self.hparams
        if self.name == "imagefolder":
            class_names = image_folder_classes(resolve_image_folder(self.root)[0])
            chans = self._in_chans or 3
            mean, std = (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD) if chans == 3 else ((0.5,), (0.5,))
            meta = _Meta(chans, None, None, len(class_names), class_names, tuple(mean), tuple(std))
        elif self.name == "idx":
            data = self._load()
            images = data.train.images
            side = images.shape[-1] if images.shape[-2] == images.shape[-1] else None
            mean, std = channel_stats(images)
            meta = _Meta(images.shape[1], side, 32 if side == 28 else None, len(data.class_names), data.class_names,
                         mean, std)
        else:
            class_names = spec.class_names or self._load().class_names
            meta = _Meta(spec.channels, spec.native_size, spec.pad_to, spec.num_classes, class_names, spec.mean,
                         spec.std)
        self._check_channels(meta.source_chans)
        if hp.mean is not None:
            meta = dataclasses.replace(meta, mean=tuple(hp.mean), std=tuple(hp.std))
        self._meta = meta
        return meta

    def _check_channels(self, source_chans: int) -> None:
        """Refuse ``in_chans`` / ``mean`` / ``std`` that do not fit data with ``source_chans`` channels."""
        hp = self.hparams
        if hp.mean is not None:
            counts = {source_chans, self._in_chans or source_chans}
            _check(len(hp.mean) == len(hp.std) and len(hp.mean) in counts,
                   f"mean/std need one value per data channel ({source_chans}) or per model input channel "
                   f"({self._in_chans or source_chans}), got {hp.mean} / {hp.std}")
        if self._in_chans == 1 and source_chans == 3:
            raise ConfigError(f"{self.name} images have 3 channels but in_chans=1 was requested; build the model with "
                              "in_chans=3 (or leave in_chans=None)")

    @property
    def in_chans(self) -> int:
        """Channels of the images the loaders yield."""
        return self._in_chans or self._resolve().source_chans

    @property
    def num_classes(self) -> int:
        """Number of classes (labels are 0 .. num_classes - 1)."""
        return self._resolve().num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names in label order."""
        return self._resolve().class_names

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel normalisation mean of the yielded images (``in_chans`` values)."""
        meta = self._resolve()
        return meta.mean * (self.in_chans // len(meta.mean))

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel normalisation std of the yielded images (``in_chans`` values)."""
        meta = self._resolve()
        return meta.std * (self.in_chans // len(meta.std))

    def data_config(self) -> dict[str, Any]:
        """JSON-able description for checkpoints and `build_eval_transform`.

        Keys: name, img_size, in_chans, mean, std, num_classes, class_names, source_chans, native_size, pad_to.
        """
        meta = self._resolve()
        return {"name": self.name, "img_size": self.img_size, "in_chans": self.in_chans, "mean": list(self.mean),
                "std": list(self.std), "num_classes": meta.num_classes, "class_names": list(meta.class_names),
                "source_chans": meta.source_chans, "native_size": meta.native_size, "pad_to": meta.pad_to}

    # ---- Lightning hooks ----
    def prepare_data(self) -> None:
        """Install missing data into vitlab's cache when ``root`` is None (never writes into a user's root)."""
        if self.root is None and self.spec.installable and not is_installed(self.name, self.cache_dir):
            install_dataset(self.name, self.cache_dir, progress=True)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        meta, hp = self._resolve(), self.hparams
        normalize = Normalize(meta.mean, meta.std, self.in_chans)
        erase = RandomErasing(hp.random_erasing, mode="pixel", device="cpu") if hp.random_erasing > 0 else None
        if self.name == "imagefolder":
            train_dir, test_dir = resolve_image_folder(self.root)
            samples = scan_image_folder(train_dir)
            test_samples = scan_image_folder(test_dir, meta.class_names)
            train_idx, val_idx = self._split(len(samples))
            train_idx = self._few_shot(train_idx, torch.tensor([label for _, label in samples]))
            mode = "RGB" if meta.source_chans == 3 else "L"

            def make(items, **kw):
                return ImageFolderDataset(items, normalize, self.img_size, mode, **kw)

            self.train_dataset = make([samples[i] for i in train_idx], augment=self._augment, erase=erase)
            self.val_dataset = make([samples[i] for i in val_idx])
            self.test_dataset = make(test_samples)
        else:
            data = self._load()
            train_idx, val_idx = self._split(len(data.train.labels))
            train_idx = self._few_shot(train_idx, torch.as_tensor(data.train.labels))

            def make(images, labels, **kw):
                return TensorImageDataset(images, labels, normalize, self.img_size, meta.pad_to, **kw)

            self.train_dataset = make(data.train.images[train_idx], data.train.labels[train_idx],
                                      augment=self._augment, erase=erase)
            self.val_dataset = make(data.train.images[val_idx], data.train.labels[val_idx])
            self.test_dataset = make(data.test.images, data.test.labels)
        if hp.mixup > 0 or hp.cutmix > 0:
            _check(len(self.train_dataset) >= self.batch_size, f"mixup/cutmix drop the last incomplete batch, but "
                   f"the {len(self.train_dataset)} training images fill none of batch_size={self.batch_size}")
            self.mixup_fn = Mixup(mixup_alpha=hp.mixup, cutmix_alpha=hp.cutmix, label_smoothing=0.0,
                                  num_classes=meta.num_classes)

    def _split(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sorted (train, val) index tensors: a seeded permutation, the first ``round(n * val_fraction)`` to val."""
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        n_val = int(round(n * self.hparams.val_fraction))
        if n_val == 0 and self.hparams.val_fraction > 0:
            warnings.warn(f"val_fraction={self.hparams.val_fraction} of {n} training images rounds to 0 validation "
                          f"images, so there is no validation: use val_fraction >= {0.5 / n:.3g} for at least one, "
                          "or val_fraction=0 to say so", UserWarning, stacklevel=3)
        train = perm[n_val:]
        if self.hparams.limit_train is not None:
            train = train[: self.hparams.limit_train]
        _check(len(train) > 0, f"no training images left: {n} images, val_fraction={self.hparams.val_fraction} "
               f"holds out {n_val}; use a smaller val_fraction (below {(n - 0.5) / n:.6g} keeps a training image)")
        return train.sort().values, perm[:n_val].sort().values

    def _few_shot(self, train: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``train`` (sorted indices) reduced to ``few_shot.shots`` per class, still sorted; all without few_shot."""
        few_shot = self.hparams.few_shot
        if few_shot is None:
            return train
        return train[few_shot_indices(labels[train], few_shot["shots"], few_shot["seed"], self.num_classes)]

    def _loader(self, dataset, train: bool) -> DataLoader:
        hp = self.hparams
        workers = hp.num_workers
        persistent = workers > 0 if hp.persistent_workers is None else hp.persistent_workers
        return DataLoader(
            dataset, batch_size=self.batch_size if train else (hp.eval_batch_size or self.batch_size),
            sampler=EpochRandomSampler(dataset, self.seed) if train else None,
            drop_last=train and self.mixup_fn is not None,
            num_workers=workers, persistent_workers=persistent, pin_memory=hp.pin_memory,
        )

    def _require_setup(self) -> None:
        if self.train_dataset is None:
            raise RuntimeError("call datamodule.setup() (after prepare_data()) before asking for dataloaders")

    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader | list:
        """The validation loader; an empty list (no validation) when ``val_fraction`` is 0."""
        self._require_setup()
        return self._loader(self.val_dataset, train=False) if len(self.val_dataset) else []

    def test_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._loader(self.test_dataset, train=False)

    def predict_dataloader(self) -> DataLoader:
        """``trainer.predict(model, datamodule=dm)``: the test split, in file order, as ``(images, labels)`` batches."""
        self._require_setup()
        return self._loader(self.test_dataset, train=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Apply Mixup/CutMix (if enabled) to training batches: labels become soft float [B, num_classes]."""
        trainer = self.trainer
        if self.mixup_fn is not None and trainer is not None and trainer.training:
            images, labels = batch
            batch = self.mixup_fn(images, labels)
        return batch


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def build_datamodule(name: str, root: str | Path | None = None, img_size: int = 32, in_chans: int | None = None,
                     batch_size: int = 128, val_fraction: float = 0.1, augment: str = "none", seed: int = 0,
                     **kwargs: Any) -> VitlabDataModule:
    """Build the `VitlabDataModule` for dataset `name` (checked now; the error lists the valid names).

    See `VitlabDataModule` for the splitting, geometry, channel, normalisation and augmentation rules and the
    remaining keyword arguments (num_workers, mixup, cutmix, random_erasing, limit_train, few_shot, eval_batch_size,
    cache_dir, train_images, train_labels, test_images, test_labels, mean, std, ...).
    """
    check_name(name)
    return VitlabDataModule(name, root=root, img_size=img_size, in_chans=in_chans, batch_size=batch_size,
                            val_fraction=val_fraction, augment=augment, seed=seed, **kwargs)
