"""d90 sweeps: a log-spaced d grid, one ``train_and_eval(dim) -> accuracy`` call per point, CSV, d90, plot.

The CSV (columns ``SWEEP_COLUMNS``) is the sweep's memory: a finished point is one appended row, so an interrupted
sweep resumes by skipping the points already recorded, and several processes can share one CSV. Each process claims
a point by creating ``<csv>.locks/<group>-<dim>.lock`` exclusively; a lock whose process has died is taken over.
The 100 % reference is the row with ``group == "reference"`` (``dim`` empty).

d90 (Li et al. 2018): the smallest d whose accuracy reaches ``fraction × reference``. ``raw`` is that grid value;
``interpolated`` interpolates linearly in log d between it and the grid point just below it.

Refinement (``refine_ratio``, default 2 in ``vitlab intrinsic-dim``): after the coarse grid, ``run_sweep`` adds the
geometric midpoint of the last miss and the first hit (`refinement_point`) and repeats until the two are at most
``refine_ratio`` apart, so d90 is a measured point within a factor ``refine_ratio`` of the true threshold instead
of an interpolation across the coarse grid's gap (10× for a grid of one point per decade).

Example:
    >>> find_d90({10: 0.5, 100: 0.8, 1000: 0.95}, reference=1.0).raw
    1000
    >>> round(find_d90({10: 0.5, 100: 0.8, 1000: 0.95}, reference=1.0).interpolated)
    464
    >>> refinement_point({10: 0.5, 100: 0.8, 1000: 0.95}, threshold=0.9)
    316
"""

from __future__ import annotations

import csv
import fcntl
import math
import numbers
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SWEEP_COLUMNS", "D90", "SweepResult", "find_d90", "log_grid", "plot_sweep", "read_sweep",
           "refinement_point", "run_sweep"]

SWEEP_COLUMNS = ("group", "dim", "accuracy", "seconds")
REFERENCE = "reference"


def log_grid(start: int, stop: int, num: int) -> list[int]:
    """``num`` log-spaced integers from ``start`` to ``stop`` (both included), rounded, duplicates dropped.

    Example:
        >>> log_grid(10, 10000, 7)
        [10, 32, 100, 316, 1000, 3162, 10000]
    """
    if not (isinstance(start, int) and isinstance(stop, int) and isinstance(num, int)) or not 1 <= start <= stop:
        raise ValueError(f"log_grid needs ints 1 <= start <= stop, got start={start!r}, stop={stop!r}")
    if num < 1 or (num == 1 and start != stop):
        raise ValueError(f"log_grid needs num >= 2 points for start < stop, got num={num!r}")
    if num == 1:
        return [start]
    ratio = math.log(stop / start) / (num - 1)
    return sorted({round(start * math.exp(i * ratio)) for i in range(num)})


@dataclass(frozen=True)
class D90:
    """Result of ``find_d90``: the threshold, the grid d that first reaches it and its log-d interpolation."""

    threshold: float
    raw: int | None
    interpolated: float | None


def find_d90(points: Mapping[int, float], reference: float, fraction: float = 0.9) -> D90:
    """The smallest d whose accuracy reaches ``fraction * reference`` (``None`` when no point does).

    Args:
        points: ``{dim: accuracy}``.
        reference: accuracy of the 100 % run (full fine-tuning or training from scratch).
        fraction: 0.9 for d90.
    """
    _check_fraction(fraction)
    _check_accuracy(reference, "reference accuracy", positive=True)
    for d, accuracy in points.items():
        _check_accuracy(accuracy, f"the accuracy at d={d}")
    threshold = fraction * reference
    dims = sorted(points)
    for i, d in enumerate(dims):
        if points[d] >= threshold:
            if i == 0:
                return D90(threshold, d, float(d))
            lo, a_lo, a_hi = dims[i - 1], points[dims[i - 1]], points[d]
            t = (threshold - a_lo) / (a_hi - a_lo)
            return D90(threshold, d, math.exp(math.log(lo) + t * (math.log(d) - math.log(lo))))
    return D90(threshold, None, None)


def refinement_point(points: Mapping[int, float], threshold: float, max_ratio: float = 2.0) -> int | None:
    """The next point to measure between the last miss and the first hit, or ``None`` when no point is needed.

    The first hit ``h`` is the smallest d whose accuracy reaches ``threshold``; the last miss ``m`` is the largest d
    below it. While ``h / m > max_ratio`` the answer is their geometric midpoint ``round(sqrt(m·h))`` (kept strictly
    between the two); ``None`` when they are close enough, when no point reaches the threshold, or when the first
    hit is the smallest point (nothing below it to bracket the threshold with).

    Args:
        points: ``{dim: accuracy}`` measured so far.
        threshold: the accuracy to reach (``fraction × reference``).
        max_ratio: the largest ratio allowed between the last miss and the first hit (> 1).

    Example:
        >>> refinement_point({10: 0.1, 1000: 0.95}, threshold=0.9)
        100
        >>> refinement_point({10: 0.1, 100: 0.5, 178: 0.95}, threshold=0.9, max_ratio=2.0) is None
        True
    """
    if isinstance(max_ratio, bool) or not isinstance(max_ratio, int | float) or not max_ratio > 1:
        raise ValueError(f"max_ratio must be a number > 1 (e.g. 2: points at most 2x apart), got {max_ratio!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite accuracy (fraction x reference, e.g. 0.9 * 0.95), got "
                         f"{threshold!r}")
    for d, accuracy in points.items():
        _check_accuracy(accuracy, f"the accuracy at d={d}")
    dims = sorted(points)
    hit = next((i for i, d in enumerate(dims) if points[d] >= threshold), None)
    if not hit:  # None (not reached) or 0 (reached at the smallest point)
        return None
    miss, first = dims[hit - 1], dims[hit]
    if first <= max_ratio * miss:
        return None
    mid = round(math.sqrt(miss * first))
    return mid if miss < mid < first else None


def _check_fraction(fraction: float) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be a number in (0, 1] (0.9 for d90), got {fraction!r}")


def _check_accuracy(value: float, what: str, positive: bool = False) -> None:
    """Accuracies are fractions in [0, 1] (``positive``: in (0, 1]); NaN, inf and percentages are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or not (
            0 < value <= 1 if positive else 0 <= value <= 1):
        span = "(0, 1]" if positive else "[0, 1]"
        raise ValueError(f"{what} must be a finite accuracy in {span} (a fraction: 0.95, not 95), got {value!r}")


@dataclass(frozen=True)
class SweepResult:
    """A sweep's state: points ``{dim: accuracy}``, the reference, d90, whether every grid point is done (and the
    refinement finished), and ``refined``, the points added between the last miss and the first hit."""

    group: str
    points: dict[int, float]
    reference: float | None
    d90: D90 | None
    complete: bool
    refined: tuple[int, ...] = ()


def read_sweep(csv_path: str | Path) -> list[dict]:
    """Rows of a sweep CSV as dicts (``dim`` int or None, ``accuracy``/``seconds`` float); [] when absent."""
    path = Path(csv_path)
    if not path.exists():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or tuple(reader.fieldnames) != SWEEP_COLUMNS:
            raise ValueError(f"{path} is not a sweep CSV (header {reader.fieldnames}, expected {list(SWEEP_COLUMNS)});"
                             " pass another csv_path")
        return [dict(group=r["group"], dim=int(r["dim"]) if r["dim"] else None, accuracy=float(r["accuracy"]),
                     seconds=float(r["seconds"])) for r in reader]


def _append_row(path: Path, group: str, dim: int | None, accuracy: float, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            writer = csv.writer(f)
            if f.tell() == 0:
                writer.writerow(SWEEP_COLUMNS)
            writer.writerow([group, "" if dim is None else dim, repr(float(accuracy)), f"{seconds:.3f}"])
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _claim(lock: Path) -> bool:
    """Create ``lock`` exclusively (holding host:pid); take over a lock left by a dead process on this host."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = f"{socket.gethostname()}:{os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                host, pid = lock.read_text().rsplit(":", 1)
            except (OSError, ValueError):
                return False
            if host != socket.gethostname() or _alive(int(pid)):
                return False
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _finite(value: float, what: str) -> float:
    value = float(value)
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise ValueError(f"{what} returned {value!r}; it must return a finite accuracy in [0, 1] (0.95, not 95)")
    return value


def _run_point(path: Path, group: str, dim: int | None, fn: Callable[[], float], what: str) -> None:
    lock = path.with_name(path.name + ".locks") / f"{group}-{'' if dim is None else dim}.lock"
    if not _claim(lock):
        return
    try:
        if any(r["group"] == group and r["dim"] == dim for r in read_sweep(path)):
            return  # another process finished it between our read and our claim
        start = time.perf_counter()
        accuracy = _finite(fn(), what)
        _append_row(path, group, dim, accuracy, time.perf_counter() - start)
    finally:
        lock.unlink(missing_ok=True)


def _state(path: Path, group: str) -> tuple[dict[int, float], float | None]:
    rows = read_sweep(path)
    refs = [r["accuracy"] for r in rows if r["group"] == REFERENCE]
    return {r["dim"]: r["accuracy"] for r in rows if r["group"] == group}, (refs[0] if refs else None)


def run_sweep(
    train_and_eval: Callable[[int], float],
    dims: Iterable[int],
    csv_path: str | Path,
    *,
    reference: float | Callable[[], float] | None = None,
    group: str = "all",
    fraction: float = 0.9,
    stop_after_reached: int | None = None,
    refine_ratio: float | None = None,
    plot_path: str | Path | None = None,
) -> SweepResult:
    """Run (or resume) a d90 sweep: the reference first, then every grid point not yet in ``csv_path``.

    Args:
        train_and_eval: trains a subspace model of dimension ``dim`` and returns its accuracy.
        dims: the d grid (e.g. ``log_grid(10, 10_000, 10)``), run in ascending order.
        csv_path: the sweep CSV (created, appended, shared across processes).
        reference: the 100 % accuracy, or a callable that trains the reference run (recorded once in the CSV).
        group: label of this sweep in the CSV (``"all"``, or a module kind for per-module sweeps).
        fraction: 0.9 for d90.
        stop_after_reached: skip the rest of the grid once this many points reached the threshold (None: all).
        refine_ratio: after the grid, add points between the last miss and the first hit (`refinement_point`) until
            they are at most this factor apart (e.g. 2.0); ``None``: the grid only.
        plot_path: where to write the accuracy-vs-d plot (PNG/PDF/SVG), or None.

    Returns:
        The ``SweepResult`` from everything recorded so far (``complete`` is False while other processes still run
        grid or refinement points, or when ``stop_after_reached`` cut the grid short); ``refined`` lists the points
        this sweep holds off the grid.
    """
    path = Path(csv_path)
    dims = [int(d) if isinstance(d, numbers.Integral) and not isinstance(d, bool) else d for d in dims]  # NumPy ints
    grid = sorted(set(dims))
    if not grid or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in grid):
        raise ValueError(f"dims must be a non-empty list of positive ints, got {grid!r}")
    if group == REFERENCE or not group or "/" in group:
        raise ValueError(f"group must be a non-empty name without '/' other than {REFERENCE!r}, got {group!r}")
    _check_fraction(fraction)
    if reference is not None and not callable(reference):
        _check_accuracy(reference, "reference", positive=True)
    if stop_after_reached is not None and stop_after_reached < 1:
        raise ValueError(f"stop_after_reached must be None or >= 1, got {stop_after_reached!r}")
    if refine_ratio is not None:
        refinement_point({}, 1.0, refine_ratio)  # validates refine_ratio now
    points, ref = _state(path, group)
    if ref is not None and reference is not None and not callable(reference) and float(reference) != ref:
        raise ValueError(f"{path} records reference accuracy {ref} but reference={reference} was passed; "
                         "use another csv_path for another experiment")
    if ref is None and callable(reference):
        _run_point(path, REFERENCE, None, reference, "the reference run")
    elif ref is None and reference is not None:
        _append_row(path, REFERENCE, None, _finite(reference, "reference"), 0.0)
    for d in grid:
        points, ref = _state(path, group)
        if stop_after_reached is not None and ref is not None:
            if sum(a >= fraction * ref for a in points.values()) >= stop_after_reached:
                break
        if d not in points:
            _run_point(path, group, d, lambda d=d: train_and_eval(d), f"train_and_eval({d})")
    pending = None
    while refine_ratio is not None:
        points, ref = _state(path, group)
        pending = refinement_point(points, fraction * ref, refine_ratio) if ref is not None else None
        if pending is None:
            break
        _run_point(path, group, pending, lambda d=pending: train_and_eval(d), f"train_and_eval({pending})")
        if pending not in _state(path, group)[0]:
            break  # another process holds this point: the refinement is not finished
    points, ref = _state(path, group)
    d90 = find_d90(points, ref, fraction) if ref is not None and points else None
    if plot_path is not None and points:
        plot_sweep({group: points}, ref, plot_path, fraction=fraction)
    complete = all(d in points for d in grid) and (pending is None or pending in points)
    return SweepResult(group, points, ref, d90, complete=complete, refined=tuple(sorted(set(points) - set(grid))))


def plot_sweep(curves: Mapping[str, Mapping[int, float]], reference: float | None, path: str | Path,
               fraction: float = 0.9, title: str = "Accuracy vs subspace dimension") -> Path:
    """Accuracy vs d (log x) per curve, with the reference and the ``fraction`` line and each curve's d90 marked.

    A ``.png`` path gets the same plot as ``.svg`` beside it; other suffixes (``.pdf``, ``.svg``) are written alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, points in curves.items():
        dims = sorted(points)
        line = ax.plot(dims, [points[d] for d in dims], marker="o", label=name)[0]
        if reference is not None:
            d90 = find_d90(points, reference, fraction)
            if d90.interpolated is not None:
                ax.axvline(d90.interpolated, color=line.get_color(), linestyle=":", linewidth=1)
    if reference is not None:
        ax.axhline(reference, color="black", linewidth=1, label="reference (100 %)")
        ax.axhline(fraction * reference, color="gray", linestyle="--", linewidth=1,
                   label=f"{fraction:.0%} of reference")
    ax.set_xscale("log")
    ax.set_xlabel("subspace dimension d")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    if out.suffix.lower() == ".png":  # a vector copy beside the bitmap
        fig.savefig(out.with_suffix(".svg"), bbox_inches="tight")
    return out
