"""d90 sweeps of random-subspace training (Li et al. 2018), whole model or per module kind (``vitlab intrinsic-dim``).

The config is a run config (as for ``vitlab fit``) with ``peft.method: subspace``. ``peft.options`` holds the
``SubspaceConfig`` fields (``dim`` is replaced by each grid point) and ``sweep``, the ``SweepSettings`` below.
The 100 % reference is the same run with every parameter trained (``model.pretrained`` set: full fine-tuning;
unset: training from scratch), with ``optim.lr``; the subspace runs use ``sweep.lr``.

Everything goes into ``<output_dir>/<name>/`` and a rerun resumes where it stopped:

- ``intrinsic_dim.csv`` (``group, dim, accuracy, seconds``; the ``reference`` row first), ``intrinsic_dim.png``
  (accuracy vs d, log x, the 90 % line) and ``intrinsic_dim.json`` (reference, points, d90 raw and interpolated);
- ``--per_module true`` (instead of the whole-model sweep; the reference is shared): ``intrinsic_dim_per_module.csv`` +
  ``.json`` (the ranked table, see ``vitlab.peft.intrinsic.per_module``; KAdaptation reads the CSV with
  ``target_modules: auto`` and ``options.intrinsic_table: <that path>``), ``intrinsic_dim_per_module.png`` and
  ``intrinsic_dim_per_module_sweep.csv``;
- ``reference/``, ``d<dim>/`` and ``<kind>/d<dim>/``: the ``vitlab fit`` run folders of the ``lightning`` engine.

Example:
    >>> SweepSettings(d_min=10, d_max=1000, num=3).grid(max_dim=500)
    [10, 100, 500]
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from vitlab.checks import check_field_types
from vitlab.errors import ConfigError
from vitlab.study.cache import ensure_cache_matches, read_record, write_record
from vitlab.study.progress import sweep_progress

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from vitlab.peft.intrinsic import SubspaceConfig
    from vitlab.train.config import PeftConfig, RunConfig

__all__ = ["ENGINES", "METRICS", "SweepSettings", "canonical_sweep_key", "run_intrinsic_dim", "sweep_cache_key"]

ENGINES = ("lightning", "plain")
METRICS = ("test/acc", "val/acc")  # the accuracies a `vitlab fit` run reports
SWEEP_CSV, SWEEP_PLOT, SWEEP_JSON = "intrinsic_dim.csv", "intrinsic_dim.png", "intrinsic_dim.json"
#: ``peft.options.sweep`` keys a sweep point's result depends on (the others only choose the grid or read results)
_POINT_KEYS = ("lr", "engine", "metric", "patience")


@dataclass
class SweepSettings:
    """``peft.options.sweep``: how ``vitlab intrinsic-dim`` sweeps d.

    Args:
        dims: explicit d grid; ``None`` uses ``log_grid(d_min, d_max, num)``. Points above D are dropped (D is added).
        d_min: first point of the log-spaced grid.
        d_max: last point of the log-spaced grid.
        num: number of log-spaced points.
        lr: peak learning rate of the subspace runs (``None``: ``optim.lr``); subspace training wants a larger one.
        fraction: 0.9 for d90.
        stop_after_reached: early stop of the grid: skip the larger d once this many points reached the threshold.
        refine_ratio: after the grid, add geometric midpoints between the last d below the threshold and the first
            d reaching it until the two are at most this factor apart, so d90 is a measured point within that factor
            (``None``: the grid only, d90 interpolated across the grid's gap).
        patience: early stopping of each ``lightning`` run: stop after this many epochs without a better
            ``val/acc`` (``None``: train ``trainer.max_epochs``).
        metric: the accuracy a point reports (a metric of ``vitlab fit``: ``test/acc`` or ``val/acc``).
        engine: ``lightning`` (every point is a ``vitlab fit`` run) or ``plain`` (in-memory Adam loop of
            ``vitlab.peft.intrinsic.trainer``, ``trainer.max_epochs`` epochs, final test accuracy; for small nets such
            as Li et al.'s ``mnist_fc``).
        reference: a known 100 % accuracy; ``None`` trains the reference run.
        kinds: module kinds of ``--per_module`` (``None``: every kind the model has).
        published_d90: a published d90 to print beside ours (e.g. 750 for Li et al.'s MNIST FC).
    """

    dims: list[int] | None = None
    d_min: int = 10
    d_max: int = 10_000
    num: int = 7
    lr: float | None = None
    fraction: float = 0.9
    stop_after_reached: int | None = 1
    refine_ratio: float | None = 2.0
    patience: int | None = None
    metric: str = "test/acc"
    engine: str = "lightning"
    reference: float | None = None
    kinds: list[str] | None = None
    published_d90: float | None = None

    def __post_init__(self) -> None:
        check_field_types(self, "peft.options.sweep")  # YAML gives lr: 1e-3 as a string
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, int | float) or not 0 < self.fraction <= 1:
            raise ValueError(f"peft.options.sweep.fraction must be in (0, 1] (0.9 for d90), got {self.fraction!r}")
        if self.metric not in METRICS:
            raise ValueError(f"peft.options.sweep.metric must be one of {METRICS} (what `vitlab fit` reports), got "
                             f"{self.metric!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"peft.options.sweep.engine must be one of {ENGINES}, got {self.engine!r}")
        if self.engine == "plain" and self.metric != "test/acc":
            raise ValueError("the plain engine reports test/acc only; set peft.options.sweep.metric: test/acc")
        if self.patience is not None and (self.patience < 1 or self.engine != "lightning"):
            raise ValueError(f"peft.options.sweep.patience must be >= 1 and needs engine 'lightning' (or null: no "
                             f"early stopping), got {self.patience!r}")
        if self.kinds is not None and (not self.kinds or len(set(self.kinds)) != len(self.kinds)):
            raise ValueError(f"peft.options.sweep.kinds must be a non-empty list of distinct module kinds, or null "
                             f"(every kind the model has), got {self.kinds}")
        if self.kinds is not None:
            from vitlab.peft.intrinsic.per_module import check_module_kinds

            check_module_kinds(self.kinds, "peft.options.sweep.kinds")  # before the reference run, not after it
        if self.stop_after_reached is not None and self.stop_after_reached < 1:
            raise ValueError(f"peft.options.sweep.stop_after_reached must be >= 1 or null (sweep the whole grid), got "
                             f"{self.stop_after_reached!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"peft.options.sweep.lr must be a finite number > 0 (e.g. 0.3), got {self.lr!r}")
        if self.published_d90 is not None and not (math.isfinite(self.published_d90) and self.published_d90 >= 1):
            raise ValueError(f"peft.options.sweep.published_d90 must be a subspace dimension >= 1 (e.g. 750 for Li et "
                             f"al.'s MNIST FC) or null, got {self.published_d90!r}")
        if self.reference is not None and not (math.isfinite(self.reference) and 0 < self.reference <= 1):
            raise ValueError(f"peft.options.sweep.reference must be an accuracy in (0, 1] (e.g. 0.98, not 98), got "
                             f"{self.reference!r}")
        if self.refine_ratio is not None and (isinstance(self.refine_ratio, bool) or not isinstance(
                self.refine_ratio, int | float) or not 1 < self.refine_ratio < math.inf):
            raise ValueError("peft.options.sweep.refine_ratio must be a number > 1 (e.g. 2.0) or null (no refinement), "
                             f"got {self.refine_ratio!r}")
        self.grid(max_dim=None)  # validates dims / d_min / d_max / num now

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> SweepSettings:
        """Read ``options["sweep"]`` (absent: the defaults); unknown keys are refused with the valid ones."""
        values = dict(options.get("sweep") or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown peft.options.sweep key(s) {unknown}; valid keys: {sorted(known)}")
        return cls(**values)

    def grid(self, max_dim: int | None) -> list[int]:
        """The d grid, capped at ``max_dim`` (D, the size of the subspace's parameter space; ``max_dim`` is added)."""
        if self.dims is not None:
            if not self.dims or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in self.dims):
                raise ValueError(f"peft.options.sweep.dims must be a non-empty list of positive ints, got {self.dims}")
            grid = sorted(set(self.dims))
        else:
            from vitlab.peft.intrinsic.sweep import log_grid

            if not 1 <= self.d_min <= self.d_max:
                raise ValueError(f"peft.options.sweep needs 1 <= d_min <= d_max, got d_min={self.d_min}, "
                                 f"d_max={self.d_max}")
            if self.num < 1 or (self.num == 1 and self.d_min != self.d_max):
                raise ValueError(f"peft.options.sweep.num must be >= 2 log-spaced points from d_min={self.d_min} to "
                                 f"d_max={self.d_max} (1 only when they are equal), got {self.num}; or list the "
                                 "points in peft.options.sweep.dims")
            grid = log_grid(self.d_min, self.d_max, self.num)
        if max_dim is None or grid[-1] <= max_dim:
            return grid
        return [d for d in grid if d < max_dim] + [max_dim]


def sweep_cache_key(config: RunConfig) -> dict[str, Any]:
    """What the cached runs of a sweep depend on: the run config and the SHA-256 of the pretrained weights, if any.

    Only what changes a point's result counts, spelled one way (`canonical_sweep_key`): ``name`` and ``output_dir``
    (the folder itself) and ``peft.options.dim`` (replaced by each grid point) are left out, as are the grid keys of
    ``peft.options.sweep`` (each point is cached by itself); the ``SubspaceConfig`` options and the point keys of
    ``sweep`` (``lr``, ``engine``, ``metric``, ``patience``) are resolved, so writing a default out does not make
    another experiment.

    Example:
        >>> from vitlab.train.config import RunConfig
        >>> key = sweep_cache_key(RunConfig(name="x"))
        >>> key["pretrained_sha256"] is None and "name" not in key["config"] and "optim" in key["config"]
        True
        >>> options = key["config"]["peft"]["options"]
        >>> options["projection_norm"], options["projection"], options["sweep"]["metric"]
        ('per_tensor', 'fastfood', 'test/acc')
    """
    from vitlab.peft.intrinsic import SubspaceConfig

    config_dict = asdict(config)
    options = config_dict["peft"]["options"]
    # the default projection_norm changed from global to per_tensor: a record without the key was made with global
    options["projection_norm"] = options.get("projection_norm") or SubspaceConfig(dim=1).projection_norm
    pretrained = config.model.pretrained
    digest = None
    if pretrained:
        from vitlab.checkpoint import resolve_pretrained

        digest = resolve_pretrained(pretrained, config.model.name).describe()["sha256"]
    return canonical_sweep_key({"config": config_dict, "pretrained_sha256": digest})


def canonical_sweep_key(key: dict[str, Any]) -> dict[str, Any]:
    """``key`` (a `sweep_cache_key`, or the record of a sweep made by an earlier vitlab) in its one spelling.

    Records of earlier versions kept ``name``, ``output_dir``, ``peft.options.dim`` and the options as written, and
    left ``projection_norm`` out when it was ``global`` (the only form before the option existed); here a missing
    ``projection_norm`` therefore reads as ``global``.

    Example:
        >>> old = {"config": {"name": "a", "output_dir": "runs", "optim": {"lr": 0.1},
        ...                   "peft": {"options": {"dim": 8, "sweep": {"lr": 0.3, "num": 4}}}}}
        >>> canonical_sweep_key(old)["config"]["peft"]["options"]["projection_norm"]
        'global'
        >>> sorted(canonical_sweep_key(old)["config"])
        ['optim', 'peft']
    """
    from vitlab.peft.intrinsic import SubspaceConfig

    config = {k: v for k, v in key["config"].items() if k not in ("name", "output_dir")}
    peft = dict(config["peft"])
    options = {k: v for k, v in peft["options"].items() if k not in ("dim", "sweep", "target_modules")}
    options.setdefault("projection_norm", "global")
    resolved = SubspaceConfig(dim=1, **options).to_dict()
    sweep, defaults = dict(peft["options"].get("sweep") or {}), SweepSettings()
    resolved["sweep"] = {k: getattr(defaults, k) if sweep.get(k) is None else sweep[k] for k in _POINT_KEYS}
    peft["options"] = {k: v for k, v in resolved.items() if k not in ("dim", "target_modules")}
    config["peft"] = peft
    return {**key, "config": config}


def run_intrinsic_dim(config: RunConfig, per_module: bool = False, dims: list[int] | None = None,
                      reuse_cached_as_is: bool = False) -> dict[str, Any]:
    """Run (or resume) the d90 sweep of ``config``, or with ``per_module`` the per-module sweeps and ranked table.

    Args:
        config: a run config with ``peft.method: subspace`` (see the module docstring).
        per_module: sweep each module kind alone (plus the head) instead of the whole model; writes the table.
        dims: overrides ``peft.options.sweep.dims``.
        reuse_cached_as_is: resume a sweep folder even when another configuration made its runs (by default that is
            refused with the differing keys named; see `sweep_cache_key` and `vitlab.study.cache`).

    Returns:
        ``reference``, ``threshold`` and ``folder``; the whole-model sweep adds ``points`` ``{d: accuracy}``, ``d90``
        (grid value or ``None``), ``d90_interpolated``, ``refined`` (points added off the grid) and ``refine_ratio``,
        ``complete``, ``published_d90``, ``metric`` and ``eval_images`` (how many images each accuracy is measured
        on: the test set for ``test/acc``, the validation split for ``val/acc``) and the file paths (also written to
        ``intrinsic_dim.json``); ``per_module``
        adds the ranked rows and ``table`` (the CSV path). Both name ``projection`` and ``projection_norm``.
    """
    from vitlab.peft.intrinsic import SubspaceConfig, subspace_size
    from vitlab.peft.intrinsic.per_module import (
        PER_MODULE_CSV,
        available_module_kinds,
        module_kind_targets,
        run_per_module_sweep,
    )
    from vitlab.peft.intrinsic.per_module import SWEEP_CSV as PER_MODULE_SWEEP_CSV
    from vitlab.peft.intrinsic.sweep import read_sweep, run_sweep

    if config.peft.method != "subspace":
        raise ValueError(f"vitlab intrinsic-dim needs peft.method: subspace, got {config.peft.method!r}")
    for flag, value in (("per_module", per_module), ("reuse_cached_as_is", reuse_cached_as_is)):
        if not isinstance(value, bool):  # a truthy string ('no') ran the per-module sweep
            raise ConfigError(f"{flag} must be True or False, got {value!r}")
    options = {k: v for k, v in config.peft.options.items() if k not in ("sweep", "dim")}
    settings = SweepSettings.from_options(config.peft.options)
    if isinstance(dims, int) and not isinstance(dims, bool):
        dims = [dims]  # one point, as `--dims 1000`
    if dims is not None:
        if isinstance(dims, str | bytes | Mapping) or not isinstance(dims, Iterable):  # '10' was read as [1, 0]
            raise ConfigError(f"dims must be a list of positive ints (the d grid, e.g. [10, 100, 1000]) or one int, "
                              f"got {dims!r}")
        settings = replace(settings, dims=list(dims))
    needs_val = [what for what, used in (("sweep.metric: val/acc", settings.metric == "val/acc"),
                                         ("sweep.patience", settings.patience is not None)) if used]
    if needs_val and not config.data.val_fraction:
        raise ValueError(f"peft.options.{' and peft.options.'.join(needs_val)} need a validation split, but "
                         "data.val_fraction is 0: set data.val_fraction (e.g. 0.1), or use sweep.metric: test/acc and "
                         "sweep.patience: null")
    if config.model.name == "mnist_fc" and settings.engine != "plain":
        raise ValueError("model mnist_fc (Li et al.'s MNIST network) is not a timm model that `vitlab fit` builds: set "
                         "peft.options.sweep.engine: plain (as configs/intrinsic_dim_mnist_fc.yaml does)")
    probe = SubspaceConfig(dim=1, target_modules=config.peft.target_modules, **options)  # validates the options now
    projection = dict(projection=probe.projection, projection_norm=probe.projection_norm)
    folder = Path(config.output_dir) / config.name
    key = sweep_cache_key(config)
    if any((folder / name).is_file() for name in (SWEEP_CSV, PER_MODULE_SWEEP_CSV)):
        record = read_record(folder)
        if record is not None and record["config"] != key:  # a record of an earlier vitlab: compare like with like
            try:
                write_record(folder, canonical_sweep_key(record["config"]))
            except (KeyError, TypeError, ValueError, AttributeError):
                pass  # not a sweep record vitlab can read: ensure_cache_matches names what differs
        ensure_cache_matches(folder, key, "an intrinsic-dimension sweep", reuse_cached_as_is)
    else:
        write_record(folder, key)
    (folder / "intrinsic_dim_config.yaml").write_text(yaml.safe_dump(asdict(config), sort_keys=False))
    engine = (_LightningEngine if settings.engine == "lightning" else _PlainEngine)(config, settings, folder)
    base = engine.base_model()
    train_head, heads = bool(options.get("train_head")), options.get("head_modules")
    kinds = available_module_kinds(base) if settings.kinds is None else settings.kinds
    planned = [(k, d) for k in kinds for d in settings.grid(None)] if per_module else [("all", d) for d in
                                                                                       settings.grid(None)]
    done = {(row["group"], row["dim"]) for name in (SWEEP_CSV, PER_MODULE_SWEEP_CSV) if (folder / name).is_file()
            for row in read_sweep(folder / name)}
    todo = len(set(planned) - done) + (settings.reference is None and ("reference", None) not in done)
    with sweep_progress(todo, f"intrinsic-dim {config.name}") as bar:

        def counted(run: Callable[..., float]) -> Callable[..., float]:
            def run_and_count(*args: Any) -> float:
                value = run(*args)
                bar.update(1)
                return value

            return run_and_count

        reference: float | Callable[[], float] = settings.reference or counted(engine.reference)
        common = dict(reference=reference, fraction=settings.fraction, stop_after_reached=settings.stop_after_reached,
                      refine_ratio=settings.refine_ratio)
        if per_module:

            @counted
            def kind_point(kind: str, dim: int) -> float:
                targets = module_kind_targets(base, kind, include_head=not train_head, head_modules=heads)
                return engine.subspace(SubspaceConfig(dim=dim, target_modules=targets, **options), f"{kind}/d{dim}")

            if config.peft.target_modules is not None:
                print(f"intrinsic-dim: --per_module puts one module kind (and the head) in the subspace at a time; "
                      f"peft.target_modules {config.peft.target_modules!r} applies to the whole-model sweep only",
                      flush=True)
            present = available_module_kinds(base)
            for kind in [k for k in kinds if k in present]:
                targets = module_kind_targets(base, kind, include_head=not train_head, head_modules=heads)
                size = subspace_size(base, SubspaceConfig(dim=1, target_modules=targets, **options))
                above = [d for d in settings.grid(None) if d > size]
                if above:
                    print(f"intrinsic-dim: {kind}: d = {above} exceed the {size:,} parameters in its subspace and are "
                          "skipped", flush=True)
            records = run_per_module_sweep(base, kind_point, settings.grid(None), folder, kinds=settings.kinds,
                                           head_modules=heads, include_head=not train_head, **common)
            return dict(reference=records[0].reference_accuracy, threshold=records[0].threshold, folder=str(folder),
                        per_module=[asdict(r) for r in records], table=str(folder / PER_MODULE_CSV), **projection)

        @counted
        def point(dim: int) -> float:
            return engine.subspace(SubspaceConfig(dim=dim, target_modules=config.peft.target_modules, **options),
                                   f"d{dim}")

        max_dim = subspace_size(base, SubspaceConfig(dim=1, target_modules=config.peft.target_modules, **options))
        above = [d for d in settings.grid(None) if d > max_dim]
        if above:
            print(f"intrinsic-dim: d = {above} exceed the {max_dim:,} trainable parameters D; the grid stops at D "
                  f"(d = D is the full fine-tuning of those parameters)", flush=True)
        result = run_sweep(point, settings.grid(max_dim), folder / SWEEP_CSV, plot_path=folder / SWEEP_PLOT,
                           **common)
    if result.reference is None or result.d90 is None:
        raise ValueError(f"{folder / SWEEP_CSV} has no reference or no point yet (another process may be running "
                         "them); run again when it is done to collect the results")
    summary = dict(reference=result.reference, threshold=result.d90.threshold, folder=str(folder),
                   points=result.points, d90=result.d90.raw, d90_interpolated=result.d90.interpolated,
                   refined=list(result.refined), refine_ratio=settings.refine_ratio, complete=result.complete,
                   published_d90=settings.published_d90, csv=str(folder / SWEEP_CSV),
                   plot=str(folder / SWEEP_PLOT), metric=settings.metric, eval_images=engine.eval_images(),
                   **projection)
    (folder / SWEEP_JSON).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


class _LightningEngine:
    """Every run is a ``vitlab.train.fit`` run folder under the sweep folder (resumed from its ``last.ckpt``)."""

    def __init__(self, config: RunConfig, settings: SweepSettings, folder: Path) -> None:
        self.config, self.settings, self.folder = config, settings, folder

    def base_model(self) -> nn.Module:
        from vitlab.train.run import build_run_datamodule, build_run_model, resolve_run_weights

        weights = resolve_run_weights(self.config)
        dm = build_run_datamodule(self.config, weights)  # channels and normalisation follow the weights, as in fit
        return build_run_model(self.config, dm.num_classes, dm.in_chans, weights).model

    def _run(self, name: str, peft: PeftConfig, lr: float) -> float:
        from vitlab.train.run import fit

        run_dir = self.folder / name
        summary = run_dir / "summary.json"
        if summary.exists():
            metrics = json.loads(summary.read_text())["metrics"]
        else:
            resume = (run_dir / "checkpoints" / "last.ckpt").exists()
            if run_dir.exists() and not resume:
                shutil.rmtree(run_dir)  # the sweep's own run, interrupted with nothing to resume from: start over
            # "<kind>/d<dim>" is the run d<dim> in the folder <kind>/ (a run name is a plain folder name)
            config = replace(self.config, name=run_dir.name, output_dir=str(run_dir.parent), peft=peft,
                             optim=replace(self.config.optim, lr=lr))
            callbacks = []
            if self.settings.patience is not None:
                from lightning.pytorch.callbacks import EarlyStopping

                callbacks.append(EarlyStopping(monitor="val/acc", mode="max", patience=self.settings.patience,
                                               check_on_train_epoch_end=False))
            metrics = fit(config, resume=resume, callbacks=callbacks).metrics
        if self.settings.metric not in metrics:
            raise ValueError(f"metric {self.settings.metric!r} is not among the run's metrics {sorted(metrics)}; "
                             "set peft.options.sweep.metric to one of them")
        return float(metrics[self.settings.metric])

    def reference(self) -> float:
        from vitlab.train.config import PeftConfig

        return self._run("reference", PeftConfig(), self.config.optim.lr)

    def eval_images(self) -> int:
        """Images behind ``settings.metric``: the validation split for ``val/acc``, else the test set."""
        from vitlab.train.run import build_run_datamodule, resolve_run_weights

        dm = build_run_datamodule(self.config, resolve_run_weights(self.config))
        dm.prepare_data()
        dm.setup("fit")
        return len(dm.val_dataset if self.settings.metric.startswith("val/") else dm.test_dataset)

    def subspace(self, config: SubspaceConfig, name: str) -> float:
        from vitlab.train.config import PeftConfig

        options = {k: v for k, v in config.to_dict().items() if k != "target_modules"}
        peft = PeftConfig(method="subspace", target_modules=config.target_modules, options=options)
        return self._run(name, peft, self.settings.lr or self.config.optim.lr)


class _PlainEngine:
    """In-memory training with ``fit_classifier`` (Adam, cosine, ``trainer.max_epochs`` epochs, batch ``data``)."""

    def __init__(self, config: RunConfig, settings: SweepSettings, folder: Path) -> None:
        from vitlab.peft.intrinsic.trainer import FitSettings

        self.config, self.settings, self.folder = config, settings, folder
        data = config.data
        if data.mixup or data.cutmix or data.augment != "none":
            raise ValueError("the plain engine trains on a fixed in-memory copy of the data: set data.augment: none "
                             "and data.mixup/cutmix: 0, or use peft.options.sweep.engine: lightning")
        self.device = plain_engine_device(config.trainer)  # before the data is loaded
        self.train, self.test, self.num_classes = _load_tensors(config)
        epochs = int(config.trainer.get("max_epochs", 10))
        self.fit_settings = FitSettings(epochs=epochs, batch_size=data.batch_size, lr=config.optim.lr,
                                        seed=config.seed)

    def base_model(self) -> nn.Module:
        kwargs = dict(self.config.model.kwargs)
        if self.config.model.name == "mnist_fc":
            from vitlab.peft.intrinsic.mnist_fc import MnistFC

            in_features = int(self.train[0][0].numel())
            return MnistFC(in_features, num_classes=self.num_classes, seed=self.config.seed, **kwargs).to(self.device)
        import torch

        from vitlab.train.run import build_run_model

        # the same θ₀ for the reference and every subspace run; timm initialises from the global RNG, so it is seeded
        # in a forked state that is restored afterwards (the caller's global RNG is neither drawn from nor reseeded)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            return build_run_model(self.config, self.num_classes, int(self.train[0].shape[1])).model.to(self.device)

    def eval_images(self) -> int:
        """Images behind the accuracy (the plain engine reports ``test/acc``): the test set's size."""
        return len(self.test[1])

    def reference(self) -> float:
        from vitlab.peft.intrinsic.trainer import fit_classifier

        cache = self.folder / "reference" / "summary.json"
        if not cache.exists():
            accuracy = fit_classifier(self.base_model(), self.train, self.test, self.fit_settings).accuracy
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"metrics": {"test/acc": accuracy}}) + "\n")
        return float(json.loads(cache.read_text())["metrics"]["test/acc"])

    def subspace(self, config: SubspaceConfig, name: str) -> float:
        from vitlab.peft.intrinsic import wrap_in_subspace
        from vitlab.peft.intrinsic.trainer import fit_classifier

        settings = replace(self.fit_settings, lr=self.settings.lr or self.fit_settings.lr)
        return fit_classifier(wrap_in_subspace(self.base_model(), config), self.train, self.test, settings).accuracy


#: The trainer keys the plain engine honours (or that change nothing it computes: progress and logging switches).
PLAIN_ENGINE_TRAINER_KEYS = frozenset({
    "accelerator", "devices", "precision", "max_epochs", "enable_progress_bar", "enable_model_summary",
    "log_every_n_steps", "logger", "callbacks", "enable_checkpointing", "num_sanity_val_steps", "deterministic",
    "default_root_dir"})


def plain_engine_device(trainer: dict[str, Any]) -> torch.device:
    """The device the plain engine trains on, read from a run's ``trainer`` section as Lightning would read it.

    ``accelerator``: ``cpu`` the CPU, ``gpu`` / ``cuda`` the first CUDA GPU, ``auto`` (the default) a CUDA GPU when
    there is one. Settings the in-memory loop cannot honour (several devices, another precision, another accelerator,
    ``max_steps``, ``limit_*_batches`` and every other training option but ``max_epochs``) are refused rather than
    ignored.

    Example:
        >>> plain_engine_device({"accelerator": "cpu", "max_epochs": 3})
        device(type='cpu')
        >>> plain_engine_device({"accelerator": "cpu", "precision": "bf16-mixed"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: trainer.precision 'bf16-mixed': the plain engine trains in float32 only; remove it, or use ...
    """
    import torch

    from vitlab.train.config import check_accelerator

    lightning = "or use peft.options.sweep.engine: lightning"
    accelerator = trainer.get("accelerator", "auto")
    if accelerator not in ("auto", "cpu", "gpu", "cuda"):
        check_accelerator(accelerator, "trainer.accelerator")  # an unknown name: Lightning's list
        raise ValueError(f"trainer.accelerator {accelerator!r}: the plain engine runs on the CPU or a CUDA GPU; set "
                         f"cpu, gpu or auto, {lightning}")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.accelerator {accelerator!r}: this machine has no CUDA GPU that torch can use; set "
                         "trainer.accelerator: cpu (or auto: a GPU when there is one)")
    devices = trainer.get("devices", 1)
    if devices not in (1, "1", "auto", None) and devices != [0]:
        raise ValueError(f"trainer.devices {devices!r}: the plain engine trains on one device; set trainer.devices: 1, "
                         + lightning)
    precision = trainer.get("precision")
    if precision not in (None, 32, "32", "32-true"):
        raise ValueError(f"trainer.precision {precision!r}: the plain engine trains in float32 only; remove it, "
                         + lightning)
    import inspect

    import lightning as L

    defaults = {name: p.default for name, p in inspect.signature(L.Trainer.__init__).parameters.items()}
    ignored = sorted(key for key, value in trainer.items() if key not in PLAIN_ENGINE_TRAINER_KEYS
                     and (key not in defaults or value != defaults[key]))  # Lightning's own defaults change nothing
    if ignored:
        raise ValueError(f"trainer {ignored}: the plain engine trains trainer.max_epochs full epochs and honours no "
                         f"other training option; remove them, {lightning}")
    use_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_gpu else "cpu")


def _load_tensors(config: RunConfig) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], int]:
    """The training split and the test set as in-memory ``(images [N, C, H, W], labels [N])``, and the classes."""
    import torch

    from vitlab.train.run import build_run_datamodule, resolve_run_weights

    dm = build_run_datamodule(config, resolve_run_weights(config))  # as `vitlab fit` builds it
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")

    def collect(loader: Any) -> tuple[Tensor, Tensor]:
        batches = list(loader)
        return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])

    return collect(dm.train_dataloader()), collect(dm.test_dataloader()), dm.num_classes

