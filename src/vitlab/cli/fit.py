"""``vitlab fit``: train from a YAML config with ``--section.key value`` overrides."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from vitlab.train.config import DataConfig, ModelConfig, NegativesConfig, OptimConfig, PeftConfig, RunConfig

__all__ = ["add_run_arguments", "build_fit_parser", "namespace_to_run_config", "parse_run_config"]

SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "negatives": NegativesConfig,
    "peft": PeftConfig,
}
# Trainer arguments vitlab sets itself (run folder, logger, callbacks).
_TRAINER_SKIP = {"logger", "callbacks", "default_root_dir", "plugins", "enable_checkpointing", "model_registry"}


def add_run_arguments(parser: ArgumentParser) -> ArgumentParser:
    """Add ``--config``, the top-level keys and every config section (see ``vitlab.train.config``) to ``parser``."""
    parser.add_argument("--config", action=ActionConfigFile, help="YAML run configuration (configs/*.yaml)")
    parser.add_argument("--name", type=str, default="run", help="run name: the run folder is <output_dir>/<name>")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random number generator")
    parser.add_argument("--output_dir", type=str, default="runs", help="parent folder of run folders")
    for section, config_class in SECTIONS.items():
        parser.add_class_arguments(config_class, section)
    parser.add_class_arguments(L.Trainer, "trainer", skip=_TRAINER_SKIP, fail_untyped=False)
    from vitlab.train.run import TRAINER_DEFAULTS

    parser.set_defaults({f"trainer.{key}": value for key, value in TRAINER_DEFAULTS.items()})
    return parser


def build_fit_parser() -> ArgumentParser:
    """The ``vitlab fit`` parser."""
    parser = ArgumentParser(
        prog="vitlab fit",
        description="Train a model from a YAML config; every key can be overridden as --section.key value. "
        "Writes runs/<name>/ (config.yaml, checkpoints/last.ckpt, metrics.csv, model.safetensors, curves).",
    )
    add_run_arguments(parser)
    parser.add_argument("--resume", type=bool, default=False, help="continue from <run>/checkpoints/last.ckpt")
    return parser


def namespace_to_run_config(ns: Namespace) -> RunConfig:
    """Turn a parsed namespace (from ``add_run_arguments``) into a ``RunConfig``."""
    sections = {name: cls(**ns[name].as_dict()) for name, cls in SECTIONS.items()}
    trainer = {k: v for k, v in ns.trainer.as_dict().items() if v is not None}
    return RunConfig(name=ns.name, seed=ns.seed, output_dir=ns.output_dir, trainer=trainer, **sections)


def parse_run_config(args: Sequence[str]) -> tuple[RunConfig, bool]:
    """Parse ``vitlab fit`` arguments; returns ``(config, resume)``. A misspelt key exits with an error naming it."""
    ns = build_fit_parser().parse_args(list(args))
    return namespace_to_run_config(ns), ns.resume


def run_fit(ns: Namespace) -> None:
    from vitlab.train.run import fit

    config = namespace_to_run_config(ns)
    result = fit(config, resume=ns.resume)
    print(f"run folder: {result.run_dir}")
    for key, value in sorted(result.metrics.items()):
        print(f"  {key}: {value:.4f}")
