"""``fit(config)``: one training run from a ``RunConfig`` to a run folder.

The run folder ``<output_dir>/<name>/`` holds:

- ``config.yaml``: the resolved run configuration;
- ``checkpoints/last.ckpt``: resumable Lightning checkpoint (written every epoch);
- ``metrics.csv``: every logged metric (Lightning ``CSVLogger``);
- ``model.safetensors`` + ``config.json``: final weights with the ``vitlab`` metadata (``vitlab.checkpoint``);
- ``training_curves.png`` and ``summary.json``: loss/accuracy curves, final metrics, wall time, weight hashes.

Example:
    >>> from vitlab.train import RunConfig, fit
    >>> result = fit(RunConfig(name="digits", data=DataConfig(name="digits")))  # doctest: +SKIP
    >>> result.metrics["test/acc"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from vitlab.checkpoint import PretrainedWeights, create_model, resolve_pretrained, save_checkpoint, state_dict_sha256
from vitlab.data import build_datamodule
from vitlab.data.datamodule import VitlabDataModule
from vitlab.errors import ConfigError
from vitlab.peft.export import export_adapted_model
from vitlab.train.config import RunConfig
from vitlab.train.extensions import build_loss_terms, build_model_transform
from vitlab.train.module import ClassificationTask
from vitlab.train.plots import plot_training_curves

__all__ = [
    "NORMALIZE_MODES",
    "TRAINER_DEFAULTS",
    "RunModel",
    "RunResult",
    "build_run_datamodule",
    "build_run_model",
    "build_trainer",
    "fit",
    "resolve_run_weights",
]

# vitlab's defaults for ``lightning.Trainer`` keywords the ``trainer`` section does not set.
TRAINER_DEFAULTS: dict[str, Any] = {"max_epochs": 10, "accelerator": "auto", "devices": 1, "log_every_n_steps": 10}
NORMALIZE_MODES = ("auto", "dataset", "model")


@dataclass
class RunResult:
    """What ``fit`` returns: the run folder, final metrics and the saved weights path."""

    run_dir: Path
    metrics: dict[str, float]
    weights: Path | None
    wall_time_s: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunModel:
    """A run's model before training: ``timm.create_model(model_name, **model_kwargs)`` rebuilds its architecture
    with no network and no weights; ``weights`` says where its starting weights came from (``None``: random)."""

    model: nn.Module
    model_name: str
    model_kwargs: dict[str, Any]
    weights: PretrainedWeights | None


def resolve_run_weights(config: RunConfig) -> PretrainedWeights | None:
    """The run's starting weights (``model.pretrained``), resolved but not loaded; ``None`` for random init."""
    return resolve_pretrained(config.model.pretrained, config.model.name)


def build_run_datamodule(config: RunConfig, weights: PretrainedWeights | None = None) -> VitlabDataModule:
    """The run's datamodule, its channels and normalisation following the weights (``data.normalize``).

    With weights, the data takes the channels they were trained with (grey data is repeated for RGB weights) unless
    ``model.kwargs.in_chans`` says otherwise; ``auto`` normalisation uses the weights' statistics (see
    ``vitlab.train.config.DataConfig``).
    """
    data = config.data
    if data.normalize not in NORMALIZE_MODES:
        raise ConfigError(f"data.normalize must be one of {', '.join(NORMALIZE_MODES)}, got {data.normalize!r}")
    in_chans = config.model.kwargs.get("in_chans") or (weights.in_chans() if weights is not None else None)
    options = dict(data.options)
    stats = _normalization(config, weights)
    if stats is not None:
        if "mean" in options or "std" in options:
            raise ConfigError(f"data.options.mean/std and data.normalize: {data.normalize} both set the normalisation:"
                              " drop data.options.mean/std, or set data.normalize: dataset")
        mean, std = stats
        in_chans = in_chans or len(mean)  # the statistics' channels: grey data is repeated for RGB statistics
        if len(mean) != in_chans:
            if in_chans != 1:
                raise ConfigError(f"the weights' normalisation has {len(mean)} channels but the model takes {in_chans}:"
                                  " set data.normalize: dataset")
            mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)  # a stem summed to one channel
        options.update(mean=list(mean), std=list(std))
    return build_datamodule(
        data.name, root=data.root, img_size=data.img_size, in_chans=in_chans, batch_size=data.batch_size,
        val_fraction=data.val_fraction, augment=data.augment, seed=config.seed, num_workers=data.num_workers,
        mixup=data.mixup, cutmix=data.cutmix, random_erasing=data.random_erasing, **options,
    )


def _normalization(
    config: RunConfig, weights: PretrainedWeights | None
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    mode = config.data.normalize
    if mode == "dataset" or (mode == "auto" and weights is None):
        return None
    if weights is not None:
        stats = weights.normalization()
    else:
        import timm

        cfg = timm.models.get_pretrained_cfg(config.model.name)
        stats = (tuple(cfg.mean), tuple(cfg.std)) if cfg is not None and cfg.mean and cfg.std else None
    if stats is None and mode == "model":
        raise ConfigError(f"{config.model.name} has no pretrained_cfg mean/std: set data.normalize: dataset")
    return stats


def build_run_model(
    config: RunConfig, num_classes: int, in_chans: int, weights: PretrainedWeights | None = None
) -> RunModel:
    """Build the configured model with its starting weights (``model.pretrained``) for the run's data.

    Args:
        config: the run configuration (``model`` section; ``data.img_size`` unless ``model.kwargs`` sets it).
        num_classes, in_chans: what the data needs (``VitlabDataModule.num_classes`` / ``in_chans``).
        weights: resolved starting weights; by default ``resolve_run_weights(config)``.
    """
    if weights is None:
        weights = resolve_run_weights(config)
    kwargs = dict(config.model.kwargs, num_classes=num_classes, in_chans=in_chans)
    kwargs.setdefault("img_size", config.data.img_size)
    try:
        model, name, kwargs = create_model(config.model.name, weights, **kwargs)
    except TypeError as err:  # convolutional models take no img_size
        if "img_size" not in str(err) or "img_size" in config.model.kwargs:
            raise
        kwargs.pop("img_size")
        model, name, kwargs = create_model(config.model.name, weights, **kwargs)
    return RunModel(model, name, kwargs, weights)


def build_trainer(
    config: RunConfig, run_dir: Path, callbacks: Sequence[L.Callback] = (), **overrides: Any
) -> L.Trainer:
    """The Lightning Trainer of a run: CSV metrics, per-epoch ``last.ckpt``, progress bar, ``trainer`` section.

    Args:
        config: the run configuration (its ``trainer`` section gives the ``lightning.Trainer`` keywords).
        run_dir: the run folder.
        callbacks: extra Lightning callbacks, after vitlab's own.
        overrides: ``lightning.Trainer`` keywords that win over the ``trainer`` section.
    """
    kwargs = dict(TRAINER_DEFAULTS, **config.trainer)
    kwargs.update(overrides)
    callbacks = [
        # monitor=None + save_top_k=1 keeps exactly the newest epoch as last.ckpt (Lightning 2.6 writes no
        # ``save_last`` file when save_top_k=0).
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", save_top_k=1, every_n_epochs=1),
        LearningRateMonitor(logging_interval="epoch"),
        *callbacks,
    ]
    if kwargs.get("enable_progress_bar", True):
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    return L.Trainer(
        default_root_dir=str(run_dir),
        logger=CSVLogger(str(run_dir), name="", version=""),
        callbacks=callbacks,
        **kwargs,
    )


def fit(
    config: RunConfig, resume: bool = False, callbacks: Sequence[L.Callback] = (), **trainer_overrides: Any
) -> RunResult:
    """Train, test and save one run (see the module docstring for the run folder's contents).

    Args:
        config: the run configuration.
        resume: continue from ``<run>/checkpoints/last.ckpt`` when it exists (read with ``weights_only=True``).
            Resuming is exact at epoch boundaries: the data order is seeded per epoch and the RNG state is saved.
        callbacks: extra Lightning callbacks.
        trainer_overrides: extra ``lightning.Trainer`` keywords that win over ``config.trainer``.
    """
    start = time.perf_counter()
    run_dir = Path(config.output_dir) / config.name
    last = run_dir / "checkpoints" / "last.ckpt"
    if not resume and last.exists():
        raise FileExistsError(
            f"{run_dir} already holds a run: resume it with --resume true, or choose another name (--name)"
        )
    L.seed_everything(config.seed, workers=True, verbose=False)
    _write_config(run_dir, config)
    weights = resolve_run_weights(config)
    datamodule = build_run_datamodule(config, weights)
    built = build_run_model(config, datamodule.num_classes, datamodule.in_chans, weights)
    base = built.model
    base_sha = state_dict_sha256(base.state_dict()) if config.peft.method else None
    task = ClassificationTask(
        base, optim=config.optim, loss_terms=build_loss_terms(config.negatives),
        model_transform=build_model_transform(config.peft),
    )
    trainer = build_trainer(config, run_dir, callbacks, **trainer_overrides)
    trainer.fit(task, datamodule=datamodule, ckpt_path=str(last) if resume and last.exists() else None,
                weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    test = trainer.test(task, datamodule=datamodule, verbose=False)
    metrics.update({k: float(v) for k, v in (test[0] if test else {}).items()})
    hashes = _gather_weight_hashes(task)
    saved = _save_outputs(run_dir, config, task, datamodule, built, metrics, hashes, base_sha,
                          time.perf_counter() - start)
    return RunResult(run_dir, metrics, saved, time.perf_counter() - start, {"weights_sha256_per_rank": hashes})


def _gather_weight_hashes(task: ClassificationTask) -> list[str]:
    digest = state_dict_sha256(task.model.state_dict())
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        hashes: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(hashes, digest)
        return [str(h) for h in hashes]
    return [digest]


@rank_zero_only
def _write_config(run_dir: Path, config: RunConfig) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(asdict(config), sort_keys=False))


@rank_zero_only
def _save_outputs(
    run_dir: Path, config: RunConfig, task: ClassificationTask, datamodule: Any, built: RunModel,
    metrics: dict[str, float], hashes: list[str], base_sha: str | None, wall_time_s: float,
) -> Path:
    model = task.eval_model()
    base_weights = built.weights.describe() if built.weights is not None else None
    extra = {"data": datamodule.data_config(), "metrics": metrics, "run": config.name, "peft": asdict(config.peft),
             "base_weights": base_weights}
    if config.peft.method in (None, "full"):
        weights = save_checkpoint(run_dir / "model.safetensors", model.state_dict(), kind="model",
                                  model_name=built.model_name, model_kwargs=built.model_kwargs, extra=extra)
    else:  # merged model.safetensors (what eval reads) + the adaptation alone (adapter/subspace.safetensors)
        weights = export_adapted_model(run_dir, model, model_name=built.model_name, model_kwargs=built.model_kwargs,
                                       base_sha256=base_sha, base_weights=base_weights, extra=extra)[0]
    summary = {"metrics": metrics, "wall_time_s": wall_time_s, "weights_sha256_per_rank": hashes,
               "parameters": sum(p.numel() for p in model.parameters()),
               "trainable_parameters": sum(p.numel() for p in task.model.parameters() if p.requires_grad)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_training_curves(run_dir / "metrics.csv", run_dir / "training_curves.png")
    return weights
