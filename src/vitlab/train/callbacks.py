"""The harness's Lightning loggers and callbacks: the user's choice from the ``trainer`` section, plus vitlab's own.

- ``build_loggers(spec, run_dir)``: ``trainer.logger`` in LightningCLI's ``class_path`` / ``init_args`` form (one or a
  list; a bare class name is looked up in ``lightning.pytorch.loggers``), always with the CSV log that vitlab's plots
  read (``AppendingCSVLogger``: a resumed run appends to ``metrics.csv`` instead of deleting it);
- ``build_callbacks(spec)``: ``trainer.callbacks`` in the same form (``lightning.pytorch.callbacks``);
- ``FiniteGuard``: stops the run, before any checkpoint of that epoch is written, when a parameter or ``val/loss`` is
  not finite, so ``last.ckpt`` only ever holds good weights.

Example:
    >>> import tempfile
    >>> loggers = build_loggers({"class_path": "TensorBoardLogger"}, tempfile.mkdtemp())
    >>> [type(x).__name__ for x in loggers]
    ['AppendingCSVLogger', 'TensorBoardLogger']
"""

from __future__ import annotations

import csv
import importlib
import inspect
import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from vitlab.errors import ConfigError

__all__ = ["AppendingCSVLogger", "FiniteGuard", "build_callbacks", "build_loggers", "check_monitors"]


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, but an existing ``metrics.csv`` is kept (its header seeds the known keys)."""

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if path.is_file():
            with path.open(newline="") as handle:
                self.metrics_keys = sorted(csv.DictReader(handle).fieldnames or [])


class AppendingCSVLogger(CSVLogger):
    """``CSVLogger`` that appends to an existing ``metrics.csv`` (a resumed run keeps its earlier curves)."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def drop_rows_after_epoch(metrics_csv: str | Path, epoch: int) -> None:
    """Remove rows logged after ``epoch`` (an interrupted epoch a resume replays) from a ``metrics.csv``."""
    path = Path(metrics_csv)
    if not path.is_file():
        return
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fieldnames, rows = reader.fieldnames or [], list(reader)
    kept = [row for row in rows if not row.get("epoch") or float(row["epoch"]) <= epoch]
    if len(kept) != len(rows):
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(kept)


def _instantiate(spec: Any, package: str, base: type, what: str, defaults: dict[str, Any]) -> Any:
    if isinstance(spec, base):  # an instance the caller built in Python is used as it is
        return spec
    if isinstance(spec, str) and spec.lstrip()[:1] in ("{", "["):
        raise ConfigError(f"trainer.{what} {spec!r} was read as text, not as a mapping or list: YAML needs a space "
                          "after each ':', e.g. {class_path: EarlyStopping, init_args: {monitor: val/acc}}")
    if isinstance(spec, str):
        spec = {"class_path": spec}
    if not isinstance(spec, dict) or "class_path" not in spec or set(spec) - {"class_path", "init_args"}:
        space = " (YAML needs a space after each ':')" if isinstance(spec, dict) and any(":" in str(k) for k in spec) \
            else ""
        raise ConfigError(f"trainer.{what} entries take the form {{class_path: NAME, init_args: {{...}}}}, "
                          f"got {spec!r}{space}")
    path, init_args = spec["class_path"], dict(spec.get("init_args") or {})
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name or package), class_name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"trainer.{what}: cannot import {path!r} ({err}); use a class of {package} or a full "
                          "module path (and install the package it needs)") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"trainer.{what}: {path} is not a {base.__module__}.{base.__name__}")
    accepted = inspect.signature(cls).parameters
    for key, value in defaults.items():
        if key in accepted:
            init_args.setdefault(key, value)
    try:
        return cls(**init_args)
    except Exception as err:  # the named class refused the user's init_args (MLflow, W&B raise their own types)
        reason = " ".join(str(err).split())
        raise ConfigError(f"trainer.{what}: {path}({init_args}) failed: {type(err).__name__}: {reason}") from None


def _as_list(spec: Any) -> list[Any]:
    """``None`` / ``false`` (also the strings a command line gives) mean none; one item or a list of them."""
    if spec is None or spec is False or (isinstance(spec, str) and spec.strip().lower() in ("", "false", "none",
                                                                                             "null")):
        return []
    return list(spec) if isinstance(spec, list | tuple) else [spec]


def build_loggers(spec: Any, run_dir: str | Path) -> list[Logger]:
    """vitlab's ``metrics.csv`` logger, then the loggers ``spec`` names (saving into the run folder by default).

    ``spec``: ``None`` / ``false`` (none), a class name or ``{class_path, init_args}`` mapping, a ``Logger`` instance,
    or a list of these. ``~`` in ``run_dir`` is expanded.

    ``spec`` ``true`` is Lightning's ``logger=True``: its default logger, TensorBoard when installed (else its CSV
    logger, which ``metrics.csv`` already is).
    """
    if not isinstance(run_dir, str | os.PathLike) or not str(run_dir):
        raise TypeError(f"build_loggers: run_dir takes the run folder's path (a str or Path), got {run_dir!r}")
    run_dir = str(Path(run_dir).expanduser())
    if spec is True or (isinstance(spec, str) and spec.strip().lower() == "true"):
        import importlib.util

        has_tensorboard = any(importlib.util.find_spec(name) for name in ("tensorboard", "tensorboardX"))
        spec = "TensorBoardLogger" if has_tensorboard else None
    loggers: list[Logger] = [AppendingCSVLogger(run_dir, name="", version="")]
    # MLflow: a SQLite store in the run folder (its plain-file store is deprecated); W&B: offline unless told
    defaults = {"save_dir": run_dir, "tracking_uri": f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}",
                "offline": True}
    for item in _as_list(spec):
        logger = _instantiate(item, "lightning.pytorch.loggers", Logger, "logger", defaults)
        try:
            logger.experiment  # noqa: B018  (starts the logger now: a store it refuses is an option error, not a crash)
        except Exception as err:  # any logger library's refusal (MLflow's plain-file store, a bad URI, ...)
            reason = " ".join(str(err).split())
            raise ConfigError(f"trainer.logger: {type(logger).__name__} could not start ({type(err).__name__}: "
                              f"{reason}); fix its init_args") from err
        if isinstance(logger, CSVLogger) and not isinstance(logger, AppendingCSVLogger) \
                and Path(logger.log_dir) == Path(run_dir):
            raise ConfigError("trainer.logger: vitlab already writes metrics.csv into the run folder; give this "
                              "CSVLogger another save_dir or drop it")
        loggers.append(logger)
    return loggers


def build_callbacks(spec: Any) -> list[L.Callback]:
    """The callbacks ``spec`` names (``lightning.pytorch.callbacks`` classes, or full paths, with ``init_args``);
    ``Callback`` instances in ``spec`` are kept as they are."""
    return [_instantiate(item, "lightning.pytorch.callbacks", L.Callback, "callbacks", {}) for item in _as_list(spec)]


_LOSSES = ("val/loss", "train/loss", "train/loss_step", "train/loss_epoch", "train/loss_ce")


def check_monitors(callbacks: L.Callback | list[L.Callback], names: list[str], prefixes: list[str] = ()) -> None:
    """Refuse a callback whose ``monitor`` (``EarlyStopping``, ``ModelCheckpoint``, ...) names a metric the run never
    logs during training (Lightning would find out only after the first epoch, with a traceback), or watches an
    accuracy with ``mode: min`` / a loss with ``mode: max`` (Lightning's default ``min`` on ``val/acc`` stops early
    as accuracy rises, or keeps the worst checkpoint).

    Args:
        callbacks: the trainer's callbacks, or one (a ``monitor`` of ``None`` watches nothing and is fine).
        names: the metric names logged during training (`ClassificationTask.monitorable_metrics`).
        prefixes: families of names whose members are only known once training runs (a loss term's metrics).

    Raises:
        ConfigError: the callback, the name and the names that can be monitored.

    Example:
        >>> from lightning.pytorch.callbacks import EarlyStopping
        >>> check_monitors([EarlyStopping(monitor="val/acc", mode="max")], ["val/acc", "val/loss"])
        >>> check_monitors([EarlyStopping(monitor="val/acc")], ["val/acc"])
        Traceback (most recent call last):
        ...
        vitlab.errors.ConfigError: trainer.callbacks: EarlyStopping monitors 'val/acc' with mode 'min' (Lightning's \
default is 'min'), but val/acc is better when higher: set init_args.mode: max
    """
    if isinstance(callbacks, L.Callback):
        callbacks = [callbacks]
    if isinstance(names, str):
        names = [names]
    for callback in callbacks:
        if not isinstance(callback, L.Callback):
            raise TypeError(f"check_monitors takes Lightning callbacks, got {callback!r}: build them first "
                            "(build_callbacks)")
        monitor = getattr(callback, "monitor", None)
        if monitor is None:
            continue
        better = "max" if monitor in ("val/acc", "train/acc") else "min" if monitor in _LOSSES else None
        mode = getattr(callback, "mode", None)
        if better is not None and mode in ("min", "max") and mode != better:
            raise ConfigError(f"trainer.callbacks: {type(callback).__name__} monitors {monitor!r} with mode {mode!r} "
                              f"(Lightning's default is 'min'), but {monitor} is better when "
                              f"{'higher' if better == 'max' else 'lower'}: set init_args.mode: {better}")
        if monitor in names or any(str(monitor).startswith(p) for p in prefixes):
            continue
        when = " (test metrics exist only after training)" if str(monitor).startswith("test/") else ""
        known = ", ".join([*names, *(f"{p}..." for p in prefixes)])
        raise ConfigError(f"trainer.callbacks: {type(callback).__name__} monitors {monitor!r}, which the run does not "
                          f"log during training{when}: monitor one of {known}")


class FiniteGuard(L.Callback):
    """Raise ``FloatingPointError`` at the end of an epoch whose parameters or ``val/loss`` are not finite.

    Lightning runs checkpoint callbacks after all others, so the epoch's ``last.ckpt`` is never written: the last
    checkpoint on disk is the last good one. ``bad_epoch`` records where it happened.
    """

    def __init__(self) -> None:
        self.bad_epoch: int | None = None

    def _check(self, trainer: L.Trainer, module: L.LightningModule, val: bool) -> None:
        if trainer.sanity_checking:
            return
        bad = [name for name, p in module.named_parameters() if not torch.isfinite(p.detach()).all()]
        loss = trainer.callback_metrics.get("val/loss") if val else None
        if bad or (loss is not None and not math.isfinite(float(loss))):
            self.bad_epoch = trainer.current_epoch
            what = f"parameters {', '.join(bad[:5])}" if bad else f"val/loss ({float(loss)})"
            raise FloatingPointError(f"non-finite {what} at the end of epoch {trainer.current_epoch}")

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._check(trainer, module, val=True)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._check(trainer, module, val=False)
