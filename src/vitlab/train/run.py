"""``fit(config)``: one training run from a ``RunConfig`` to a run folder.

The run folder ``<output_dir>/<name>/`` holds:

- ``config.yaml``: the resolved run configuration;
- ``checkpoints/last.ckpt``: resumable Lightning checkpoint (written every epoch);
- ``metrics.csv``: every logged metric (Lightning ``CSVLogger``; a resumed run appends), plus the loggers of
  ``trainer.logger`` (TensorBoard, MLflow, W&B ...);
- ``model.safetensors`` + ``config.json``: final weights with the ``vitlab`` metadata (``vitlab.checkpoint``);
- ``.lock`` while a process writes the folder (a second writer is refused).
- ``training_curves.png`` and ``summary.json``: loss/accuracy curves, final metrics, wall time (summed over the
  sessions of a resumed run), weight hashes, and how training ended (``epochs_trained``, ``global_step``,
  ``stopped_early``, ``stop_reason``: see `_stop_record`).

Example (a few steps on scikit-learn's digits)::

    from vitlab.train import DataConfig, RunConfig, fit

    result = fit(RunConfig(name="digits", data=DataConfig(name="digits"), trainer={"max_epochs": 1}))
    print(result.run_dir, result.metrics["test/acc"])
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, Timer, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch import nn

from vitlab.checkpoint import (
    CheckpointError,
    PretrainedWeights,
    check_model_name,
    create_model,
    load_lightning_checkpoint,
    resolve_pretrained,
    save_checkpoint,
    state_dict_sha256,
)
from vitlab.data import build_datamodule
from vitlab.data.datamodule import VitlabDataModule
from vitlab.errors import ConfigError, VitlabError
from vitlab.peft.export import export_adapted_model
from vitlab.train.callbacks import FiniteGuard, build_callbacks, build_loggers, check_monitors, drop_rows_after_epoch
from vitlab.train.config import NegativesConfig, RunConfig, check_accelerator
from vitlab.train.extensions import build_loss_terms, build_model_transform
from vitlab.train.module import ClassificationTask
from vitlab.train.plots import plot_training_curves
from vitlab.train.run_folder import RunLock, check_run_name, max_time_seconds, resume_config

__all__ = [
    "NORMALIZE_MODES",
    "TRAINER_DEFAULTS",
    "RunModel",
    "RunResult",
    "build_run_datamodule",
    "build_run_model",
    "build_trainer",
    "check_trainer_options",
    "fit",
    "resolve_run_weights",
]

# vitlab's defaults for ``lightning.Trainer`` keywords the ``trainer`` section does not set.
TRAINER_DEFAULTS: dict[str, Any] = {"max_epochs": 10, "accelerator": "auto", "devices": 1, "log_every_n_steps": 10}
NORMALIZE_MODES = ("auto", "dataset", "model")


@dataclass
class RunResult:
    """What ``fit`` returns: the run folder, final metrics and the saved weights path (``None`` after Lightning's
    ``trainer.fast_dev_run`` check, which saves nothing; ``extra["fast_dev_run"]`` is then true)."""

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
    given = config.model.kwargs.get("num_classes")
    if given is not None and given != num_classes:
        raise ConfigError(f"model.kwargs.num_classes is {given} but {config.data.name} has {num_classes} classes: "
                          "drop model.kwargs.num_classes (it follows the data)")
    kwargs = dict(config.model.kwargs, num_classes=num_classes, in_chans=in_chans)
    kwargs.setdefault("img_size", config.data.img_size)
    try:
        try:
            model, name, kwargs = create_model(config.model.name, weights, **kwargs)
        except TypeError as err:  # convolutional models take no img_size
            if "img_size" not in str(err) or "img_size" in config.model.kwargs:
                raise
            kwargs.pop("img_size")
            model, name, kwargs = create_model(config.model.name, weights, **kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        if isinstance(err, VitlabError) or not config.model.kwargs:
            raise  # vitlab's own message, or a failure without user keywords (a bug: shown in full)
        raise ConfigError(f"model.kwargs {config.model.kwargs} were refused by timm.create_model("
                          f"{config.model.name!r}): {type(err).__name__}: {err}; check each keyword's name and type "
                          "against the model's constructor") from err
    return RunModel(model, name, kwargs, weights)


def build_trainer(
    config: RunConfig, run_dir: Path, callbacks: Sequence[L.Callback] = (), **overrides: Any
) -> L.Trainer:
    """The Lightning Trainer of a run: CSV metrics, per-epoch ``last.ckpt``, progress bar, ``trainer`` section.

    Args:
        config: the run configuration. Its ``trainer`` section gives the ``lightning.Trainer`` keywords; its
            ``logger`` and ``callbacks`` take LightningCLI's ``class_path`` / ``init_args`` form (see
            `vitlab.train.callbacks`); ``metrics.csv`` is always written too.
        run_dir: the run folder.
        callbacks: extra Lightning callbacks, after vitlab's own.
        overrides: ``lightning.Trainer`` keywords that win over the ``trainer`` section.
    """
    kwargs = dict(TRAINER_DEFAULTS, **config.trainer)
    kwargs.update(overrides)
    check_trainer_options(kwargs)
    loggers = build_loggers(kwargs.pop("logger", None), run_dir)
    callbacks = [
        FiniteGuard(),
        # monitor=None + save_top_k=1 keeps exactly the newest epoch as last.ckpt (Lightning 2.6 writes no
        # ``save_last`` file when save_top_k=0).
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", save_top_k=1, every_n_epochs=1),
        LearningRateMonitor(logging_interval="epoch"),
        *build_callbacks(kwargs.pop("callbacks", None)),
        *callbacks,
    ]
    if kwargs.get("enable_progress_bar", True):
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    try:
        return L.Trainer(default_root_dir=str(run_dir), logger=loggers, callbacks=callbacks, **kwargs)
    except (TypeError, ValueError, ImportError, MisconfigurationException) as err:  # Lightning checks its keywords
        reason = " ".join(str(err).split())[:300]
        raise ConfigError(f"the trainer section was refused by lightning.Trainer ({type(err).__name__}: {reason}); "
                          "fix that trainer.* option (`vitlab fit --help` lists them)") from err


def check_trainer_options(kwargs: dict[str, Any]) -> None:
    """Refuse ``trainer`` values Lightning would accept but that make a run meaningless or fail late, and an
    accelerator name that is unknown or has no device here (Lightning: "No supported gpu backend found!")."""
    accelerator = kwargs.get("accelerator")
    if isinstance(accelerator, str):
        try:
            check_accelerator(accelerator, "trainer.accelerator")
        except ValueError as err:
            raise ConfigError(str(err)) from None
    epochs = kwargs.get("max_epochs")
    steps = kwargs.get("max_steps")
    step_based = epochs == -1 and _is_int(steps) and steps >= 1  # Lightning's way to train for max_steps alone
    if epochs is not None and not step_based and (not _is_int(epochs) or epochs < 1):
        raise ConfigError(f"trainer.max_epochs must be an integer >= 1 (or -1 with trainer.max_steps >= 1), got "
                          f"{epochs!r}: a run with no training would save random weights as a finished model, and an "
                          "endless one has no learning-rate schedule")
    for unit, limit in (("epochs", epochs), ("steps", steps)):
        least = kwargs.get(f"min_{unit}")
        if _is_int(least) and _is_int(limit) and limit >= 1 and least > limit:  # Lightning stops at max_* silently
            raise ConfigError(f"trainer.min_{unit} ({least}) is larger than trainer.max_{unit} ({limit}): Lightning "
                              f"would stop at max_{unit}; raise trainer.max_{unit} to at least {least} or lower "
                              f"trainer.min_{unit}")
    for flag in _TRAINER_FLAGS:  # Lightning takes any truthy value (`deterministic: "yes"` is not even deterministic)
        value = kwargs.get(flag)
        if value is not None and not isinstance(value, bool) and not (flag == "deterministic" and value == "warn"):
            allowed = "true, false or 'warn'" if flag == "deterministic" else "true or false"
            raise ConfigError(f"trainer.{flag} must be {allowed}, got {value!r} ({type(value).__name__})")
    if kwargs.get("barebones") is True:  # Lightning refuses it naming vitlab's own CSV logger, not the option
        raise ConfigError("trainer.barebones: true turns off logging and checkpointing, which every vitlab run needs "
                          "(metrics.csv, checkpoints/last.ckpt): drop it; for less overhead set "
                          "trainer.enable_progress_bar: false and trainer.enable_model_summary: false")
    if kwargs.get("enable_checkpointing") is False:  # Lightning refuses it naming vitlab's own ModelCheckpoint
        raise ConfigError("trainer.enable_checkpointing: false turns off checkpoints/last.ckpt, which every vitlab run "
                          "writes (--resume, the last good weights after a non-finite loss): drop it; the final "
                          "weights are model.safetensors either way")
    devices = kwargs.get("devices")
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():  # `--trainer.devices 0` arrives as '0'
        devices = int(devices)
    if isinstance(devices, int) and not isinstance(devices, bool) and devices < 1 and devices != -1:
        raise ConfigError(f"trainer.devices must be >= 1 (or -1 for all, or 'auto'), got {devices}")
    accumulate = kwargs.get("accumulate_grad_batches")
    if accumulate is not None and (not isinstance(accumulate, int) or accumulate < 1):
        raise ConfigError(f"trainer.accumulate_grad_batches must be an integer >= 1, got {accumulate!r}")
    no_training = "a run with no training would save random weights as a finished model"
    if steps is not None and (not _is_int(steps) or steps == 0 or steps < -1):
        raise ConfigError(f"trainer.max_steps must be an integer >= 1 (or -1: no limit), got {steps!r}: {no_training}")
    for key in ("limit_train_batches", "val_check_interval"):
        value = kwargs.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not value > 0):
            raise ConfigError(f"trainer.{key} must be a number > 0 (a fraction, or a count of batches), got "
                              f"{value!r}" + (f": {no_training}" if key == "limit_train_batches" else ""))
    every = kwargs.get("check_val_every_n_epoch")
    if every is not None and (not _is_int(every) or every < 1):
        raise ConfigError(f"trainer.check_val_every_n_epoch must be an integer >= 1 or null, got {every!r}")
    clip = kwargs.get("gradient_clip_val")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, int | float) or not 0 <= clip < math.inf):
        raise ConfigError(f"trainer.gradient_clip_val must be a finite number >= 0 (0 or null: no clipping), got "
                          f"{clip!r}")
    sanity = kwargs.get("num_sanity_val_steps")  # Lightning runs none for -2 and all for -1, without a word
    if sanity is not None and (not _is_int(sanity) or sanity < -1):
        raise ConfigError(f"trainer.num_sanity_val_steps must be an integer >= 0 (0: no sanity check) or -1 (every "
                          f"validation batch), got {sanity!r}")
    every_n = kwargs.get("log_every_n_steps")  # Lightning logs every |n| steps for a negative n
    if every_n is not None and (not _is_int(every_n) or every_n < 0):
        raise ConfigError(f"trainer.log_every_n_steps must be an integer >= 1, or 0 to log per epoch only, got "
                          f"{every_n!r}")
    algorithm = kwargs.get("gradient_clip_algorithm")  # Lightning refuses others with a MisconfigurationException
    if algorithm is not None and (not isinstance(algorithm, str) or algorithm.lower() not in ("norm", "value")):
        raise ConfigError(f"trainer.gradient_clip_algorithm must be 'norm' or 'value' (null: Lightning's 'norm'), "
                          f"got {algorithm!r}")
    seconds = max_time_seconds(kwargs.get("max_time"))
    if seconds is not None and not seconds > 0:  # a negative or NaN duration stops Lightning before any step, as zero
        what = "zero" if seconds == 0 else "not a positive duration"
        raise ConfigError(f"trainer.max_time is {what} ({kwargs['max_time']!r}): {no_training}; give DD:HH:MM:SS > 0")


_TRAINER_FLAGS = ("benchmark", "barebones", "deterministic", "detect_anomaly", "enable_checkpointing",
                  "enable_model_summary", "enable_progress_bar", "inference_mode", "sync_batchnorm",
                  "use_distributed_sampler")  # lightning.Trainer's boolean keywords


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def fit(
    config: RunConfig, resume: bool = False, callbacks: Sequence[L.Callback] = (), **trainer_overrides: Any
) -> RunResult:
    """Train, test and save one run (see the module docstring for the run folder's contents).

    Args:
        config: the run configuration.
        resume: continue the run ``<output_dir>/<name>`` from its ``checkpoints/last.ckpt`` (read with
            ``weights_only=True``) with the configuration it saved; ``config`` must equal it except for a larger
            ``trainer.max_epochs`` (see `vitlab.train.run_folder.resume_config`). Metrics are appended. Resuming is
            exact at epoch boundaries: the data order is seeded per epoch and the RNG state is saved.
        callbacks: extra Lightning callbacks.
        trainer_overrides: extra ``lightning.Trainer`` keywords that win over ``config.trainer``.

    Raises:
        ConfigError: a bad name or option, a resume that changes options; FileExistsError: the run exists (or an
        earlier run left files in its folder before its first checkpoint) and ``resume`` is false;
        FloatingPointError: a non-finite loss or weights (the message says what was kept and how to go on);
        KeyboardInterrupt: Ctrl-C (Lightning shuts down gracefully; the message says which checkpoint is kept and
        gives the ``--resume true`` command).
    """
    if not isinstance(config, RunConfig):
        raise TypeError(f"fit takes a vitlab.train.RunConfig, got {type(config).__name__}: build one with "
                        "RunConfig(...) or vitlab.train.arguments.load_run_config_file(path)")
    bad = [c for c in callbacks if not isinstance(c, L.Callback)] if isinstance(callbacks, list | tuple) \
        else [callbacks]
    if bad:
        raise TypeError(f"fit's callbacks must be a list of lightning.Callback instances, got {bad[0]!r}: pass "
                        "callbacks=[MyCallback(...)]")
    start = time.perf_counter()
    check_run_name(config.name)
    check_model_name(config.model.name)  # before the data is installed and loaded
    run_dir = Path(config.output_dir) / config.name
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume:
        config = resume_config(run_dir, config, config.output_dir)
        if not last.exists() and (run_dir / "model.safetensors").exists():
            raise ConfigError(f"{run_dir} is a finished run without checkpoints/last.ckpt, so there is nothing to "
                              "resume from (training again would overwrite its model.safetensors): start a new run "
                              "with another --name")
    elif (run_dir / "model.safetensors").exists():
        raise FileExistsError(f"{run_dir} holds a finished run (model.safetensors): choose another --name, or train it "
                              "longer with --resume true and a larger --trainer.max_epochs")
    elif last.exists():
        raise FileExistsError(
            f"{run_dir} already holds a run: resume it with --resume true, or choose another name (--name)"
        )
    check_trainer_options(dict(TRAINER_DEFAULTS, **config.trainer, **trainer_overrides))
    new_folder = not run_dir.exists()
    try:
        with contextlib.nullcontext() if is_ddp_worker() else RunLock(run_dir):
            if not resume and not is_ddp_worker():
                _refuse_leftovers(run_dir, config)
            result = _fit_locked(config, run_dir, last, resume, callbacks, trainer_overrides, start)
    except BaseException:
        if new_folder and not is_ddp_worker():
            _remove_if_unstarted(run_dir)
        raise
    if result.extra.get("fast_dev_run") and not resume and not is_ddp_worker():
        _forget_check_run(run_dir, new_folder)
    return result


def _resume_command(config: RunConfig) -> str:
    return f"vitlab fit --name {config.name} --output_dir {config.output_dir} --resume true"


def _refuse_leftovers(run_dir: Path, config: RunConfig) -> None:
    """Refuse a new run in a folder that holds files of an earlier one stopped before its first checkpoint
    (interrupted in epoch 0): its ``metrics.csv`` would be appended to, mixing two runs' curves. An earlier run is
    recognised by the ``config.yaml`` every run writes first; other files are the caller's (e.g. a study launcher's
    spec and log, written before it starts the run)."""
    if not (run_dir / "config.yaml").is_file():
        return
    left = sorted(p.name for p in run_dir.iterdir() if p.name != ".lock")
    if left:
        raise FileExistsError(
            f"{run_dir} holds files of an earlier run that stopped before its first checkpoint ({', '.join(left[:4])}"
            f"{' ...' if len(left) > 4 else ''}): start that run over with `{_resume_command(config)}` (its saved "
            "config.yaml), delete the folder, or choose another --name"
        )


def _interrupted(config: RunConfig, run_dir: Path, last: Path) -> KeyboardInterrupt:
    """What Ctrl-C during training left behind and how to go on (Lightning turns it into ``SystemExit(1)``)."""
    epoch = _checkpoint_epoch(last)
    kept = (f"{last} (end of epoch {epoch}) is kept" if epoch is not None
            else "no epoch had finished, so there is no checkpoint")
    verb = "continue it" if epoch is not None else "start it over"
    return KeyboardInterrupt(f"training of {run_dir} was interrupted; {kept}: {verb} with `{_resume_command(config)}`")


def _remove_if_unstarted(run_dir: Path) -> None:
    """Remove a run folder this ``fit`` created when it failed before training wrote anything (no ``metrics.csv``,
    no checkpoint: only its ``config.yaml`` and what the loggers create when they start), so that a bad option leaves
    no run behind to be listed, resumed, or to block the corrected command."""
    if run_dir.is_dir() and not (run_dir / "metrics.csv").exists() and not (run_dir / "checkpoints").exists():
        shutil.rmtree(run_dir, ignore_errors=True)


def _forget_check_run(run_dir: Path, new_folder: bool) -> None:
    """After a ``trainer.fast_dev_run`` check, remove what it wrote (its ``config.yaml``, the folder if it made it),
    so the same command without ``fast_dev_run`` starts the real run instead of being refused as a leftover (and a
    ``--resume`` cannot pick up the check's ``fast_dev_run: true`` config)."""
    if new_folder:
        _remove_if_unstarted(run_dir)
    else:  # the caller's folder (e.g. a study's spec): only the check's own config goes
        (run_dir / "config.yaml").unlink(missing_ok=True)


def is_ddp_worker() -> bool:
    """A DDP worker Lightning started (it re-runs the command): the parent holds the run folder's lock and prints
    the run's summary."""
    return os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"


def _check_views_fit(loss_terms: Sequence[Any], img_size: int) -> None:
    """Refuse, before the trainer starts, negative views whose patch grid does not fit the training images (the term
    would only fail at its first training step, after the model summary and the sanity check)."""
    for term in loss_terms:
        views = getattr(term, "views", None)
        if views is not None and hasattr(views, "grid"):
            try:
                views.grid(img_size, img_size)
            except ConfigError as err:
                raise ConfigError(f"negatives.patch_size does not fit the {img_size}x{img_size} training images "
                                  f"(data.img_size): {err}") from None


def _fit_locked(
    config: RunConfig, run_dir: Path, last: Path, resume: bool, callbacks: Sequence[L.Callback],
    trainer_overrides: dict[str, Any], start: float,
) -> RunResult:
    L.seed_everything(config.seed, workers=True, verbose=False)
    weights = resolve_run_weights(config)
    datamodule = build_run_datamodule(config, weights)
    built = build_run_model(config, datamodule.num_classes, datamodule.in_chans, weights)
    _write_config(run_dir, config)  # on resume: the saved configuration, with max_epochs extended if asked
    base = built.model
    base_sha = state_dict_sha256(base.state_dict()) if config.peft.method else None
    loss_terms = build_loss_terms(_seeded(config.negatives, config.seed))
    _check_views_fit(loss_terms, datamodule.img_size)
    task = ClassificationTask(base, optim=config.optim, loss_terms=loss_terms,
                              model_transform=build_model_transform(config.peft))
    if config.model.compile:  # in place: the module and its state-dict names stay those of the eager model
        options = config.model.compile if isinstance(config.model.compile, dict) else {}
        try:
            task.model.compile(**options)
        except (TypeError, RuntimeError) as err:  # torch checks mode, backend and options here, before any batch
            reason = " ".join(str(err).split())[:300]
            raise ConfigError(f"model.compile {options} was refused by torch.compile: {reason}; give torch.compile "
                              "keywords (mode, backend, fullgraph, dynamic, options) or true") from err
    ckpt_path = str(last) if resume and last.exists() else None
    if ckpt_path is not None:
        _drop_replayed_rows(run_dir, last)
    elif resume and not is_ddp_worker():  # stopped before its first checkpoint: the run starts over
        (run_dir / "metrics.csv").unlink(missing_ok=True)
    first_step = _FirstStep()
    trainer = build_trainer(config, run_dir, [*callbacks, first_step], **trainer_overrides)
    names, prefixes = task.monitorable_metrics()
    if trainer.limit_val_batches == 0:  # no validation: no val/ metrics
        names = [n for n in names if not n.startswith("val/")]
    check_monitors(trainer.callbacks, names, prefixes)
    for callback in trainer.callbacks:  # its monitor was checked above: a run ending before validating just finishes
        if isinstance(callback, EarlyStopping):
            callback.strict = False
    earlier = _earlier_summary(run_dir) if ckpt_path is not None else {}
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if first_step.step is not None and trainer.global_step > first_step.step:  # trained on: old numbers are stale
            earlier["metrics"] = {}
        if not metrics and trainer.limit_val_batches and not trainer.fast_dev_run \
                and not any(k.startswith("val/") for k in earlier.get("metrics", {})):
            metrics = _validate_at_end(trainer, task, datamodule)
        test = trainer.test(task, datamodule=datamodule, verbose=False)
    except FloatingPointError as err:
        raise FloatingPointError(_non_finite_advice(err, config, run_dir, last)) from err
    except ValueError as err:  # Lightning checks val_check_interval against the loader when fit starts
        if "`val_check_interval`" not in str(err):
            raise
        raise ConfigError(f"trainer.val_check_interval: {' '.join(str(err).split())}".replace(
            "`check_val_every_n_epoch=None`", "trainer.check_val_every_n_epoch: null").replace(
            "`limit_val_batches` to 0.0", "trainer.limit_val_batches: 0")) from None
    except SystemExit:
        if trainer.interrupted:  # Lightning's graceful Ctrl-C ends in sys.exit(1)
            raise _interrupted(config, run_dir, last) from None
        raise
    metrics.update({k: float(v) for k, v in (test[0] if test else {}).items()})
    # a resumed run that trained no more (already finished) keeps its last validation numbers
    metrics = {**{k: v for k, v in earlier.get("metrics", {}).items() if k.startswith("val/")}, **metrics}
    start -= earlier.get("wall_time_s", 0.0)  # the run's wall time counts every session that trained it
    if trainer.fast_dev_run:  # Lightning's smoke test: a few batches, no checkpoint, no logs; not a finished model
        return RunResult(run_dir, metrics, None, time.perf_counter() - start, {"fast_dev_run": True})
    hashes = _gather_weight_hashes(task)
    try:
        saved = _save_outputs(run_dir, config, task, datamodule, built, metrics, hashes, base_sha,
                              time.perf_counter() - start, _stop_record(trainer))
    except OSError as err:
        raise OSError(f"training finished but the final weights could not be written to {run_dir} ({err}); "
                      f"{last} is kept: free space or fix permissions, then finish with `vitlab fit --name "
                      f"{config.name} --output_dir {config.output_dir} --resume true`") from err
    return RunResult(run_dir, metrics, saved, time.perf_counter() - start, {"weights_sha256_per_rank": hashes})


def _stop_record(trainer: L.Trainer) -> dict[str, Any]:
    """How far a finished ``trainer.fit`` got and why it ended, for ``summary.json``: ``epochs_trained`` (a last
    epoch cut short by ``max_steps`` / ``max_time`` counts), ``global_step`` (optimizer steps), ``stop_reason``
    (``max_epochs``, ``max_steps``, ``max_time``, ``early_stopping``, or ``callback``: another callback set
    ``trainer.should_stop``) and ``stopped_early`` (true unless ``max_epochs`` / ``max_steps`` ended it)."""
    callbacks = trainer.callbacks
    if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
        reason = "max_steps"
    elif trainer.max_epochs is not None and trainer.max_epochs != -1 and trainer.current_epoch >= trainer.max_epochs:
        reason = "max_epochs"
    elif any(isinstance(c, Timer) and (c.time_remaining() or 0.0) <= 0 for c in callbacks):
        reason = "max_time"
    elif any(isinstance(c, EarlyStopping) for c in callbacks):
        reason = "early_stopping"
    else:
        reason = "callback"
    return {"epochs_trained": trainer.current_epoch, "global_step": trainer.global_step,
            "stopped_early": reason not in ("max_epochs", "max_steps"), "stop_reason": reason}


def _validate_at_end(trainer: L.Trainer, task: ClassificationTask, datamodule: Any) -> dict[str, float]:
    """Validate the final weights of a run that ended (``max_steps``, ``max_time``) before its first validation, so
    its summary has ``val/`` metrics; warn that callbacks monitoring them saw none."""
    rank_zero_warn(f"training ended at step {trainer.global_step} before its first validation, so callbacks that "
                   "monitor val/ metrics (EarlyStopping, ModelCheckpoint) saw none; the final weights are validated "
                   "once now. To validate during training, set trainer.val_check_interval to a number of batches "
                   "below trainer.max_steps")
    trainer.validate(task, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


class _FirstStep(L.Callback):
    """The optimizer step training starts from (a resumed run's, restored from its checkpoint), so a resume that
    trains on is told from one that only re-reads a finished run."""

    def __init__(self) -> None:
        self.step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.step = trainer.global_step


def _earlier_summary(run_dir: Path) -> dict[str, Any]:
    """``summary.json`` of the session before a resume (``{}`` when it has none or it is not vitlab's): its
    ``val/`` metrics and ``wall_time_s`` carry over (a finished run resumed again validates no more)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(summary, dict):
        return {}
    metrics = summary.get("metrics") if isinstance(summary.get("metrics"), dict) else {}
    wall = summary.get("wall_time_s")
    return {"metrics": {k: float(v) for k, v in metrics.items() if isinstance(k, str)
                        and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)},
            "wall_time_s": float(wall) if isinstance(wall, int | float) and not isinstance(wall, bool)
            and math.isfinite(wall) and wall >= 0 else 0.0}


def _seeded(negatives: NegativesConfig, seed: int) -> NegativesConfig:
    """The negatives section with the run's seed for its views (unless its options set one)."""
    if not negatives.enabled or "seed" in negatives.options:
        return negatives
    return replace(negatives, options={**negatives.options, "seed": seed})


def _checkpoint_epoch(last: Path) -> int | None:
    if not last.is_file():
        return None
    fix = ": restore it, or delete it and its run folder's model.safetensors to train the run again"
    saved = load_lightning_checkpoint(last, fix)
    epoch = saved.get("epoch") if isinstance(saved, dict) else None
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        raise CheckpointError(f"{last} is not a Lightning checkpoint of `vitlab fit` (no epoch){fix}")
    return epoch


def _drop_replayed_rows(run_dir: Path, last: Path) -> None:
    """Rows of the epoch after ``last.ckpt`` (interrupted, replayed by the resume) leave ``metrics.csv``."""
    epoch = _checkpoint_epoch(last)
    if epoch is not None:
        drop_rows_after_epoch(run_dir / "metrics.csv", epoch)


def _non_finite_advice(err: FloatingPointError, config: RunConfig, run_dir: Path, last: Path) -> str:
    """What went wrong, what is kept, and a command that starts over safely."""
    lr = config.optim.lr / 10
    retry = (f"vitlab fit --config {run_dir / 'config.yaml'} --name {config.name}_lr{lr:g} --optim.lr {lr:g} "
             "--trainer.gradient_clip_val 1.0")
    epoch = _checkpoint_epoch(last)
    kept = (f"The last good checkpoint (end of epoch {epoch}, finite weights) is kept at {last}."
            if epoch is not None else "No checkpoint was written (no epoch finished with finite values).")
    first = str(err).splitlines()[0].split(". The last good")[0]
    if str(config.trainer.get("precision")) == "16-true":  # a lower lr or clipping fails the same way
        first = first.split(": lower optim.lr")[0]
        retry = (f"vitlab fit --config {run_dir / 'config.yaml'} --name {config.name}_16mixed "
                 "--trainer.precision 16-mixed")
        return (f"{first}: trainer.precision 16-true keeps the weights and AdamW's moments in float16, where its eps "
                f"(1e-8) is 0 and small updates overflow. Training stopped. {kept} Start a new run with mixed "
                f"precision (16-mixed or bf16-mixed) instead: {retry}")
    return (f"{first}. Training stopped. {kept} Resuming would replay the same steps; start a new run with a lower "
            f"learning rate and gradient clipping instead: {retry}")


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
    metrics: dict[str, float], hashes: list[str], base_sha: str | None, wall_time_s: float, stop: dict[str, Any],
) -> Path:
    model = task.eval_model()
    base_weights = built.weights.describe() if built.weights is not None else None
    recorded = {k: v if math.isfinite(v) else None for k, v in metrics.items()}  # standard JSON: a NaN loss is null
    extra = {"data": datamodule.data_config(), "metrics": recorded, "run": config.name, "peft": asdict(config.peft),
             "base_weights": base_weights}
    if config.peft.method in (None, "full"):
        weights = save_checkpoint(run_dir / "model.safetensors", model.state_dict(), kind="model",
                                  model_name=built.model_name, model_kwargs=built.model_kwargs, extra=extra)
    else:  # merged model.safetensors (what eval reads) + the adaptation alone (adapter/subspace.safetensors)
        weights = export_adapted_model(run_dir, model, model_name=built.model_name, model_kwargs=built.model_kwargs,
                                       base_sha256=base_sha, base_weights=base_weights, extra=extra)[0]
    summary = {"metrics": recorded, "wall_time_s": wall_time_s, "weights_sha256_per_rank": hashes,
               "parameters": sum(p.numel() for p in model.parameters()),
               "trainable_parameters": sum(p.numel() for p in task.model.parameters() if p.requires_grad), **stop}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_training_curves(run_dir / "metrics.csv", run_dir / "training_curves.png")
    return weights
