"""Argument checks shared by the benchmark scripts: refuse what cannot work before any measuring starts.

Each check calls ``parser.error`` (one line naming the fix, exit status 2), as argparse does for its own errors.
The scripts import this file as ``_args`` (Python puts the script's folder first on ``sys.path``).

Example:
    >>> parser = argparse.ArgumentParser()
    >>> check_out(parser, Path("/tmp/bench.json"))  # returns quietly: the file can be written
"""

from __future__ import annotations

import argparse
import math
import subprocess
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def check_out(parser: argparse.ArgumentParser, path: Path, option: str = "--out") -> None:
    """Refuse an output file that cannot be written (a folder, a missing folder, a read-only place) up front.

    The file is opened for appending (which creates it) and removed again if it did not exist, so nothing is left
    behind and an existing result is not touched.
    """
    if path.is_dir():
        parser.error(f"{option} {path}: a folder; pass a file name inside it, e.g. {option} {path / 'result.json'}")
    if not path.parent.is_dir():
        parser.error(f"{option} {path}: the folder {path.parent} does not exist; create it (mkdir -p {path.parent}) "
                     f"or pass another {option}")
    existed = path.exists()
    try:
        with path.open("a"):
            pass
    except OSError as err:
        parser.error(f"{option} {path}: cannot be written ({err.strerror}); pass a writable place, e.g. "
                     f"{option} /tmp/{path.name}")
    if not existed:
        path.unlink()


def check_positive(parser: argparse.ArgumentParser, **values: float) -> None:
    """Refuse a count or duration below 1 (ints) or not a finite number > 0 (floats); keys name the options."""
    for key, value in values.items():
        option = "--" + key.replace("_", "-")
        if isinstance(value, float) and not (math.isfinite(value) and value > 0):
            parser.error(f"{option} must be a finite number > 0, got {value}")
        if isinstance(value, int) and value < 1:
            parser.error(f"{option} must be >= 1, got {value}")


def check_device(parser: argparse.ArgumentParser, name: str, option: str = "--device") -> None:
    """Refuse a device other than ``cpu``, ``cuda`` or ``cuda:N``, and CUDA on a machine where torch sees no GPU."""
    if name != "cpu" and not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        parser.error(f"{option} must be cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            parser.error(f"{option} {name}: torch sees no CUDA GPU on this machine; pass {option} cpu")
        index = int(name[5:] or 0)
        if index >= torch.cuda.device_count():
            parser.error(f"{option} {name}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                         f"pass {option} cuda:0")


def check_python_file(parser: argparse.ArgumentParser, path: Path | None, option: str, expected: str) -> None:
    """Refuse a ``--official`` / ``--baseline`` path that is not an existing ``.py`` file (``None``: not given)."""
    if path is None:
        return
    if path.is_dir():
        parser.error(f"{option} {path}: a folder; pass the model file itself ({expected})")
    if not path.is_file():
        parser.error(f"{option} {path}: no such file; pass the path of your copy of {expected}")
    if path.suffix != ".py":
        parser.error(f"{option} {path}: not a Python file; pass the model file ({expected})")


def check_git_files(parser: argparse.ArgumentParser, rev: str, paths: tuple[str, ...], option: str) -> None:
    """Refuse a git revision of this repository that is unknown or lacks one of ``paths``."""
    if not rev or rev.startswith("-"):
        parser.error(f"{option} {rev!r}: not a git revision; pass a commit such as b7ef576")
    for path in paths:
        try:
            found = subprocess.run(["git", "cat-file", "-e", f"{rev}:{path}"], cwd=REPO, capture_output=True,
                                   check=False).returncode == 0
        except OSError as err:
            parser.error(f"{option} needs git to read {path} at {rev} ({err.strerror}); install git")
        if not found:
            parser.error(f"{option} {rev}: no {path} at that revision of {REPO}; pass a revision of vitlab 0.1 "
                         f"that has it (git log --oneline -- {path})")
