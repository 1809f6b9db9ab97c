"""A run folder's rules: a plain name, one writer at a time, and a resume that keeps the run's own configuration.

- ``check_run_name``: ``--name`` is one plain folder name (no ``..``, no separators, not empty);
- ``RunLock``: ``<run>/.lock`` holds the writer's host and PID; a second writer is refused, a lock left by a process
  that no longer runs (killed) is taken over;
- ``resume_config``: a resumed run continues with the ``config.yaml`` it saved; a given configuration that differs is
  refused with the list of differences, except a larger ``trainer.max_epochs``, ``max_steps`` or ``max_time``
  (extending the run).

Example:
    >>> check_run_name("vit_fashion_mnist")
    'vit_fashion_mnist'
    >>> config_differences({"optim": {"lr": 0.001}}, {"optim": {"lr": 0.01}})
    ['optim.lr: 0.001 -> 0.01']
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import socket
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from vitlab.errors import ConfigError, MissingFileError
from vitlab.train.config import (
    DataConfig,
    ModelConfig,
    NegativesConfig,
    OptimConfig,
    PeftConfig,
    RunConfig,
)
from vitlab.yaml_loader import load_yaml_file

__all__ = ["RunLock", "check_run_name", "config_differences", "load_run_config", "max_time_seconds", "resume_config"]

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=-]*$")
_SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "negatives": NegativesConfig,
             "peft": PeftConfig}
CONFIG_NAME = "config.yaml"


def check_run_name(name: Any) -> str:
    """Return ``name`` if it is one plain folder name, else raise ``ConfigError`` saying what is allowed."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise ConfigError(f"run name {name!r} is not a plain folder name: use letters, digits and _ . + = - "
                          "(no path separators, not empty, not starting with '.' or '-'), e.g. --name vit_lr3e-4")
    return name


class RunLock:
    """Exclusive lock of a run folder for the life of one ``fit`` (a context manager).

    The lock file ``<run>/.lock`` is created with ``O_EXCL`` and holds ``{"host", "pid"}``. A lock whose process is
    gone (same host, PID not running) is stale and taken over; any other is refused with who holds it.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / ".lock"

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None and self._age() < _UNREADABLE_LOCK_S:  # created, not yet written by its process
                    holder = {"host": "?", "pid": "? (it is starting)"}
                elif holder is None or self._stale(holder):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                raise ConfigError(f"{self.path.parent} is in use by another vitlab process (host "
                                  f"{holder.get('host')}, pid {holder.get('pid')}): wait for it to finish, or "
                                  "choose another --name (if no such process runs any more, e.g. its machine or "
                                  f"container was stopped, delete {self.path})") from None
            with os.fdopen(fd, "w") as handle:
                json.dump({"host": socket.gethostname(), "pid": os.getpid()}, handle)
            return self
        raise ConfigError(f"could not lock {self.path.parent}: another process keeps taking the lock; retry")

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)

    def _age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except OSError:
            return math.inf  # gone meanwhile: nothing to wait for

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # unreadable: being written right now (see __enter__), or corrupt
        return holder if isinstance(holder, dict) else None

    @staticmethod
    def _stale(holder: dict[str, Any]) -> bool:
        if holder.get("host") != socket.gethostname():
            return False  # another machine's process: cannot check, so respect it
        pid = holder.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


#: Seconds an unreadable (empty) lock file is taken as one being written by a starting process, not as stale.
_UNREADABLE_LOCK_S = 10.0


def max_time_seconds(value: Any) -> float | None:
    """Seconds of a Lightning ``max_time`` (``"DD:HH:MM:SS"``, a ``timedelta`` or a dict of its keywords); ``None``
    when it cannot be read (Lightning names the problem).

    Example:
        >>> max_time_seconds("00:01:30:00"), max_time_seconds({"minutes": 2}), max_time_seconds("soon")
        (5400.0, 120.0, None)
    """
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        try:
            return datetime.timedelta(**value).total_seconds()
        except TypeError:
            return None  # Lightning names the bad key
    if isinstance(value, str) and value.count(":") == 3:
        try:
            days, hours, minutes, seconds = (float(part) for part in value.split(":"))
        except ValueError:
            return None
        return ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    return None


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The ``RunConfig`` a run saved in ``<run>/config.yaml``."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise MissingFileError(f"{path} is missing: {Path(run_dir)} is not a vitlab run folder")
    raw = load_yaml_file(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} does not hold a run configuration (a mapping of sections)")
    try:
        sections = {name: cls(**(raw.get(name) or {})) for name, cls in _SECTIONS.items()}
        top = {f.name: raw[f.name] for f in fields(RunConfig) if f.name not in _SECTIONS and f.name in raw}
        config = RunConfig(**top, **sections)
    except TypeError as err:
        raise ConfigError(f"{path} does not match this vitlab's run configuration ({err})") from None
    config.optim.betas = tuple(config.optim.betas)
    return config


def config_differences(saved: dict[str, Any], given: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: saved -> given`` for every leaf that differs between two nested dicts (sorted, dotted keys)."""
    out = []
    for key in sorted(set(saved) | set(given)):
        a, b = saved.get(key), given.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key not in ("kwargs", "options"):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif _plain(a) != _plain(b):
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))  # tuples as lists, so (0.9, 0.999) == [0.9, 0.999]


def resume_config(run_dir: str | Path, given: RunConfig, outputs: str | Path) -> RunConfig:
    """The configuration a resumed run continues with: the saved one, with its limits extended if asked.

    Args:
        run_dir: the run folder.
        given: the configuration the caller passed.
        outputs: the parent folder of run folders, to list the runs there when ``run_dir`` is not one.

    Raises:
        MissingFileError: no such run (the message lists the runs under ``outputs``).
        ConfigError: ``given`` differs from the saved configuration other than by a larger ``max_epochs``,
        ``max_steps`` or ``max_time``.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_NAME).is_file():
        runs = sorted(p.parent.name for p in Path(outputs).glob(f"*/{CONFIG_NAME}"))
        raise MissingFileError(f"no run to resume at {run_dir}: runs in {outputs}: {', '.join(runs) or 'none'} "
                               "(check --name and --output_dir, or drop --resume to start a new run)")
    saved = load_run_config(run_dir)
    saved.name, saved.output_dir = given.name, given.output_dir  # where the run lives now (a folder may be moved)
    saved_dict, given_dict = asdict(saved), asdict(given)
    extended = {key: given_dict["trainer"][key] for key in _LIMITS
                if key in given_dict["trainer"] and _extends(key, saved_dict["trainer"].get(key),
                                                             given_dict["trainer"][key])}
    given_dict["trainer"].update({key: saved_dict["trainer"].get(key) for key in extended})
    for key in extended:
        if key not in saved_dict["trainer"]:
            del given_dict["trainer"][key]
    differences = config_differences(saved_dict, given_dict)
    if differences:
        raise ConfigError(f"--resume continues {run_dir} with its own {CONFIG_NAME}; these options differ from it: "
                          f"{'; '.join(differences)}. Drop them (only a larger trainer.max_epochs, max_steps or "
                          "max_time may extend a run), or start a new run with another --name")
    saved.trainer = dict(saved.trainer, **extended)
    return saved


#: The ``trainer`` limits a resumed run may raise (a run stopped by one of them continues under a larger one).
_LIMITS = ("max_epochs", "max_steps", "max_time")


def _extends(key: str, saved: Any, given: Any) -> bool:
    """Whether ``given`` raises the limit ``key`` the run was saved with (``None`` / ``-1``: none)."""
    if key == "max_time":
        before, after = max_time_seconds(saved), max_time_seconds(given)
        return saved is not None and before is not None and (given is None or (after is not None and after > before))
    if not isinstance(given, int) or isinstance(given, bool) or not isinstance(saved, int) or saved == -1:
        return False
    return (given == -1 and key == "max_steps") or given > saved
