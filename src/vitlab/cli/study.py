"""``vitlab study``: Inception Transformer + negative augmentation + parameter-efficient fine-tuning, end to end.

The command parses its options, loads the study YAML (`vitlab.study.config.load_study_config`) and calls
`vitlab.study.run.run_study`, whose docstring describes the stages, their cache and the report. Rerunning resumes.

Example (shell commands)::

    vitlab study --config configs/study.yaml            # the default, about an hour on 2 CPU cores
    vitlab study --config configs/study.yaml --full     # both backbones, all shots and seeds
"""

from __future__ import annotations

import shlex
from typing import Any

from jsonargparse import ArgumentParser, Namespace

__all__ = ["build_study_parser", "run_study_cli"]


def build_study_parser(prog: str = "vitlab study", default_config: str | None = "configs/study.yaml") -> ArgumentParser:
    """The ``vitlab study`` parser."""
    parser = ArgumentParser(prog=prog, description="Pretrain, fine-tune (full / LoRA / KAdaptation, with and "
                            "without negative views), evaluate clean, corrupted and negative-view accuracy, sweep the "
                            "intrinsic dimension, and write report.md + report.html. Rerunning resumes.")
    parser.add_argument("--config", type=str, default=default_config, help="study YAML (see configs/study.yaml)")
    parser.add_argument("--full", type=bool, nargs="?", const=True, default=False,
                        help="merge the config's `full` overrides: everything")
    parser.add_argument("--name", type=str | None, default=None, help="study folder name (default: the config's)")
    parser.add_argument("--output_dir", type=str | None, default=None, help="parent folder (default: the config's)")
    parser.add_argument("--accelerator", type=str | None, default=None, help="cpu, gpu or auto (default: config)")
    parser.add_argument("--estimate_only", type=bool, nargs="?", const=True, default=False,
                        help="print the time estimates and stop")
    parser.add_argument("--reuse_cached_as_is", type=bool, nargs="?", const=True, default=False,
                        help="reuse cached pretraining, fine-tuning runs and sweeps even if another configuration "
                        "made them (default: fine-tuning runs are redone, pretraining and sweeps refused)")
    parser.add_argument("--readme", type=str | None, default=None,
                        help="rewrite this README's Results section (between study-results markers) from the report")
    return parser


def run_study_cli(ns: Namespace, prog: str = "vitlab study", argv: list[str] | None = None) -> dict[str, Any]:
    """The ``vitlab study`` subcommand from its parsed namespace; ``argv`` (the arguments after ``vitlab``) is
    recorded in the report as the exact command."""
    from vitlab.study.config import load_study_config
    from vitlab.study.run import run_study

    if not ns.config:
        raise ValueError(f"{prog} needs --config <study YAML> (e.g. configs/study.yaml)")
    config = load_study_config(ns.config, full=ns.full, name=ns.name, output_dir=ns.output_dir,
                               accelerator=ns.accelerator)
    command = shlex.join(["vitlab", *argv]) if argv else f"{prog} --config {ns.config}"
    return run_study(config, command, estimate_only=ns.estimate_only, readme=ns.readme,
                     reuse_cached_as_is=ns.reuse_cached_as_is)
