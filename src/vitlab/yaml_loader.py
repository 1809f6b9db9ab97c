"""Reading YAML a user wrote: PyYAML's safe loader, but a key given twice in one mapping is refused.

PyYAML keeps the last of two equal keys without a word, so a config with ``optimizer:`` twice silently loses the
first. Every YAML file or value vitlab reads from a user goes through this module (``vitlab fit --config`` through
jsonargparse's loader hook, see `vitlab.train.arguments`; run folders' ``config.yaml``; study configs), and a bad file
is one `vitlab.errors.ConfigError` line naming the file, the line and the fix. It imports only PyYAML and
`vitlab.errors`, so every layer of vitlab can use it.

- `load_yaml(text, source)`: ``yaml.safe_load`` plus the duplicate-key check; errors name ``source`` and the line;
- `load_yaml_file(path)`: the same for a file (a missing path, a folder or an unreadable file named as such);
- `check_unique_keys(text, source)`: only the duplicate-key check, for a loader of another library to run first.

A YAML merge (``<<: *base``) followed by a key that overrides a merged one is not a duplicate: that is what merges
are for.

Example:
    >>> load_yaml("optim: {lr: 0.1}\\nname: a", "run.yaml")
    {'optim': {'lr': 0.1}, 'name': 'a'}
    >>> load_yaml("optim: {lr: 0.1}\\noptim: {lr: 0.2}", "run.yaml")
    Traceback (most recent call last):
    ...
    vitlab.errors.ConfigError: run.yaml: key 'optim' is given twice (line 1 and line 2) and YAML would silently keep \
only the last: keep one of them
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from vitlab.errors import ConfigError, MissingFileError

__all__ = ["check_unique_keys", "load_yaml", "load_yaml_file"]

_MERGE_TAG = "tag:yaml.org,2002:merge"


def _key(constructor: yaml.constructor.SafeConstructor, node: yaml.Node) -> Hashable:
    """A mapping key as YAML reads it (``1`` and ``0x1`` are one key), or its tag and text when that fails."""
    try:
        key = constructor.construct_object(node, deep=True)
        hash(key)
    except (yaml.YAMLError, TypeError, ValueError):
        return (node.tag, repr(node.value))
    return key


def _find_duplicate(root: yaml.Node | None) -> tuple[str, yaml.Mark, yaml.Mark] | None:
    """``(dotted key, first mark, repeated mark)`` of the first key given twice in one mapping under ``root``."""
    constructor = yaml.constructor.SafeConstructor()
    stack: list[tuple[yaml.Node, str]] = [(root, "")] if root is not None else []
    seen_nodes: set[int] = set()
    while stack:
        node, path = stack.pop()
        if id(node) in seen_nodes:  # anchors make the node graph a DAG (or a cycle); visit each node once
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack += [(item, f"{path}[{i}]") for i, item in reversed(list(enumerate(node.value)))]
        if not isinstance(node, yaml.MappingNode):
            continue
        marks: dict[Hashable, yaml.Mark] = {}
        children = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = _key(constructor, key_node)
            name = f"{path}.{key}" if path else str(key)
            if key in marks:
                return name, marks[key], key_node.start_mark
            marks[key] = key_node.start_mark
            children.append((value_node, name))
        stack += reversed(children)
    return None


def check_unique_keys(text: str, source: str = "the YAML text") -> None:
    """Refuse YAML in which one mapping gives a key twice (PyYAML would keep only the last).

    Args:
        text: the YAML document.
        source: what the text is (a file path, ``--optim.lr``), named in the error.

    Raises:
        ConfigError: a repeated key (its dotted path and both lines are named) or text that is not YAML (the line).
    """
    if not isinstance(text, str):
        raise ConfigError(f"{source}: YAML text must be a str, got {type(text).__name__}")
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as err:
        raise _syntax_error(err, source) from None
    finally:
        loader.dispose()
    duplicate = _find_duplicate(root)
    if duplicate is not None:
        name, first, again = duplicate
        where = (f"line {first.line + 1}, columns {first.column + 1} and {again.column + 1}"
                 if first.line == again.line else f"line {first.line + 1} and line {again.line + 1}")
        raise ConfigError(f"{source}: key {name!r} is given twice ({where}) and YAML would silently keep only the "
                          "last: keep one of them")


def _syntax_error(err: yaml.YAMLError, source: str) -> ConfigError:
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return ConfigError(f"{source} is not valid YAML{where}: {problem}")


def load_yaml(text: str, source: str = "the YAML text") -> Any:
    """``yaml.safe_load(text)``, refusing a key given twice in one mapping and naming ``source`` in every error.

    Args:
        text: the YAML document.
        source: what the text is (a file path, an option), named in the error.

    Returns:
        The document's value (``None`` for an empty document).

    Raises:
        ConfigError: invalid YAML (line and column named) or a repeated key (both lines named).

    Example:
        >>> load_yaml("betas: [0.9, 0.99]")
        {'betas': [0.9, 0.99]}
    """
    check_unique_keys(text, source)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:  # composed but not constructible, e.g. an unknown !tag
        raise _syntax_error(err, source) from None


def load_yaml_file(path: str | Path) -> Any:
    """The value of a YAML file a user wrote, read as `load_yaml` reads text (errors name the file).

    Raises:
        MissingFileError: no such file. ConfigError: a folder, an unreadable or non-UTF-8 file, invalid YAML, or a
        key given twice.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "run.yaml"
        >>> _ = path.write_text("name: a\\nseed: 1\\n")
        >>> load_yaml_file(path)
        {'name': 'a', 'seed': 1}
    """
    if not isinstance(path, str | Path):
        raise ConfigError(f"a YAML file path must be a str or Path, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a YAML file: give the path of the .yaml file inside it")
    if not path.exists():
        raise MissingFileError(f"no YAML file at {path}: check the path (relative paths start from {Path.cwd()})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text (UTF-8) file: give a YAML config") from None
    except OSError as err:
        raise ConfigError(f"{path} cannot be read ({err.strerror or err}): fix its permissions") from None
    return load_yaml(text, str(path))
