"""The run configuration schema: one dataclass per top-level YAML section.

A run YAML has the top-level keys ``name``, ``seed``, ``output_dir`` and the sections ``model``, ``data``,
``trainer``, ``optim``, ``negatives`` and ``peft``. ``trainer`` takes any ``lightning.Trainer`` keyword (checked
against its signature); every other section is a dataclass below, so a misspelt key is an error that names it.
``docs/config.md`` documents every key; ``vitlab fit --print_config`` prints a full, resolved config.

Example:
    >>> cfg = RunConfig(model=ModelConfig(name="vit_vitlab_tiny_patch4_32"), data=DataConfig(name="digits"))
    >>> cfg.optim.lr
    0.001
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from vitlab.errors import ConfigError

__all__ = [
    "check_accelerator",
    "DataConfig",
    "ModelConfig",
    "NegativesConfig",
    "OptimConfig",
    "PeftConfig",
    "RunConfig",
]


@dataclass
class ModelConfig:
    """``model`` section: what ``timm.create_model`` builds.

    Args:
        name: timm registry name (vitlab's own, e.g. ``vit_vitlab_tiny_patch4_32``, or any timm model).
        kwargs: extra ``timm.create_model`` keywords (``drop_path_rate``, ``patch_size``, ...). ``num_classes`` and
            ``img_size`` come from the data unless given here; ``in_chans`` given here makes the data adapt to it.
        pretrained: where the starting weights come from (``vitlab.checkpoint.resolve_pretrained``): a vitlab
            ``model.safetensors`` or run folder; a plain weights file (``.safetensors``, or ``.pth`` / ``.pt`` /
            ``.bin`` read with ``weights_only=True``) in timm's or the architecture's original layout; ``timm`` (the
            default or named tag, through timm's loader and the Hugging Face cache); or ``hf-hub:ORG/NAME``. Position
            embeddings are resampled, the stem adapted to ``in_chans`` and a classifier with another class count
            re-initialised, as timm does. ``null`` trains from random initialisation.
        compile: ``true`` compiles the model's forward with ``torch.compile`` (in place: parameter names and saved
            weights are unchanged), or a mapping of ``torch.compile`` keywords (``{mode: max-autotune}``,
            ``{backend: eager}``); ``false`` (default) runs eagerly.
    """

    name: str = "vit_vitlab_tiny_patch4_32"
    kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    compile: bool | dict[str, Any] = False

    def __post_init__(self) -> None:
        _require(isinstance(self.name, str) and self.name.strip() != "", "model.name", self.name, "a timm model name")
        _require(isinstance(self.kwargs, dict), "model.kwargs", self.kwargs, "a mapping of timm.create_model keywords")
        _require(isinstance(self.compile, bool | dict), "model.compile", self.compile,
                 "true, false, or a mapping of torch.compile keywords")


@dataclass
class DataConfig:
    """``data`` section: the arguments of ``vitlab.data.build_datamodule``.

    Args:
        name: dataset name (``mnist``, ``fashion_mnist``, ``digits``, ``cifar10``, ``cifar100``, ``imagefolder``,
            ``idx``).
        root: folder with the data; ``null`` uses vitlab's cache ``$VITLAB_DATA`` and installs what is missing.
        img_size: model input size in pixels.
        batch_size: per-device batch size.
        val_fraction: share of the training set held out for validation (seeded split).
        augment: positive augmentation preset: ``none``, ``randaugment``, ``augmix``.
        num_workers: DataLoader worker processes.
        mixup: timm Mixup alpha (0 disables).
        cutmix: timm CutMix alpha (0 disables).
        random_erasing: RandomErasing probability (0 disables).
        normalize: the mean/std inputs are normalised with: ``auto`` (the weights' own: timm's ``pretrained_cfg``
            for timm / Hub / plain-file weights, the recorded data statistics for a vitlab file; the dataset's when
            training from scratch), ``dataset`` (always the dataset's) or ``model`` (always the model's
            ``pretrained_cfg``).
        options: further ``build_datamodule`` keywords (e.g. ``limit_train``, file paths for ``idx``).
    """

    name: str = "fashion_mnist"
    root: str | None = None
    img_size: int = 32
    batch_size: int = 128
    val_fraction: float = 0.1
    augment: str = "none"
    num_workers: int = 0
    mixup: float = 0.0
    cutmix: float = 0.0
    random_erasing: float = 0.0
    normalize: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(self.normalize in ("auto", "dataset", "model"), "data.normalize", self.normalize,
                 "one of auto, dataset, model")


@dataclass
class OptimConfig:
    """``optim`` section: AdamW with linear warm-up then cosine decay, stepped every optimizer step.

    Args:
        lr: peak learning rate (after warm-up).
        min_lr: final learning rate of the cosine.
        weight_decay: applied only to parameters with >= 2 dimensions not named by the model's ``no_weight_decay()``.
        betas: AdamW betas.
        warmup_epochs: warm-up length in epochs (fractions allowed).
        label_smoothing: cross-entropy label smoothing.
        ema_decay: keep an exponential moving average of the weights with this decay (timm ``ModelEmaV3``);
            validation, test and the saved model then use the EMA weights. ``null`` disables.
    """

    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    ema_decay: float | None = None

    def __post_init__(self) -> None:
        _require(_number(self.lr) and self.lr > 0, "optim.lr", self.lr, "a finite number > 0")
        _require(_number(self.min_lr) and 0 <= self.min_lr <= self.lr, "optim.min_lr", self.min_lr,
                 f"a finite number in [0, optim.lr = {self.lr}]")
        _require(_number(self.weight_decay) and self.weight_decay >= 0, "optim.weight_decay", self.weight_decay,
                 "a finite number >= 0")
        _require(isinstance(self.betas, list | tuple) and len(self.betas) == 2
                 and all(_number(b) and 0 <= b < 1 for b in self.betas), "optim.betas", self.betas,
                 "two numbers in [0, 1)")
        self.betas = tuple(float(b) for b in self.betas)
        _require(_number(self.warmup_epochs) and self.warmup_epochs >= 0, "optim.warmup_epochs", self.warmup_epochs,
                 "a finite number >= 0")
        _require(_number(self.label_smoothing) and 0 <= self.label_smoothing < 1, "optim.label_smoothing",
                 self.label_smoothing, "a number in [0, 1)")
        _require(self.ema_decay is None or (_number(self.ema_decay) and 0 < self.ema_decay < 1), "optim.ema_decay",
                 self.ema_decay, "null or a number in (0, 1)")
        for name in ("lr", "min_lr", "weight_decay", "warmup_epochs", "label_smoothing", "ema_decay"):
            setattr(self, name, _plain(getattr(self, name)))


#: The ``negatives`` keys that switch the section on when given (``enabled`` unset), with their defaults.
_NEGATIVES_DEFAULTS: dict[str, Any] = {"kinds": ["shuffle"], "patch_size": 8, "loss": "uniform", "weight": 1.0}


@dataclass
class NegativesConfig:
    """``negatives`` section: patch-based negative augmentation (the ``loss terms`` extension point).

    Giving any key switches the term on; ``enabled`` only needs setting to say so explicitly (``true`` with no other
    key: the defaults) or to refuse keys (``false``). ``__post_init__`` resolves the unset keys, so the built config
    (and the run's ``config.yaml``) holds a plain ``enabled: true`` / ``false`` and every default.

    Args:
        enabled: ``null`` (default): on when any other key is given, else off; ``true``: on; ``false``: off (other
            keys that differ from their defaults are then refused).
        kinds: negative views to draw from (``shuffle``, ``rotate``, ``infill``); default ``[shuffle]``.
        patch_size: cell size in pixels of the patch transforms; default 8.
        loss: negative loss (``uniform``, ``l2``, ``contrastive``); default ``uniform``.
        weight: weight (lambda) of the term added to the cross-entropy; default 1.0.
        temperature: temperature of the contrastive loss (only with ``loss: contrastive``; ``null``: the loss's
            default 0.1); the same as ``options: {temperature: ...}``, which it is copied to (and from).
        options: further keywords of the loss term (`vitlab.losses.NegativeAugmentationLoss`).

    Example:
        >>> NegativesConfig(kinds=["rotate"], loss="contrastive", temperature=0.2).enabled
        True
        >>> NegativesConfig().enabled, NegativesConfig(enabled=True).kinds
        (False, ['shuffle'])
    """

    enabled: bool | None = None
    kinds: list[str] | None = None
    patch_size: int | None = None
    loss: str | None = None
    weight: float | None = None
    temperature: float | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(self.enabled is None or isinstance(self.enabled, bool), "negatives.enabled", self.enabled,
                 "true, false or null (null: on when any other negatives key is given)")
        _require(isinstance(self.options, dict), "negatives.options", self.options,
                 "a mapping of NegativeAugmentationLoss keywords")
        given = [key for key in (*_NEGATIVES_DEFAULTS, "temperature") if getattr(self, key) is not None]
        given += ["options"] if self.options else []
        if self.enabled is None:
            self.enabled = bool(given)
        elif not self.enabled:
            differing = [key for key in given if getattr(self, key) != _NEGATIVES_DEFAULTS.get(key)]
            if differing:
                raise ConfigError(f"negatives.{', negatives.'.join(differing)} set but negatives.enabled is false: "
                                  "drop negatives.enabled (any negatives key switches the term on) or set it to true "
                                  "to train with negative views, or drop those options")
        for key, default in _NEGATIVES_DEFAULTS.items():
            if getattr(self, key) is None:
                setattr(self, key, list(default) if isinstance(default, list) else default)
        _require(_number(self.weight) and self.weight >= 0, "negatives.weight", self.weight, "a finite number >= 0")
        self.weight = _plain(self.weight)
        if self.enabled:
            from vitlab.augment import KINDS  # here, not at import: `vitlab fit --help` does not import torch
            from vitlab.losses import LOSSES

            kinds = self.kinds
            _require(isinstance(kinds, list | tuple) and bool(kinds) and all(k in KINDS for k in kinds)
                     and len(set(kinds)) == len(kinds), "negatives.kinds", kinds,
                     f"a non-empty list of distinct names from {list(KINDS)}")
            _require(not isinstance(self.loss, str) or self.loss in LOSSES, "negatives.loss", self.loss,
                     f"one of {list(LOSSES)}")  # (a loss object, from Python, is checked by the loss term)
        _require(isinstance(self.patch_size, int) and not isinstance(self.patch_size, bool) and self.patch_size >= 2,
                 "negatives.patch_size", self.patch_size,
                 "an integer >= 2 (1-px cells leave the image unchanged: a negative view must differ)")
        self._resolve_temperature()

    def _resolve_temperature(self) -> None:
        """Check ``temperature`` and make it and ``options.temperature`` one value (either form gives both)."""
        in_options = self.options.get("temperature")
        if self.temperature is None and (in_options is None or self.loss != "contrastive"):
            return  # options.temperature with another loss: the loss term refuses it, naming the loss
        key = "negatives.temperature" if self.temperature is not None else "negatives.options.temperature"
        value = self.temperature if self.temperature is not None else in_options
        _require(_number(value) and value > 0, key, value, "a finite number > 0 (the contrastive loss's default: 0.1)")
        if self.loss != "contrastive":
            raise ConfigError(f"negatives.temperature applies only to loss: contrastive, got loss: {self.loss!r} (the "
                              "uniform and l2 losses have no temperature): set negatives.loss: contrastive or drop "
                              "negatives.temperature")
        if in_options is not None and in_options != value:
            raise ConfigError(f"negatives.temperature {value!r} and negatives.options.temperature {in_options!r} "
                              "differ: give the temperature once (negatives.temperature)")
        self.temperature = float(value)
        self.options = {**self.options, "temperature": self.temperature}


@dataclass
class PeftConfig:
    """``peft`` section (reserved for parameter-efficient methods, the ``model transform`` extension point).

    Args:
        method: ``null`` (train everything) or a registered method name (see ``vitlab.train.extensions``).
        target_modules: module names or a regex the method adapts (peft convention).
        options: further keywords of the method's config.
    """

    method: str | None = None
    target_modules: list[str] | str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(self.method is None or isinstance(self.method, str), "peft.method", self.method,
                 "null or a registered method name")
        _require(isinstance(self.options, dict), "peft.options", self.options, "a mapping of the method's options")
        if "target_modules" in self.options:
            raise ConfigError("peft.options.target_modules: the modules to adapt are peft.target_modules (beside "
                              "peft.method), not an option; move it there")


@dataclass
class RunConfig:
    """A whole run. ``trainer`` holds ``lightning.Trainer`` keywords (validated by the CLI against its signature).

    Args:
        name: run name; the run folder is ``<output_dir>/<name>``.
        seed: seeds every random number generator (model init, split, shuffling, augmentation).
        output_dir: parent folder of run folders.
    """

    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: dict[str, Any] = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)

    def __post_init__(self) -> None:
        _require(isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed < 2**32, "seed",
                 self.seed, "an integer in [0, 2**32)")
        if isinstance(self.output_dir, os.PathLike):  # a pathlib.Path is a folder path too
            self.output_dir = os.fspath(self.output_dir)
        _require(isinstance(self.output_dir, str) and self.output_dir.strip() != "", "output_dir", self.output_dir,
                 "a folder path")
        self.output_dir = os.path.expanduser(self.output_dir)  # `~/runs`: Lightning's loggers expand it, so must we
        _require(isinstance(self.trainer, dict), "trainer", self.trainer, "a mapping of lightning.Trainer keywords")
        for name, section in (("model", ModelConfig), ("data", DataConfig), ("optim", OptimConfig),
                              ("negatives", NegativesConfig), ("peft", PeftConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):  # the YAML form in Python: build (and so validate) the section from it
                try:
                    value = section(**value)
                except TypeError as err:
                    raise ConfigError(f"{name}: {err}; the {name} section's keys are "
                                      f"{[f.name for f in fields(section)]}") from None
                setattr(self, name, value)
            _require(isinstance(value, section), name, value, f"a {section.__name__} or a dict of its fields")


def _number(value: Any) -> bool:
    """A finite real number: Python or NumPy (``np.float32(0.9)``), not a bool."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)
            and math.isfinite(float(value)))


def _plain(value: Any) -> Any:
    """A NumPy number as the Python number it equals (the run's config.yaml and checkpoints hold plain values)."""
    return value.item() if isinstance(value, np.generic) else value


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")


def check_accelerator(name: str, option: str = "accelerator") -> None:
    """Refuse a Lightning accelerator name that is unknown or has no device on this machine, before any run starts
    (each run's process would fail on it, one after another).

    Example:
        >>> check_accelerator("cpu")
        >>> check_accelerator("cpus")
        Traceback (most recent call last):
        ...
        ValueError: accelerator must be one of auto, cpu, cuda, gpu, mps, tpu (Lightning's names), got 'cpus'
    """
    from lightning.pytorch.accelerators import AcceleratorRegistry

    names = {"auto", "gpu", *AcceleratorRegistry.available_accelerators()}
    if name not in names:
        raise ValueError(f"{option} must be one of {', '.join(sorted(names))} (Lightning's names), got {name!r}")
    kinds = ("cuda", "mps") if name == "gpu" else () if name == "auto" else (name,)
    if kinds and not any(AcceleratorRegistry[kind]["accelerator"].is_available() for kind in kinds):
        raise ValueError(f"{option} {name!r}: this machine has no such device; use auto (a GPU when present) or cpu")
