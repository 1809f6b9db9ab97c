"""The ``vitlab`` command: ``fit``, ``eval``, ``predict``, ``robustness``, ``diagnose-negatives``, ``intrinsic-dim``,
``peft-study``, ``study``, ``data install|list``, ``demo``.

Each subcommand has ``--help``; only the chosen subcommand's parser is built and nothing heavy (torch, Lightning) is
imported before it runs, so ``--help`` answers quickly. ``python -m vitlab`` is the same command.

Errors a user can fix (vitlab's `vitlab.errors.VitlabError` family, a missing or unreadable path, a corrupt file
that a library refused, a ``ValueError`` vitlab raised about an option) print one line and exit with status 1;
``vitlab --debug ...`` or ``VITLAB_DEBUG=1`` shows the traceback instead. Any other exception is a bug and is raised
with its traceback.

Example:
    >>> main(["data", "list"]) == 0  # doctest: +ELLIPSIS
    mnist ...
    True
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from argparse import ArgumentError
from collections.abc import Callable, Iterator, Sequence
from importlib import import_module
from pathlib import Path
from typing import Literal

from jsonargparse import ArgumentParser, Namespace

from vitlab.errors import VitlabError

__all__ = ["CHECKPOINT_HELP", "COMMANDS", "build_parser", "dispatch", "expand_config_paths", "is_user_error", "main",
           "names_list"]

#: subcommand -> (module, parser builder in it, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "fit": ("vitlab.cli.fit", "build_fit_parser", "train from a YAML config"),
    "eval": ("vitlab.cli.main", "_eval_parser", "evaluate a checkpoint"),
    "predict": ("vitlab.cli.main", "_predict_parser", "classify image files"),
    "robustness": ("vitlab.cli.robustness", "build_robustness_parser", "accuracy under common corruptions"),
    "diagnose-negatives": ("vitlab.cli.diagnose", "build_diagnose_parser",
                           "accuracy and confidence on patch-based negative views"),
    "data": ("vitlab.cli.main", "_data_parser", "install or list datasets"),
    "demo": ("vitlab.cli.demo", "build_demo_parser", "the README's demo: a few-minute slice of the study"),
    "intrinsic-dim": ("vitlab.cli.intrinsic_dim", "build_intrinsic_dim_parser", "d90 sweeps of subspace training"),
    "peft-study": ("vitlab.cli.peft_study", "build_peft_study_parser",
                   "accuracy vs parameters of every PEFT method"),
    "study": ("vitlab.cli.study", "build_study_parser", "all three advances end to end, with a report"),
    "peft": ("vitlab.cli.main", "_peft_parser", "peft adapter tools: convert vitlab 0.1 adapter files"),
}
#: subcommands whose parser builder takes ``help_only`` (a quick parser for ``--help``; see `vitlab.cli.fit`)
_HELP_ONLY = {"fit", "intrinsic-dim"}
#: subcommands with subcommands of their own -> {nested command: its positional argument}; their parse errors name
#: the nested command (``vitlab data install --help``) and plain option names (``NAME``, ``--out``)
_NESTED = {"data": {"install": "name", "list": None}, "peft": {"convert": "path"}}
#: subcommands that take a run config (``--peft.options.sweep.lr 0.1`` sets one key deep inside a mapping)
RUN_CONFIG_COMMANDS = {"fit", "intrinsic-dim"}
_VITLAB_DIR = Path(__file__).resolve().parents[1]


#: ``--checkpoint``'s help in every command that evaluates a checkpoint.
CHECKPOINT_HELP = ("model.safetensors, a run folder, or a Lightning .ckpt inside a finished run's folder (e.g. the "
                   "best epoch a trainer.callbacks ModelCheckpoint kept; read with weights_only=True)")


def names_list(value: list[str] | str | None) -> list[str] | None:
    """A list option of names as the user typed it: ``'[fog, contrast]'`` (parsed already), one name ``fog`` or the
    older comma form ``fog,contrast`` -> ``["fog", "contrast"]``; ``None`` stays ``None``.

    Example:
        >>> names_list("fog, contrast"), names_list(["fog"]), names_list(None)
        (['fog', 'contrast'], ['fog'], None)
    """
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    return value


def _eval_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="vitlab eval", description="Top-1 accuracy of a checkpoint on a dataset split.")
    parser.add_argument("--checkpoint", type=str, required=True, help=CHECKPOINT_HELP)
    parser.add_argument("--data", type=str | None, default=None,
                        help="dataset name (see `vitlab data list`; default: the checkpoint's training dataset)")
    parser.add_argument("--root", type=str | None, default=None, help="data folder (default: vitlab's cache)")
    parser.add_argument("--split", type=str, default="test", help="test (official test set) or val")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--device", type=str | None, default=None, help="cpu or cuda (default: cuda if present)")
    return parser


def _predict_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="vitlab predict", description="Classify image files with a checkpoint.")
    parser.add_argument("--checkpoint", type=str, required=True, help=CHECKPOINT_HELP)
    parser.add_argument("--topk", type=int, default=1,
                        help="how many classes to print per image (at most the class count)")
    parser.add_argument("--format", type=Literal["text", "jsonl", "csv"], default="text",
                        help="text: 'IMAGE: CLASS PROB, ...' per image; jsonl: one JSON object per image "
                        '{"image", "predictions": [{"class", "probability"}], "error"?}; csv: header '
                        "image,rank,class,probability,error and one row per prediction (errors: one row, rank empty)")
    parser.add_argument("images", nargs="+", type=str,
                        help="image files (PNG, JPEG, ...), folders (their image files, sorted by name) or quoted "
                        "patterns such as 'photos/**/*.jpg'")
    return parser


def _data_parser() -> ArgumentParser:
    return ArgumentParser(prog="vitlab data", description="Install datasets into vitlab's cache, or list them.")


def _add_data_subcommands(parser: ArgumentParser) -> None:
    commands = parser.add_subcommands(dest="data_command")
    install = ArgumentParser(description="Install a dataset into $VITLAB_DATA (default ~/.cache/vitlab). Prints "
                             "'NAME: FOLDER' (--json: one JSON object); progress goes to stderr.")
    install.add_argument("name", type=str, help="mnist, fashion_mnist, digits, cifar10, cifar100")
    listing = ArgumentParser(description="Show datasets and where they are: one line per dataset (name, present or "
                             "missing, folder, source), or with --json a JSON list of {name, present, path, source}.")
    for sub in (install, listing):
        sub.add_argument("--root", type=str | None, default=None,
                         help="the cache folder (default: $VITLAB_DATA, else ~/.cache/vitlab); a dataset lives in "
                         "ROOT/NAME. Later runs find it with VITLAB_DATA=ROOT, or data.root: ROOT/NAME")
        sub.add_argument("--json", type=bool, nargs="?", const=True, default=False,
                         help="print JSON (for scripts) instead of text")
    commands.add_subcommand("install", install, help="install a dataset into the cache")
    commands.add_subcommand("list", listing, help="show what is present and where")


def _chosen_command(args: Sequence[str]) -> str | None:
    """The subcommand named in ``args``: the first word that is not an option (top-level options take no value)."""
    return next((a for a in args if not a.startswith("-")), None)


def build_parser(command: str | None = None, help_only: bool = False) -> ArgumentParser:
    """The ``vitlab`` parser; only ``command``'s subparser is built in full (the others are empty placeholders that
    keep their one-line help), so ``vitlab --help`` imports no subcommand module. ``None`` builds none in full;
    ``help_only`` builds a parser that is only good for printing ``--help`` (quicker for ``fit``/``intrinsic-dim``).
    A bad option raises ``argparse.ArgumentError`` (`main` prints it as one line) instead of exiting.
    """
    from vitlab.version import __version__

    parser = ArgumentParser(prog="vitlab", description="vitlab: Vision Transformer research toolkit. "
                            "`vitlab COMMAND --help` describes a command.", exit_on_error=False)
    parser.add_argument("--version", action="version", version=f"vitlab {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: environment variable VITLAB_DEBUG=1)")
    commands = parser.add_subcommands(dest="command")
    for name, (module, builder, help_text) in COMMANDS.items():
        if name != command:
            sub = ArgumentParser(prog=f"vitlab {name}")
        elif help_only and name in _HELP_ONLY:
            sub = getattr(import_module(module), builder)(help_only=True)
        else:
            sub = getattr(import_module(module), builder)()
        commands.add_subcommand(name, sub, help=help_text)
    if command == "data":
        _add_data_subcommands(commands.choices["data"])  # jsonargparse adds nested subcommands after their parent
    if command == "peft":
        _add_peft_subcommands(commands.choices["peft"])
    return parser


def _peft_parser() -> ArgumentParser:
    return ArgumentParser(prog="vitlab peft", description="Tools for peft adapter folders.")


def _add_peft_subcommands(parser: ArgumentParser) -> None:
    commands = parser.add_subcommands(dest="peft_command")
    convert = ArgumentParser(description="Convert a vitlab 0.1 adapter.safetensors (kadaptation, lora_qv, lora, lokr) "
                             "into a peft adapter folder that PeftModel.from_pretrained loads.")
    convert.add_argument("path", type=str, help="the old adapter.safetensors, or its run folder")
    convert.add_argument("--out", type=str, required=True, help="the peft adapter folder to write (new or empty)")
    commands.add_subcommand("convert", convert, help="vitlab 0.1 adapter.safetensors -> peft adapter folder")


def _run_peft(ns: Namespace) -> None:
    from vitlab.peft import convert_adapter

    print(convert_adapter(ns.convert.path, ns.convert.out))


def _data_cache(root: str | None, writing: bool) -> Path:
    """The cache folder of ``vitlab data`` (``--root``, else ``$VITLAB_DATA``, else ~/.cache/vitlab), absolute;
    refused when a file stands there (or above it), when it is one installed dataset's own folder (``ROOT/NAME``)
    or, for ``writing``, when it cannot be created or written."""
    from vitlab.data.install import default_cache_dir, is_installed
    from vitlab.data.registry import DATASET_NAMES
    from vitlab.errors import ConfigError

    if root is not None and not root.strip():
        raise ConfigError("--root is empty; pass a folder, or leave --root out to use $VITLAB_DATA or ~/.cache/vitlab")
    path = (Path(root).expanduser() if root is not None else default_cache_dir()).absolute()
    given = f"--root {root}" if root is not None else (
        f"VITLAB_DATA={os.environ['VITLAB_DATA']}" if os.environ.get("VITLAB_DATA") else "the cache ~/.cache/vitlab")
    fix = "pass --root FOLDER (or set VITLAB_DATA=FOLDER) to a folder you can write"
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{given}: {existing} is a file, not a folder; {fix}")
    if writing and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{given}: cannot create or write {path} ({existing} is not writable); {fix}")
    if path.name in DATASET_NAMES and path.name != "digits" and is_installed(path.name, path.parent):
        raise ConfigError(f"{given} is the {path.name} dataset's own folder, not a cache of datasets (a dataset lives "
                          f"in ROOT/NAME): pass --root {path.parent} (or VITLAB_DATA={path.parent})")
    return path


def _run_data(ns: Namespace) -> None:
    import json

    from vitlab.data import install_dataset, is_installed, list_datasets
    from vitlab.data.registry import get_spec

    if ns.data_command == "install":
        sub = ns.install
        spec = get_spec(sub.name)  # an unknown name is refused before the cache folder is looked at
        cache = _data_cache(sub.root, writing=spec.installable and spec.name != "digits")
        present = spec.installable and is_installed(spec.name, cache)
        path = install_dataset(sub.name, cache)
        if present and spec.name != "digits":
            print(f"vitlab: {spec.name} is already installed in {path}; nothing to do", file=sys.stderr)
        if sub.json:
            print(json.dumps({"name": spec.name, "path": str(path), "already_installed": bool(present)}))
        else:
            print(f"{spec.name}: {path}")
        return
    rows = list_datasets(_data_cache(ns.list.root, writing=False))
    if ns.list.json:
        print(json.dumps(rows))
        return
    for row in rows:
        state = "present" if row["present"] else "missing"
        print(f"{row['name']:<14} {state:<8} {row.get('path') or '-'}  ({row.get('source', '')})")


def _run_eval(sub: Namespace) -> None:
    import json

    from vitlab.eval.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(sub.checkpoint, sub.data, root=sub.root, split=sub.split,
                                 batch_size=sub.batch_size, device=sub.device)
    print(json.dumps(result))


def _run_predict(sub: Namespace) -> None:
    import csv
    import json

    from vitlab.errors import DataError
    from vitlab.eval.evaluate import predict_images

    rows = predict_images(sub.checkpoint, sub.images, topk=sub.topk)
    writer = csv.writer(sys.stdout, lineterminator="\n")
    if sub.format == "csv":
        writer.writerow(["image", "rank", "class", "probability", "error"])
    failed = []
    for row in rows:
        if "error" in row:
            print(f"{row['image']}: error: {row['error']}", file=sys.stderr)
            failed.append(row["image"])
        if sub.format == "jsonl":
            predictions = [{"class": name, "probability": prob} for name, prob in row["predictions"]]
            print(json.dumps({**row, "predictions": predictions}))
        elif sub.format == "csv":
            for rank, (name, prob) in enumerate(row["predictions"], 1):
                writer.writerow([row["image"], rank, name, f"{prob:.6g}", ""])
            if "error" in row:
                writer.writerow([row["image"], "", "", "", row["error"]])
        elif "error" not in row:
            print(row["image"] + ": " + ", ".join(f"{name} {prob:.3f}" for name, prob in row["predictions"]))
    if failed:
        raise DataError(f"{len(failed)} of {len(rows)} images could not be read ({', '.join(failed[:3])}"
                        f"{' ...' if len(failed) > 3 else ''}); the others were predicted")


def _runner(command: str) -> Callable[[Namespace, list[str]], object]:
    """The function that runs ``command`` from its namespace and the argument list (imported only now)."""
    if command == "eval":
        return lambda sub, argv: _run_eval(sub)
    if command == "predict":
        return lambda sub, argv: _run_predict(sub)
    if command == "data":
        return lambda sub, argv: _run_data(sub)
    if command == "peft":
        return lambda sub, argv: _run_peft(sub)
    module, function = {
        "robustness": ("vitlab.cli.robustness", "run_robustness"),
        "diagnose-negatives": ("vitlab.cli.diagnose", "run_diagnose"),
        "intrinsic-dim": ("vitlab.cli.intrinsic_dim", "run_cli"),
        "peft-study": ("vitlab.cli.peft_study", "run_peft_study"),
    }.get(command, (None, None))
    if module is not None:
        run = getattr(import_module(module), function)
        return lambda sub, argv: run(sub)
    if command == "fit":
        from vitlab.cli.fit import run_fit

        return lambda sub, argv: run_fit(sub, argv=argv)
    if command == "demo":
        from vitlab.cli.demo import run_demo

        return lambda sub, argv: run_demo(sub, argv=argv)
    if command == "study":
        from vitlab.cli.study import run_study_cli

        return lambda sub, argv: run_study_cli(sub, argv=argv)
    raise KeyError(f"no runner for subcommand {command!r}")  # a bug: COMMANDS and this function disagree


def dispatch(ns: Namespace, argv: Sequence[str] = ()) -> None:
    """Run the subcommand chosen in a parsed namespace (``argv``: the arguments, recorded by study reports)."""
    _runner(ns.command)(ns[ns.command], list(argv))


def _library_user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions libraries raise for a corrupt or unreadable file, or for a configuration they refuse (Lightning's
    ``MisconfigurationException``, e.g. ``trainer.accelerator: gpu`` on a machine without one); only of libraries
    already imported."""
    import csv
    import gzip
    import json
    import pickle
    import zlib

    found: list[type[BaseException]] = [gzip.BadGzipFile, zlib.error, pickle.UnpicklingError, EOFError,
                                        json.JSONDecodeError, csv.Error]
    for module, name in (("safetensors", "SafetensorError"), ("PIL", "UnidentifiedImageError"),
                         ("yaml", "YAMLError"),
                         ("lightning.fabric.utilities.exceptions", "MisconfigurationException")):
        error = getattr(sys.modules.get(module), name, None)
        if isinstance(error, type) and issubclass(error, BaseException):
            found.append(error)
    return tuple(found)


def _raised_by_vitlab(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback is vitlab's own code (a check of the user's input)."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(_VITLAB_DIR)


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is a problem the user can fix (printed as one line) rather than a bug (shown in full).

    User errors: every `vitlab.errors.VitlabError`; a missing, unreadable or clashing path (``FileNotFoundError``,
    ``PermissionError``, ``IsADirectoryError``, ``NotADirectoryError``, ``FileExistsError``); a library's refusal of
    a corrupt file (safetensors, PIL, YAML, JSON, CSV, gzip, pickle) or of a Lightning trainer setting; and a
    ``ValueError``, ``KeyError`` or ``FloatingPointError`` raised by vitlab's own code (vitlab raises them only about
    its input). A ``TypeError``, ``AttributeError`` or a ``ValueError`` from inside torch or numpy is a bug.

    Example:
        >>> from vitlab.errors import ConfigError
        >>> is_user_error(ConfigError("set optim.lr > 0")), is_user_error(AttributeError("x"))
        (True, False)
    """
    from vitlab.errors import VitlabError

    if isinstance(err, (VitlabError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                        FileExistsError, *_library_user_errors())):
        return True
    return isinstance(err, (ValueError, KeyError, FloatingPointError)) and _raised_by_vitlab(err)


def _one_line(err: BaseException) -> str:
    from vitlab.errors import VitlabError

    message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    if isinstance(err, NotADirectoryError | FileExistsError) and err.errno is not None and err.filename:
        message += ": a file stands where a folder is needed; move it, or choose another path (--output_dir, --root)"
    text = " ".join(message.split()) or "(no message)"
    known = isinstance(err, VitlabError) or type(err).__module__ == "builtins"
    return text if known else f"{type(err).__name__}: {text}"


def check_config_files(args: Sequence[str]) -> None:
    """Refuse a ``--config`` YAML that is malformed, empty, not a mapping or gives a key twice, naming the file (and
    line); a missing path or a folder is named too (`vitlab.yaml_loader.load_yaml_file`).

    Example:
        >>> check_config_files(["fit", "--name", "x"])  # no --config: nothing to check
    """
    values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"]
    values += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    if not values:
        return
    from vitlab.train.arguments import read_config_mapping  # here: `vitlab --help` imports no vitlab.train
    from vitlab.yaml_loader import load_yaml

    for value in values:
        if not Path(value).exists() and isinstance(load_yaml(value, f"--config {value}"), dict):
            continue  # jsonargparse also takes the config itself: --config '{optim: {lr: 0.1}}' (checked just now)
        read_config_mapping(value)


def expand_config_paths(args: Sequence[str]) -> list[str]:
    """``args`` with a leading ``~`` of each ``--config`` path expanded (the shell leaves ``--config=~/x.yaml`` alone,
    as it does a quoted ``"~/my runs/x.yaml"``; ``--output_dir`` is expanded the same way by the run config).

    Example:
        >>> expand_config_paths(["fit", "--config=~/a.yaml"])[1] == "--config=" + str(Path.home() / "a.yaml")
        True
    """
    out = list(args)
    for i, arg in enumerate(out):
        if i > 0 and out[i - 1] == "--config" and arg.startswith("~"):
            out[i] = os.path.expanduser(arg)
        elif arg.startswith("--config=~"):
            out[i] = "--config=" + os.path.expanduser(arg.partition("=")[2])
    return out


def _run_config_keys(command: str) -> Iterator[str]:
    """The dotted keys of ``command``'s run-config parser; the parser is built only when the keys are read."""
    module, builder, _ = COMMANDS[command]
    yield from getattr(import_module(module), builder)().get_defaults().keys()


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: parse, run, and turn a user's error into one line on stderr and exit status 1 (a bad
    option or value: status 2, as argparse).

    ``--debug`` (anywhere in the arguments) or ``VITLAB_DEBUG=1`` re-raises the error with its traceback instead
    (``VITLAB_DEBUG`` empty, ``0``, ``false``, ``no`` or ``off`` leaves it off). Ctrl-C at any point prints one line
    and exits with status 130.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug_flag = "--debug" in args  # accepted before or after the subcommand
    args = expand_config_paths([a for a in args if a != "--debug"])
    command = _chosen_command(args)
    help_only = any(a in ("-h", "--help") for a in args)
    debug = debug_flag or os.environ.get("VITLAB_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")
    try:
        check_config_files(args)
        parsed_args, overrides, print_flags = args, [], None
        if command in RUN_CONFIG_COMMANDS:
            from vitlab.train.arguments import check_empty_mapping_keys, split_nested_overrides, take_print_config

            if not help_only:  # the parser drops a misspelt `modle: {}` without a word
                check_empty_mapping_keys(args, _run_config_keys(command))
            parsed_args, overrides = split_nested_overrides(args)
            # printed here, not by jsonargparse: after the deep keys are set, each section as the run builds it
            parsed_args, print_flags = take_print_config(parsed_args)
        ns = build_parser(command if command in COMMANDS else None, help_only).parse_args(parsed_args)
        if overrides or print_flags is not None:
            from vitlab.train.arguments import apply_nested_overrides, dump_run_config

            apply_nested_overrides(ns[command], overrides)
            if print_flags is not None:
                module, builder, _ = COMMANDS[command]
                print(dump_run_config(getattr(import_module(module), builder)(), ns[command], print_flags), end="")
                return 0
    except VitlabError as err:  # a config file refused before parsing (malformed YAML, a key given twice, ...)
        if debug:
            raise
        print(f"vitlab {command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while the parser's libraries (torch, Lightning) import
        print(f"vitlab{' ' + command if command in COMMANDS else ''}: interrupted", file=sys.stderr)
        return 130
    except ArgumentError as err:
        where = f"vitlab {command}" if command in COMMANDS else "vitlab"
        problem = " ".join(str(err).split())
        nested = _chosen_command(args[args.index(command) + 1:]) if command in _NESTED else None
        if nested in _NESTED.get(command, {}):  # `vitlab data install`: its own help, its own option names
            where = f"vitlab {command} {nested}"
            positional = _NESTED[command][nested]
            problem = re.sub(rf"\b{command}\.{nested}\.(\w+)",
                             lambda m: m[1].upper() if m[1] == positional else f"--{m[1]}", problem)
        elif command is None and 'expected "command"' in problem:  # jsonargparse's list is cut short ("...")
            problem = f"no command given; choose one of {', '.join(COMMANDS)}"
        elif command is not None and command not in COMMANDS and "invalid choice" in problem:
            from difflib import get_close_matches

            close = get_close_matches(command, list(COMMANDS), n=1)
            problem += f"; did you mean `vitlab {close[0]}`?" if close else ""
        elif command in _NESTED:
            problem = problem.replace(f'"{command}.{command}_command"', "a subcommand").replace(
                f"argument {command}_command:", "subcommand:")
        if command in RUN_CONFIG_COMMANDS:
            from vitlab.train.arguments import explain_parse_error

            problem = explain_parse_error(problem)
        print(f"{where}: error: {problem} (`{where} --help` lists the options)", file=sys.stderr)
        return 2
    import vitlab

    try:
        vitlab.register()  # timm models and peft methods (deferred by `vitlab/__init__` in the console script)
        dispatch(ns, args)
    except KeyboardInterrupt as err:
        print(f"vitlab {ns.command}: interrupted{': ' + str(err) if str(err) else ''}", file=sys.stderr)
        return 130
    except Exception as err:
        if debug or not is_user_error(err):
            raise
        print(f"vitlab {ns.command}: error: {_one_line(err)} (--debug shows the traceback)", file=sys.stderr)
        return 1
    return 0
