"""The ``vitlab`` command: ``fit``, ``eval``, ``predict``, ``robustness``, ``diagnose-negatives``, ``intrinsic-dim``,
``peft-study``, ``study``, ``data install|list``, ``demo``.

Each subcommand has ``--help``. ``python -m vitlab`` is the same command.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from jsonargparse import ArgumentParser, Namespace

from vitlab import __version__

__all__ = ["build_parser", "main"]


def _eval_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="vitlab eval", description="Top-1 accuracy of a checkpoint on a dataset split.")
    parser.add_argument("--checkpoint", type=str, required=True, help="model.safetensors or a run folder")
    parser.add_argument("--data", type=str, required=True, help="dataset name (see `vitlab data list`)")
    parser.add_argument("--root", type=str | None, default=None, help="data folder (default: vitlab's cache)")
    parser.add_argument("--split", type=str, default="test", help="test (official test set) or val")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--device", type=str | None, default=None, help="cpu or cuda (default: cuda if present)")
    return parser


def _predict_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="vitlab predict", description="Classify image files with a checkpoint.")
    parser.add_argument("--checkpoint", type=str, required=True, help="model.safetensors or a run folder")
    parser.add_argument("--topk", type=int, default=1, help="how many classes to print per image")
    parser.add_argument("images", nargs="+", type=str, help="image files (PNG, JPEG, ...)")
    return parser


def _add_data_subcommands(parser: ArgumentParser) -> None:
    commands = parser.add_subcommands(dest="data_command")
    install = ArgumentParser(description="Install a dataset into $VITLAB_DATA (default ~/.cache/vitlab).")
    install.add_argument("name", type=str, help="mnist, fashion_mnist, digits, cifar10, cifar100")
    commands.add_subcommand("install", install, help="install a dataset into the cache")
    commands.add_subcommand("list", ArgumentParser(description="Show datasets and where they are."),
                            help="show what is present and where")


def build_parser() -> ArgumentParser:
    """The whole ``vitlab`` parser with its subcommands."""
    from vitlab.cli.demo import build_demo_parser
    from vitlab.cli.diagnose import build_diagnose_parser
    from vitlab.cli.fit import build_fit_parser
    from vitlab.cli.intrinsic_dim import build_intrinsic_dim_parser
    from vitlab.cli.peft_study import build_peft_study_parser
    from vitlab.cli.robustness import build_robustness_parser
    from vitlab.cli.study import build_study_parser

    parser = ArgumentParser(prog="vitlab", description="vitlab: Vision Transformer research toolkit.")
    parser.add_argument("--version", action="version", version=f"vitlab {__version__}")
    commands = parser.add_subcommands(dest="command")
    commands.add_subcommand("fit", build_fit_parser(), help="train from a YAML config")
    commands.add_subcommand("eval", _eval_parser(), help="evaluate a checkpoint")
    commands.add_subcommand("predict", _predict_parser(), help="classify image files")
    commands.add_subcommand("robustness", build_robustness_parser(), help="accuracy under common corruptions")
    commands.add_subcommand("diagnose-negatives", build_diagnose_parser(),
                            help="accuracy and confidence on patch-based negative views")
    data = ArgumentParser(prog="vitlab data", description="Install datasets into vitlab's cache, or list them.")
    commands.add_subcommand("data", data, help="install or list datasets")
    commands.add_subcommand("demo", build_demo_parser(), help="the README's demo: a 15-minute slice of the study")
    commands.add_subcommand("intrinsic-dim", build_intrinsic_dim_parser(), help="d90 sweeps of subspace training")
    commands.add_subcommand("peft-study", build_peft_study_parser(), help="accuracy vs parameters of every PEFT method")
    commands.add_subcommand("study", build_study_parser(), help="all three advances end to end, with a report")
    _add_data_subcommands(data)  # jsonargparse adds nested subcommands after their parent
    return parser


def _run_data(ns: Namespace) -> None:
    from vitlab.data import install_dataset, list_datasets

    if ns.data_command == "install":
        print(f"{ns.install.name}: {install_dataset(ns.install.name)}")
        return
    for row in list_datasets():
        state = "present" if row["present"] else "missing"
        print(f"{row['name']:<14} {state:<8} {row.get('path') or '-'}  ({row.get('source', '')})")


def dispatch(ns: Namespace, argv: Sequence[str] = ()) -> None:
    """Run the subcommand chosen in a parsed namespace (``argv``: the arguments, recorded by study reports)."""
    command = ns.command
    sub = ns[command]
    if command == "fit":
        from vitlab.cli.fit import run_fit

        run_fit(sub)
    elif command == "eval":
        from vitlab.eval.evaluate import evaluate_checkpoint

        result = evaluate_checkpoint(sub.checkpoint, sub.data, root=sub.root, split=sub.split,
                                     batch_size=sub.batch_size, device=sub.device)
        print(json.dumps(result))
    elif command == "predict":
        from vitlab.eval.evaluate import predict_images

        for row in predict_images(sub.checkpoint, sub.images, topk=sub.topk):
            print(row["image"] + ": " + ", ".join(f"{name} {prob:.3f}" for name, prob in row["predictions"]))
    elif command == "robustness":
        from vitlab.cli.robustness import run_robustness

        run_robustness(sub)
    elif command == "diagnose-negatives":
        from vitlab.cli.diagnose import run_diagnose

        run_diagnose(sub)
    elif command == "data":
        _run_data(sub)
    elif command == "demo":
        from vitlab.cli.demo import run_demo

        run_demo(sub, argv=list(argv))
    elif command == "intrinsic-dim":
        from vitlab.cli.intrinsic_dim import run_cli

        run_cli(sub)
    elif command == "peft-study":
        from vitlab.cli.peft_study import run_peft_study

        run_peft_study(sub)
    elif command == "study":
        from vitlab.cli.study import run_study_cli

        run_study_cli(sub, argv=list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point. Errors a user can fix print one line and exit with status 1."""
    args = list(sys.argv[1:] if argv is None else argv)
    ns = build_parser().parse_args(args)
    try:
        dispatch(ns, args)
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError, KeyError) as err:
        print(f"vitlab {ns.command}: error: {err}", file=sys.stderr)
        return 1
    return 0
