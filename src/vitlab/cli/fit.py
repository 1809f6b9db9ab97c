"""``vitlab fit``: train from a YAML config with ``--section.key value`` overrides.

Building the parser imports vitlab's config dataclasses and Lightning (for the ``trainer`` section); ``vitlab fit
--help`` builds it with ``help_only=True``, which reads the ``trainer`` options from Lightning's source instead of
importing Lightning, so help answers quickly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from jsonargparse import ArgumentParser, Namespace

from vitlab.train.arguments import SECTION_NAMES, add_run_arguments, namespace_to_run_config, parse_run_namespace

if TYPE_CHECKING:
    from vitlab.train.config import RunConfig

__all__ = ["build_fit_parser", "check_ckpt_path", "parse_run_config", "resumed_run_config", "run_fit"]


def build_fit_parser(help_only: bool = False) -> ArgumentParser:
    """The ``vitlab fit`` parser (``help_only``: for ``--help``, see `add_run_arguments`)."""
    parser = ArgumentParser(
        prog="vitlab fit",
        description="Train a model from a YAML config; every key can be overridden as --section.key value. "
        "Writes runs/<name>/ (config.yaml, checkpoints/last.ckpt, metrics.csv, model.safetensors, curves).",
    )
    add_run_arguments(parser, help_only)
    parser.add_argument("--resume", type=bool, nargs="?", const=True, default=False,
                        help="continue from <run>/checkpoints/last.ckpt")
    parser.add_argument("--ckpt_path", type=str | None, default=None,
                        help="LightningCLI's resume option, not used by vitlab: a run resumes from its own folder "
                        "with --name NAME --resume true (the error says the command for a given checkpoint)")
    return parser


def check_ckpt_path(ckpt_path: str | None, output_dir: str = "runs") -> None:
    """Refuse LightningCLI's ``--ckpt_path``, naming the vitlab command that does what the user wants.

    A vitlab run resumes from its own folder with its saved config (``--name NAME --resume true``); new weights start
    from a checkpoint with ``model.pretrained``.

    Raises:
        ConfigError: whenever ``ckpt_path`` is given.

    Example:
        >>> check_ckpt_path(None)  # not given: nothing to do
    """
    from vitlab.errors import ConfigError

    if ckpt_path is None:
        return
    path = Path(ckpt_path)
    run_dir = path.parent.parent
    if path.parent.name == "checkpoints" and (run_dir / "config.yaml").is_file():
        fix = f"`vitlab fit --name {run_dir.name} --output_dir {run_dir.parent} --resume true`"
        if (run_dir / "model.safetensors").is_file():
            fix += f"; to start a new run from its final weights, set --model.pretrained {run_dir}"
    else:
        fix = f"`vitlab fit --name NAME --output_dir {output_dir} --resume true` (NAME: the run folder holding it)"
    raise ConfigError(f"--ckpt_path {ckpt_path}: vitlab resumes a run from its own folder with its saved config: "
                      f"{fix}")


def parse_run_config(args: Sequence[str]) -> tuple[RunConfig, bool]:
    """Parse ``vitlab fit`` arguments; returns ``(config, resume)``. A misspelt key exits with an error naming it."""
    ns = parse_run_namespace(build_fit_parser(), args)
    return namespace_to_run_config(ns), ns.resume


def resumed_run_config(ns: Namespace, argv: Sequence[str]) -> RunConfig:
    """For ``--resume true``: the run's saved ``config.yaml`` with only the options given in ``argv`` applied.

    The arguments are parsed again with the saved configuration as defaults, so an option the user did not give keeps
    the run's value; `vitlab.train.run.fit` then refuses any given option that changes it (except a larger
    ``trainer.max_epochs``).
    """
    from dataclasses import asdict

    from vitlab.train.run_folder import load_run_config

    saved = asdict(load_run_config(Path(ns.output_dir) / ns.name))
    defaults = {f"{section}.{key}": value for section in (*SECTION_NAMES, "trainer")
                for key, value in saved[section].items()}
    defaults.update(seed=saved["seed"])
    parser = build_fit_parser()
    parser.set_defaults(defaults)
    args = list(argv)
    args = args[args.index("fit") + 1:] if "fit" in args else args
    return namespace_to_run_config(parse_run_namespace(parser, [a for a in args if a != "--debug"]))


def run_fit(ns: Namespace, argv: Sequence[str] = ()) -> None:
    """Run ``vitlab fit`` from its parsed namespace; ``argv`` (the command's arguments) serves ``--resume``."""
    from vitlab.train.run import fit, is_ddp_worker
    from vitlab.train.run_folder import CONFIG_NAME

    ns.output_dir = os.path.expanduser(ns.output_dir)  # as RunConfig does: the saved run is found under `~/runs`
    check_ckpt_path(ns.ckpt_path, ns.output_dir)
    resuming = ns.resume and argv and (Path(ns.output_dir) / ns.name / CONFIG_NAME).is_file()
    config = resumed_run_config(ns, argv) if resuming else namespace_to_run_config(ns)
    result = fit(config, resume=ns.resume)
    if is_ddp_worker():  # Lightning's DDP workers re-run the command: the main process reports the run once
        return
    print(f"run folder: {result.run_dir}")
    for key, value in sorted(result.metrics.items()):
        print(f"  {key}: {value:.4f}")
    if result.extra.get("fast_dev_run"):
        print("trainer.fast_dev_run: a few batches of training, validation and test ran as a check; no weights, "
              "checkpoint or metrics were saved (drop --trainer.fast_dev_run to train the run)")
