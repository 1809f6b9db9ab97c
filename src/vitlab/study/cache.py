"""Cached stages keyed on what made them: a record of the configuration beside the cached result.

``vitlab study``, ``vitlab peft-study`` and ``vitlab intrinsic-dim`` skip work whose result is already on disk. Each
such result records the configuration that produced it (``cache_key.json`` in its folder: ``{"hash", "config"}``,
or a ``config_hash`` column in a results table); it is reused only when the configuration asked for now has the same
hash. Otherwise the work is re-run (cheap stages) or refused with the differing keys named (expensive ones), unless
the user passes ``--reuse_cached_as_is true``.

Example:
    >>> differing_keys({"optim": {"lr": 0.1}, "seed": 0}, {"optim": {"lr": 0.3}, "seed": 0})
    ['optim.lr: 0.1 -> 0.3']
    >>> config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vitlab.errors import ConfigError

__all__ = ["CACHE_RECORD", "cache_differences", "config_hash", "differing_keys", "ensure_cache_matches", "read_record",
           "write_record"]

#: The file, inside a cached stage's folder, that records the configuration which produced it.
CACHE_RECORD = "cache_key.json"


def _canonical(config: Any) -> Any:
    """JSON-compatible form (tuples as lists, paths as strings) so equal configs compare and hash alike."""
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a configuration, independent of key order."""
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping (a dict of the configuration), got {type(config).__name__}")
    return hashlib.sha256(json.dumps(_canonical(config), sort_keys=True).encode()).hexdigest()


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(config, Mapping) and config:
        out: dict[str, Any] = {}
        for key, value in config.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: config}


def differing_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``"dotted.key: old -> new"`` for every leaf where two configurations differ (``<absent>`` for a missing key).

    A key absent on one side and None (unset) on the other is not a difference: it is how a record written before an
    optional key existed reads against the same configuration now (e.g. ``negatives.temperature``).
    """
    a, b = _flatten(_canonical(old)), _flatten(_canonical(new))
    missing = "<absent>"
    return [f"{key}: {a.get(key, missing)} -> {b.get(key, missing)}" for key in sorted(set(a) | set(b))
            if a.get(key, missing) != b.get(key, missing) and (a.get(key) is not None or b.get(key) is not None)]


def read_record(folder: str | Path) -> dict[str, Any] | None:
    """The ``{"hash", "config"}`` record of a cached folder, or None when it has none."""
    path = Path(folder) / CACHE_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err}): delete it and the cached results beside it") from err
    if not isinstance(record, dict) or not {"hash", "config"} <= set(record):
        raise ConfigError(f"{path} is not a vitlab cache record: delete it and the cached results beside it")
    return record


def write_record(folder: str | Path, config: Mapping[str, Any]) -> None:
    """Record in ``folder`` that its contents are made by ``config``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"hash": config_hash(config), "config": _canonical(config)}
    (folder / CACHE_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def cache_differences(folder: str | Path, config: Mapping[str, Any], fallback: Mapping[str, Any] | None = None,
                      ignore: tuple[str, ...] = ()) -> list[str] | None:
    """How ``folder``'s cached work differs from ``config`` (`differing_keys`, minus the dotted keys in ``ignore``);
    ``None`` when it records no configuration (no cache record and no ``fallback``). Reads only."""
    record = read_record(folder)
    made_by = record["config"] if record is not None else fallback
    if made_by is None:
        return None
    return [change for change in differing_keys(made_by, config) if change.split(":", 1)[0] not in ignore]


def ensure_cache_matches(folder: str | Path, config: Mapping[str, Any], what: str, reuse_as_is: bool = False,
                         fallback: Mapping[str, Any] | None = None, ignore: tuple[str, ...] = ()) -> None:
    """Refuse to reuse ``folder``'s cached ``what`` unless it was made by ``config`` (then the record is (re)written).

    Args:
        folder: the cached stage's folder.
        config: the configuration asked for now.
        what: a few words for the message, e.g. ``"pretrained weights"``.
        reuse_as_is: reuse whatever is there (``--reuse_cached_as_is true``); the record is left as it is.
        fallback: the configuration the folder says made it when it has no record (e.g. a ``vitlab fit`` run
            folder's ``config.yaml``); None: a folder without a record is refused.
        ignore: dotted keys whose difference does not matter (e.g. ``trainer.accelerator``: where it ran).

    Raises:
        ConfigError: the folder was made by another configuration (the differing keys are named) or records none.
    """
    if reuse_as_is:
        return
    folder = Path(folder)
    fix = (f"delete {folder} to redo it with this configuration, use another output folder or name, or pass "
           "--reuse_cached_as_is true to use it anyway")
    changed = cache_differences(folder, config, fallback, ignore)
    if changed is None:
        raise ConfigError(f"{folder} holds {what} with no record of the configuration that made it: {fix}")
    if changed:
        shown = "; ".join(changed[:8]) + (f"; and {len(changed) - 8} more" if len(changed) > 8 else "")
        raise ConfigError(f"{folder} holds {what} made by another configuration ({shown}): {fix}")
    record = read_record(folder)
    if record is None or record["hash"] != config_hash(config):
        write_record(folder, config)
