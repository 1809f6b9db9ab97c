"""Run configurations from YAML files and ``--section.key value`` arguments: the parser `vitlab fit` uses.

`add_run_arguments` puts ``--config``, the top-level keys and every section of `vitlab.train.config` on a
jsonargparse parser (the ``trainer`` section from ``lightning.Trainer``'s signature, with vitlab's defaults);
`load_run_config_file` reads one YAML through it, so a misspelt key is refused as `vitlab fit` refuses it. With
``help_only=True`` the ``trainer`` options are read from Lightning's source instead of importing Lightning, so
``--help`` answers quickly.

Usage (with a run config file)::

    config = load_run_config_file("configs/pretrain_vit_mnist.yaml")  # a RunConfig
"""

from __future__ import annotations

import ast
import importlib.util
import re
from argparse import SUPPRESS
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, get_loader, set_loader

from vitlab.yaml_loader import check_unique_keys, load_yaml, load_yaml_file

if TYPE_CHECKING:
    from vitlab.train.config import RunConfig

__all__ = ["DICT_FIELDS", "SECTION_NAMES", "YAML_MODE", "add_run_arguments", "apply_nested_overrides",
           "check_empty_mapping_keys", "check_option_values", "dump_run_config",
           "explain_parse_error", "load_run_config_file", "namespace_to_run_config", "parse_run_namespace",
           "read_config_mapping", "run_config_from_args",
           "run_sections", "split_nested_overrides", "take_print_config"]

SECTION_NAMES = ("model", "data", "optim", "negatives", "peft")
#: ``(section, field)`` of each free-form mapping of a run config; ``--SECTION.FIELD.KEY.SUBKEY VALUE`` sets one key
#: deep inside it (see `split_nested_overrides`).
DICT_FIELDS = (("model", "kwargs"), ("data", "options"), ("negatives", "options"), ("peft", "options"))
#: ``(section, field)`` of the ``class_path`` / ``init_args`` specs; ``--trainer.callbacks.init_args.patience 3`` sets
#: one key of the spec (jsonargparse alone would replace the whole spec with ``{patience: '3'}``).
SPEC_FIELDS = (("trainer", "logger"), ("trainer", "callbacks"))
# Trainer arguments vitlab sets itself (run folder, logger, callbacks).
_TRAINER_SKIP = {"logger", "callbacks", "default_root_dir", "plugins", "enable_checkpointing", "model_registry"}
#: Why each ``lightning.Trainer`` keyword vitlab sets itself is not an option (`explain_parse_error`).
_SET_BY_VITLAB = {
    "default_root_dir": "the run folder is <output_dir>/<name>: set --output_dir and --name",
    "enable_checkpointing": "every run keeps checkpoints/last.ckpt (resume and the non-finite guard need it)",
    "plugins": "vitlab builds the Trainer without plugins; use trainer.precision / trainer.strategy",
    "model_registry": "vitlab saves model.safetensors in the run folder",
}
#: ``(pattern of a parser error, what to write instead)`` for LightningCLI's own keys, which users carry over.
_LIGHTNING_CLI_KEYS = (
    (r"\bseed_everything\b", "LightningCLI's seed_everything is vitlab's top-level key seed (--seed N)"),
    (r"'(optimizer|lr_scheduler)[.']|--(optimizer|lr_scheduler)\b",
     "vitlab's optimiser (AdamW, warm-up then cosine) is set in the optim section: optim.lr, optim.min_lr, "
     "optim.weight_decay, optim.warmup_epochs, ..."),
    (r"Subclasses are disabled for (ModelConfig|DataConfig|OptimConfig|NegativesConfig|PeftConfig)",
     "vitlab's sections take keys, not LightningCLI's class_path / init_args: model.name (a timm model) and "
     "model.kwargs, data.name and its keys (`vitlab fit --print_config` shows them all)"),
)
#: jsonargparse parser mode of vitlab's run parsers: jsonargparse's own YAML loading, but a key given twice in one
#: mapping (of a ``--config`` file or of a command-line value) is refused (`vitlab.yaml_loader`).
YAML_MODE = "vitlab_yaml"


def _load_unique_yaml(stream: str, path: str = "") -> object:
    """jsonargparse's YAML loader (its number rules: ``1e-3`` is a float), then vitlab's duplicate-key check."""
    value = get_loader("yaml")(stream)  # invalid YAML raises yaml.YAMLError, which jsonargparse handles as before
    check_unique_keys(stream, str(path) if path else f"the value {stream.strip()[:60]!r}")
    return value


def _use_unique_yaml(parser: ArgumentParser) -> None:
    set_loader(YAML_MODE, _load_unique_yaml, exceptions=(yaml.YAMLError,))
    parser.parser_mode = YAML_MODE


def run_sections() -> dict[str, type]:
    """Section name -> its config dataclass (``vitlab.train.config``), in ``SECTION_NAMES`` order."""
    from vitlab.train.config import DataConfig, ModelConfig, NegativesConfig, OptimConfig, PeftConfig

    classes = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "negatives": NegativesConfig,
               "peft": PeftConfig}
    return {name: classes[name] for name in SECTION_NAMES}


def _add_trainer_help(parser: ArgumentParser) -> None:
    """Describe the ``trainer`` section from ``lightning.Trainer.__init__``'s source (no import of Lightning).

    Only for ``--help``: the options are listed with Lightning's types, defaults and docs, but a parser built this
    way does not check values (the real parser, built from the imported class, does). Raises ``OSError``,
    ``SyntaxError`` or ``StopIteration`` (before adding anything) when the source is not where it is expected.
    """
    spec = importlib.util.find_spec("lightning")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("lightning is not installed: `pip install vitlab` installs it")
    source = Path(spec.submodule_search_locations[0]) / "pytorch" / "trainer" / "trainer.py"
    tree = ast.parse(source.read_text())
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    init = next(n for n in trainer.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    docs: dict[str, str] = {}
    current = None
    for line in (ast.get_docstring(init) or "").splitlines():
        name, sep, text = line.strip().partition(": ")
        if sep and line.startswith("    ") and not line.startswith("        ") and name.isidentifier():
            current, docs[name] = name, text.strip()
        elif current and line.startswith("        "):
            docs[current] += " " + line.strip()
        else:
            current = None
    args = init.args
    positional = list(zip(args.args[len(args.args) - len(args.defaults):], args.defaults, strict=True))
    group = parser.add_argument_group("trainer", "lightning.Trainer arguments (--trainer.KEY VALUE); vitlab sets "
                                      "its own defaults for some (see `vitlab fit --print_config`)")
    for arg, default in [*positional, *zip(args.kwonlyargs, args.kw_defaults, strict=True)]:
        if arg.arg in _TRAINER_SKIP or arg.arg == "self":
            continue
        kind = ast.unparse(arg.annotation) if arg.annotation is not None else "any"
        value = ast.unparse(default) if default is not None else "required"
        group.add_argument(f"--trainer.{arg.arg}", metavar=kind, default=SUPPRESS,
                           help=f"{docs.get(arg.arg, '')} (Lightning default: {value})")


def add_run_arguments(parser: ArgumentParser, help_only: bool = False) -> ArgumentParser:
    """Add ``--config``, the top-level keys and every config section (see ``vitlab.train.config``) to ``parser``.

    ``help_only``: describe the ``trainer`` section without importing Lightning (for ``--help`` only; see
    `_add_trainer_help`).
    """
    _use_unique_yaml(parser)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML run configuration (configs/*.yaml)")
    parser.add_argument("--name", type=str, default="run", help="run name: the run folder is <output_dir>/<name>")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random number generator")
    parser.add_argument("--output_dir", type=str, default="runs", help="parent folder of run folders")
    for section, config_class in run_sections().items():
        parser.add_class_arguments(config_class, section)
    if help_only:
        try:
            _add_trainer_help(parser)
        except (OSError, SyntaxError, StopIteration):  # Lightning's source is not where expected: import it instead
            help_only = False
    if help_only:
        _add_logger_arguments(parser)
        return parser
    import lightning as L

    parser.add_class_arguments(L.Trainer, "trainer", skip=_TRAINER_SKIP, fail_untyped=False)
    _add_logger_arguments(parser)
    from vitlab.train.run import TRAINER_DEFAULTS

    parser.set_defaults({f"trainer.{key}": value for key, value in TRAINER_DEFAULTS.items()})
    return parser


def _add_logger_arguments(parser: ArgumentParser) -> None:
    """``trainer.logger`` / ``trainer.callbacks`` in LightningCLI's form; `vitlab.train.callbacks` builds them."""
    spec = bool | str | dict | list | None  # false (LightningCLI's `logger: false`, `callbacks: false`): none
    parser.add_argument("--trainer.logger", type=spec, default=None,
                        help="loggers beside metrics.csv: {class_path: TensorBoardLogger | MLFlowLogger | WandbLogger "
                        "| a.full.Path, init_args: {...}}, or a list of them; false or null: metrics.csv only; "
                        "true: Lightning's default logger (TensorBoard) too")
    parser.add_argument("--trainer.callbacks", type=spec, default=None,
                        help="Lightning callbacks in the same form, e.g. {class_path: EarlyStopping, init_args: "
                        "{monitor: val/acc, mode: max}}")


def split_nested_overrides(args: Sequence[str]) -> tuple[list[str], list[tuple[str, tuple[str, ...], str]]]:
    """Take the options that set a key two or more levels inside a mapping of the run config out of ``args``.

    jsonargparse sets ``--peft.options.dim 500`` by itself, but for ``--peft.options.sweep.lr 0.03`` it would replace
    the whole ``sweep`` mapping of the config file with ``{"lr": "0.03"}`` (the other sweep keys lost, the value a
    string). Such options are taken out here and applied after parsing by `apply_nested_overrides`, which keeps
    the sibling keys and reads the value as YAML. Both ``--KEY VALUE`` and ``--KEY=VALUE`` forms are recognised.
    ``trainer.logger`` / ``trainer.callbacks`` and any key inside them (``--trainer.callbacks.init_args.patience 3``)
    are taken out the same way: jsonargparse would replace the whole ``class_path`` spec with the key, or fail to
    merge a spec given on the command line into one from the config file. Their keys tuple is empty for the whole
    value.

    Every option value written as a YAML mapping or list (``--model.kwargs '{depth: 2}'``) is checked for a key given
    twice first (`check_option_values`).

    Returns:
        ``(remaining arguments, [(dotted field, keys below it, value text), ...])``.

    Example:
        >>> split_nested_overrides(["--config", "c.yaml", "--peft.options.sweep.lr", "0.03", "--optim.lr=0.1"])
        (['--config', 'c.yaml', '--optim.lr=0.1'], [('peft.options', ('sweep', 'lr'), '0.03')])
    """
    from vitlab.errors import ConfigError

    check_option_values(args)
    specs = tuple(f"--{section}.{field}." for section, field in SPEC_FIELDS)
    prefixes = tuple(f"--{section}.{field}." for section, field in DICT_FIELDS) + specs
    remaining: list[str] = []
    overrides: list[tuple[str, tuple[str, ...], str]] = []
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        prefix = next((p for p in prefixes if arg.startswith(p)), None)
        name, has_value, value = arg.partition("=")
        keys = tuple(name[len(prefix):].split(".")) if prefix else ()
        if f"{name}." in specs:  # the whole spec: jsonargparse fails merging it into a file's spec
            prefix = f"{name}."
        elif len(keys) < (1 if prefix in specs else 2):
            remaining.append(arg)
            i += 1
            continue
        if not all(keys):
            raise ConfigError(f"{name}: an empty key between dots; write e.g. --peft.options.sweep.lr 0.1")
        if not has_value:
            if i + 1 >= len(items):
                raise ConfigError(f"{name} needs a value, e.g. {name} 0.1")
            value = items[i + 1]
            i += 1
        overrides.append((prefix[2:-1], keys, value))
        i += 1
    return remaining, overrides


def check_option_values(args: Sequence[str]) -> None:
    """Refuse an option value that is a YAML mapping or list giving a key twice (``--trainer.logger '{class_path: A,
    class_path: B}'``): jsonargparse reads such values with plain PyYAML, which keeps only the last.

    A value that is not valid YAML is left to the parser, which reports it with its option.

    Raises:
        ConfigError: the option, the repeated key and the fix.

    Example:
        >>> check_option_values(["--model.kwargs", "{depth: 2, drop_rate: 0.1}", "--optim.lr=0.1"])  # fine
    """
    option = "a command-line value"
    for arg in args:
        name, has_value, text = arg.partition("=") if arg.startswith("--") else ("", True, arg)
        if arg.startswith("--"):
            option = name
        if not has_value or text.lstrip()[:1] not in ("{", "["):
            continue
        try:
            yaml.safe_load(text)
        except yaml.YAMLError:
            continue
        check_unique_keys(text, f"{option} {text}")


def _empty_mapping_keys(args: Sequence[str]) -> list[tuple[str, str]]:
    """``(where, dotted key)`` of each key whose value is an empty mapping, in a ``--config`` (a file or inline YAML)
    or in an option value written as a YAML mapping (``--optim '{lrr: {}}'``)."""
    found: list[tuple[str, str]] = []

    def walk(node: dict, path: str, where: str) -> None:
        for key, value in node.items():
            dotted = f"{path}.{key}" if path else str(key)
            if isinstance(value, dict):
                if value:
                    walk(value, dotted, where)
                else:
                    found.append((where, dotted))

    items = list(args)
    for i, arg in enumerate(items):
        if not arg.startswith("--"):
            continue
        name, has_value, text = arg.partition("=")
        if not has_value:
            if i + 1 >= len(items) or items[i + 1].startswith("--"):
                continue
            text = items[i + 1]
        option = name[2:]
        if option == "config" and Path(text).is_file():
            content, where = read_config_mapping(text), f"--config {text}"
        elif text.lstrip()[:1] == "{":
            content, where = load_yaml(text, f"{name} {text}"), f"{name} {text}"
        else:
            continue
        if isinstance(content, dict):
            walk(content, "" if option == "config" else option, where)
    return found


def check_empty_mapping_keys(args: Sequence[str], known_keys: Iterable[str]) -> None:
    """Refuse a misspelt key given as an empty mapping (``modle: {}`` in a ``--config`` file, ``--optim '{lrr: {}}'``,
    ``--config '{modle: {}}'``): jsonargparse drops such a key without a word, while a misspelt key with a value is
    refused. ``known_keys``: the parser's dotted keys (``parser.get_defaults().keys()``); a key inside a free-form
    mapping (``model.kwargs``, ``data.options``, ``trainer.logger``, ...) is never refused. ``args`` may start with
    the subcommand (``intrinsic-dim``), which the message's ``--print_config`` hint then names (``fit`` otherwise).

    Raises:
        ConfigError: the key, where it was given and the closest known key (``did you mean 'model'?``).

    Example:
        >>> check_empty_mapping_keys(["--config", "{model: {}}"], ["model.name"])  # an empty known section: fine
        >>> check_empty_mapping_keys(["--config", "{modle: {}}"], ["model.name"])
        Traceback (most recent call last):
        ...
        vitlab.errors.ConfigError: --config {modle: {}}: unknown key 'modle' (an empty mapping); \
did you mean 'model'? (`vitlab fit --print_config` shows every key)
    """
    from difflib import get_close_matches

    from vitlab.errors import ConfigError

    empty = _empty_mapping_keys(args)
    if not empty:
        return
    known = list(known_keys)
    command = next((a for a in args if not a.startswith("-")), None)
    command = command if command in ("fit", "intrinsic-dim") else "fit"  # the subcommand, when args name it
    for where, dotted in empty:
        if any(k == dotted or k.startswith(f"{dotted}.") or dotted.startswith(f"{k}.") for k in known):
            continue  # a section or group left empty (its defaults), or a key inside a free-form mapping
        parent, _, last = dotted.rpartition(".")
        depth = dotted.count(".")
        siblings = sorted({k.split(".")[depth] for k in known
                           if k.count(".") >= depth and k.startswith(f"{parent}." if parent else "")})
        close = get_close_matches(last, siblings, n=1)
        hint = f"did you mean {'.'.join((*([parent] if parent else []), close[0]))!r}?" if close else (
            f"the keys here are {', '.join(siblings)}")
        raise ConfigError(f"{where}: unknown key {dotted!r} (an empty mapping); {hint} (`vitlab {command} "
                          "--print_config` shows every key)")


def apply_nested_overrides(ns: Namespace, overrides: Sequence[tuple[str, tuple[str, ...], str]]) -> Namespace:
    """Set each ``(dotted field, keys, value text)`` of `split_nested_overrides` in the parsed namespace ``ns``.

    The value is read as YAML (``0.03`` a float, ``[1, 2]`` a list, ``null`` None); mappings on the way are created
    when absent and the keys beside the one set are kept.

    Raises:
        ConfigError: a key on the way holds a value that is not a mapping (the message names it).

    Example:
        >>> ns = Namespace(peft=Namespace(options={"sweep": {"lr": 0.3, "num": 7}}))
        >>> apply_nested_overrides(ns, [("peft.options", ("sweep", "lr"), "0.03")]).peft.options
        {'sweep': {'lr': 0.03, 'num': 7}}
    """
    from vitlab.errors import ConfigError

    for field, keys, text in overrides:
        if not keys:
            ns[field] = load_yaml(text, f"--{field} {text}")
            continue
        node = ns[field]
        if node is None:
            node = ns[field] = {}
        if isinstance(node, str):  # a class named alone: --trainer.logger TensorBoardLogger
            node = ns[field] = {"class_path": node}
        if not isinstance(node, dict):
            raise ConfigError(f"--{field}.{'.'.join(keys)}: {field} is {node!r}, not one mapping; set {field} itself "
                              "instead (the whole list, or one {class_path: ..., init_args: {...}})")
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {}) if isinstance(node, dict) else None
            if not isinstance(child, dict):
                where = ".".join((field, *keys[: depth + 1]))
                raise ConfigError(f"--{field}.{'.'.join(keys)}: {where} is {child!r}, not a mapping; set {where} "
                                  "itself instead")
            node = child
        node[keys[-1]] = load_yaml(text, f"--{field}.{'.'.join(keys)} {text}")
    return ns


def take_print_config(args: Sequence[str]) -> tuple[list[str], str | None]:
    """``(args without --print_config, its flags)``; flags is ``None`` when ``--print_config`` is absent, else ``""``
    or what follows ``=`` (``skip_null``).

    Example:
        >>> take_print_config(["--optim.lr", "0.1", "--print_config=skip_null"])
        (['--optim.lr', '0.1'], 'skip_null')
    """
    kept = [a for a in args if a != "--print_config" and not a.startswith("--print_config=")]
    given = [a.partition("=")[2] for a in args if a == "--print_config" or a.startswith("--print_config=")]
    return kept, (given[-1] if given else None)


def dump_run_config(parser: ArgumentParser, ns: Namespace, flags: str = "") -> str:
    """The YAML ``--print_config[=flags]`` prints for ``ns``: deep mapping keys included (jsonargparse prints before
    `apply_nested_overrides` runs, so its own ``--print_config`` would miss them), and each section as the run builds
    it (e.g. ``negatives.enabled: true`` when the section's keys switch it on), so the printed file, given back with
    ``--config``, is the same run; a config the run would refuse is refused here too."""
    from dataclasses import asdict

    config = namespace_to_run_config(ns)
    resolved = ns.clone()
    for name in run_sections():
        resolved[name] = Namespace(**asdict(getattr(config, name)))
    if "skip_null" in flags:  # a trainer null that is the user's choice (max_epochs: null with max_steps) is kept
        kept = {f"trainer.{key}" for key in config.trainer}
        for key in [k for k, value in resolved.items() if value is None and k not in kept]:
            del resolved[key]
    return parser.dump(resolved, skip_none=False)


def parse_run_namespace(parser: ArgumentParser, args: Sequence[str]) -> Namespace:
    """``parser.parse_args(args)`` with deep mapping keys set as `split_nested_overrides` describes; with
    ``--print_config`` among ``args`` the resolved config is printed (`dump_run_config`) and the parser exits."""
    check_empty_mapping_keys(args, parser.get_defaults().keys())
    remaining, overrides = split_nested_overrides(args)
    remaining, print_flags = take_print_config(remaining)
    ns = apply_nested_overrides(parser.parse_args(remaining), overrides)
    if print_flags is not None:
        print(dump_run_config(parser, ns, print_flags), end="")
        parser.exit()
    return ns


def _trainer_non_null_defaults() -> set[str]:
    """``lightning.Trainer`` keywords whose default is not ``None`` (the ``trainer`` section is built from them)."""
    import inspect

    import lightning

    parameters = inspect.signature(lightning.Trainer.__init__).parameters.values()
    return {p.name for p in parameters if p.default is not None and p.default is not inspect.Parameter.empty}


def namespace_to_run_config(ns: Namespace) -> RunConfig:
    """Turn a parsed namespace (from ``add_run_arguments``) into a ``RunConfig``."""
    from vitlab.errors import ConfigError
    from vitlab.train.config import RunConfig

    for name in (*SECTION_NAMES, "trainer"):
        # jsonargparse keeps what a file gives for a whole section; an empty one (`negatives:`) means its defaults
        if ns.get(name) is not None and not isinstance(ns.get(name), Namespace):
            raise ConfigError(f"{name} must be a mapping of its keys ({name}: {{KEY: VALUE, ...}}), got "
                              f"{ns.get(name)!r}: `vitlab fit --print_config` shows every section's keys")
    sections = {name: cls(**(ns[name] or Namespace()).as_dict()) for name, cls in run_sections().items()}
    # a null is dropped (Lightning's default), except where that default or vitlab's is not null, so null is the
    # user's choice (check_val_every_n_epoch: null, to validate every val_check_interval batches across epochs;
    # max_epochs: null with max_steps, to train for max_steps alone instead of vitlab's 10 epochs)
    from vitlab.train.run import TRAINER_DEFAULTS

    keep = _trainer_non_null_defaults() | {key for key, value in TRAINER_DEFAULTS.items() if value is not None}
    trainer = {k: v for k, v in (ns.trainer or Namespace()).as_dict().items() if v is not None or k in keep}
    return RunConfig(name=ns.name, seed=ns.seed, output_dir=ns.output_dir, trainer=trainer, **sections)


def explain_parse_error(message: str) -> str:
    """``message`` (a parser error) with the reason added for each ``trainer`` keyword vitlab sets itself.

    Example:
        >>> explain_parse_error("unrecognized arguments: --trainer.default_root_dir x")
        'unrecognized arguments: --trainer.default_root_dir x; trainer.default_root_dir is set by vitlab: the run \
folder is <output_dir>/<name>: set --output_dir and --name'
    """
    message = _shorten_union_error(message)
    reasons = [f"trainer.{key} is set by vitlab: {why}" for key, why in _SET_BY_VITLAB.items()
               if f"trainer.{key}" in message]
    if "set_parsing_settings" in message:  # jsonargparse's advice is for the parser's author, not for the user
        message = message.partition(" To accept subclasses")[0]
    reasons += [why for pattern, why in _LIGHTNING_CLI_KEYS if re.search(pattern, message)]
    # a section given one word (`optim: fast`): jsonargparse tried to read the word as a config file of the section
    reasons += [f"{key} is a section: a mapping of its keys ({key}: {{KEY: VALUE, ...}}), not one value; `vitlab fit "
                "--print_config` shows every section's keys"
                for key in re.findall(r'Parser key "(\w+)": Unable to load config', message)[:1]]
    return "; ".join([message, *reasons])


_UNION_ERROR = re.compile(r'Parser key "(?P<key>[\w.]+)": Does not validate against any of the Union subtypes '
                          r"Subtypes: \[(?P<types>[^\]]*)\] Errors: .* Given value: (?P<value>.*)$")
_TYPE_WORDS = {"int": "an integer", "float": "a number", "NoneType": "null", "bool": "true/false", "str": "a text"}


def _shorten_union_error(message: str) -> str:
    """jsonargparse's multi-line "Does not validate against any of the Union subtypes" error for a value of simple
    types as one line: ``trainer.gradient_clip_val takes an integer, a number or null, got 'nan'``."""
    match = _UNION_ERROR.search(message)
    types = re.findall(r"<class '(\w+)'>", match["types"]) if match else []
    if not match or len(types) != match["types"].count("<class") or not set(types) <= set(_TYPE_WORDS):
        return message
    value = match["value"].strip()
    words = [_TYPE_WORDS[t] for t in dict.fromkeys(types)]
    text = f"{match['key']} takes {', '.join(words[:-1])} or {words[-1]}" if len(words) > 1 else \
        f"{match['key']} takes {words[0]}"
    finite = value.lower().lstrip("+-") in ("nan", "inf", "infinity", ".nan", ".inf")
    return f"{message[:match.start()]}{text}, got {value!r}" + (": give a finite number" if finite else "")


def run_config_from_args(args: Sequence[str], prog: str = "vitlab fit") -> RunConfig:
    """Parse run-config arguments (``["--config", PATH, "--optim.lr", "0.1", ...]``) into a ``RunConfig``.

    A config printed by ``vitlab fit --print_config`` is accepted: its command options ``resume: false`` and
    ``ckpt_path: null`` say nothing about the run.

    Raises:
        ConfigError: a misspelt key or a bad value (the message names it); ``resume: true`` or a ``ckpt_path`` (options
        of the ``vitlab fit`` command, which a run config cannot carry out).
    """
    from argparse import ArgumentError

    from vitlab.errors import ConfigError

    if isinstance(args, str) or not all(isinstance(a, str) for a in args):
        raise TypeError(f"run_config_from_args takes a list of argument strings, got {args!r}: e.g. "
                        "['--config', 'run.yaml', '--optim.lr', '0.1'] (shlex.split(text) splits a command line)")
    parser = add_run_arguments(ArgumentParser(prog=prog, exit_on_error=False))
    parser.add_argument("--resume", type=bool, default=False, help=SUPPRESS)
    parser.add_argument("--ckpt_path", type=str | None, default=None, help=SUPPRESS)
    try:
        ns = parse_run_namespace(parser, args)
    except ArgumentError as err:
        problem = explain_parse_error(" ".join(str(err).split()))
        raise ConfigError(f"{' '.join(args)}: {problem} (`vitlab fit --help` lists the keys)") from None
    if ns.resume or ns.ckpt_path is not None:
        raise ConfigError(f"{' '.join(args)}: resume / ckpt_path are options of the `vitlab fit` command, not of a run "
                          "config: set resume: false and ckpt_path: null (in Python: fit(config, resume=True))")
    return namespace_to_run_config(ns)


def read_config_mapping(path: str | Path) -> dict:
    """The mapping a run or study YAML holds, read with `vitlab.yaml_loader.load_yaml_file` (a key given twice,
    invalid YAML, a folder or a missing path are one `ConfigError` / `MissingFileError` naming the file).

    Raises:
        ConfigError: also when the file is empty or holds something other than a mapping.
    """
    from vitlab.errors import ConfigError

    content = load_yaml_file(path)
    if not isinstance(content, dict):
        what = "empty" if content is None else f"a {type(content).__name__}"
        raise ConfigError(f"{path} is {what}: a config file is a mapping of keys and sections (name:, model:, "
                          "data:, ...); see configs/*.yaml")
    return content


def load_run_config_file(path: str | Path) -> RunConfig:
    """The ``RunConfig`` of a run YAML (``configs/*.yaml``), as ``vitlab fit --config PATH`` would train it.

    Raises:
        MissingFileError: no such file. ConfigError: a folder, a file that is not a YAML mapping, a key given twice, a
        misspelt key or a bad value (each names the file and the fix).
    """
    read_config_mapping(path)
    return run_config_from_args(["--config", str(path)])
