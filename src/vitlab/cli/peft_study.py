"""``vitlab peft-study``: every fine-tuning method on one pretrained backbone and dataset, one process per run.

The command parses its options and calls `vitlab.study.peft_study.run_peft_study` in ``<output_dir>/<name>``; that
module's docstring describes the runs and the files (``results.csv``, ``summary.csv``, ``accuracy_vs_params.png``).

Example (a shell command)::

    vitlab peft-study --methods '[linear, kadaptation]' --shots '[5]' --seeds '[0]' --full_data false --steps 50
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser, Namespace

from vitlab.errors import ConfigError

__all__ = ["build_peft_study_parser", "run_peft_study"]


def build_peft_study_parser() -> ArgumentParser:
    """The ``vitlab peft-study`` parser (lists as everywhere in vitlab: ``--shots '[5, 20]'``; the older
    comma-separated form ``--shots 5,20`` is still accepted)."""
    from vitlab.study.plan import DEFAULT_BACKBONE

    parser = ArgumentParser(prog="vitlab peft-study", description="Fine-tune one pretrained backbone with every PEFT "
                            "method (few-shot and full data, one process per run); writes results.csv, summary.csv "
                            "and accuracy_vs_params.png. Rerunning skips finished runs.")
    parser.add_argument("--backbone", type=str, default=DEFAULT_BACKBONE,
                        help="starting weights: a vitlab run folder or model.safetensors, a plain weights file "
                        "(.safetensors/.pth, with --model), timm (with --model NAME[.TAG]), hf-hub:ORG/NAME, or 'none' "
                        "(random weights)")
    parser.add_argument("--model", type=str | None, default=None, help="timm name (needed with --backbone none)")
    parser.add_argument("--model_kwargs", type=dict, default={}, help="extra timm.create_model keywords (JSON)")
    parser.add_argument("--data", type=str, default="fashion_mnist", help="downstream dataset (vitlab data list)")
    parser.add_argument("--root", type=str | None, default=None, help="data folder (default: vitlab's cache)")
    parser.add_argument("--img_size", type=int | None, default=None, help="input size (default: the backbone's)")
    parser.add_argument("--methods", type=list[str] | str | None, default=None,
                        help="methods, e.g. '[linear, kadaptation]' (default: every method of "
                        "vitlab.study.plan.STUDY_METHODS)")
    parser.add_argument("--method_options", type=dict, default={},
                        help='per-method peft options merged over the defaults, JSON: {"lora": {"r": 8}}')
    parser.add_argument("--shots", type=list[int] | str, default=[5, 20], help="k (examples per class), e.g. '[5, 20]'")
    parser.add_argument("--seeds", type=list[int] | str, default=[0, 1, 2], help="seeds of the few-shot runs, e.g. "
                        "'[0, 1, 2]'")
    parser.add_argument("--full_data", type=bool, nargs="?", const=True, default=True,
                        help="also fine-tune on the whole training split")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps of each few-shot run")
    parser.add_argument("--full_epochs", type=int, default=1, help="epochs of each full-data run")
    parser.add_argument("--batch_size", type=int, default=128, help="batch size (few-shot: at most k x classes)")
    parser.add_argument("--accelerator", type=str, default="auto", help="cpu, gpu or auto")
    parser.add_argument("--name", type=str, default="peft_study", help="study name: the study folder is "
                        "<output_dir>/<name>")
    parser.add_argument("--output_dir", type=str, default="runs", help="parent folder of the study folder")
    parser.add_argument("--keep_checkpoints", type=bool, nargs="?", const=True, default=False,
                        help="keep each run's last.ckpt")
    parser.add_argument("--reuse_cached_as_is", type=bool, nargs="?", const=True, default=False,
                        help="reuse every run in results.csv even if another configuration made it (default: such "
                        "runs are redone)")
    return parser


def run_peft_study(ns: Namespace) -> dict[str, Any]:
    """The ``vitlab peft-study`` subcommand: `vitlab.study.peft_study.run_peft_study` in ``<output_dir>/<name>``."""
    from vitlab.study.peft_study import run_peft_study as run

    options = ns.as_dict()
    name, parent = options.pop("name"), options.pop("output_dir")
    if not name or Path(name).name != name or name in (".", ".."):
        raise ConfigError(f"--name must be a plain folder name (the study folder is <output_dir>/<name>), got {name!r}")
    if not parent or not parent.strip():  # "" put the study folder in the current folder
        raise ConfigError("--output_dir is empty: give the parent folder of the study folder, e.g. --output_dir runs")
    return run(output_dir=str(Path(parent) / name), **options)
