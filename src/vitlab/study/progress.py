"""Progress of the sweep commands (``intrinsic-dim``, ``peft-study``, ``study``): one tqdm bar over the runs, with
an ETA from the runs finished so far, and Lightning's per-run banners muted while it shows.

Lightning prints, for every ``Trainer``, "GPU available: ... / TPU available / HPU available", a litlogger tip, and
warns that a checkpoint or log directory "exists and is not empty"; in a sweep of many runs these repeat once per
run. `quiet_lightning` turns the info messages off (Lightning's ``rank_zero`` logger to WARNING) and ignores those
two warnings; every other warning and error still shows.

Example:
    >>> with sweep_progress(2, "demo", disable=True) as bar:
    ...     bar.total
    2
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["quiet_lightning", "sweep_progress"]

#: The loggers Lightning's ``rank_zero_info`` writes the per-run banners to.
_BANNER_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                   "lightning.pytorch.accelerators.cuda")
_REPEATED_WARNINGS = (r".*exists and is not empty.*", r".*litlogger.*")


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Mute Lightning's per-run banners and "directory not empty" warnings inside the ``with`` block."""
    loggers = [logging.getLogger(name) for name in _BANNER_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        for pattern in _REPEATED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


@contextmanager
def sweep_progress(total: int, desc: str, disable: bool | None = None) -> Iterator[Any]:
    """A tqdm bar over ``total`` runs (unit "run", ETA from the finished ones), Lightning quiet while it is open.

    Args:
        total: runs still to do (cached runs are not counted, so the ETA is not fooled by them).
        desc: the bar's label, e.g. ``"peft-study"``.
        disable: ``True`` hides the bar; ``None`` (default) hides it when stderr is not a terminal (tqdm's rule).

    Yields:
        The ``tqdm`` bar: call ``bar.update(1)`` after each run and ``bar.write(text)`` to print a line above it.
    """
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ValueError(f"total must be a number of runs >= 0, got {total!r}")
    from tqdm.auto import tqdm

    with quiet_lightning(), tqdm(total=total, desc=desc, unit="run", disable=disable, dynamic_ncols=True) as bar:
        yield bar
