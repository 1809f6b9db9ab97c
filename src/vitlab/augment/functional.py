"""Pure tensor operations behind the patch transforms: grid checks and one vectorised cell remap.

Every patch-based negative view (P-Shuffle, P-Rotate, P-Infill) is a *cell remap*: the image is cut into a grid of
``patch_size`` x ``patch_size`` cells, numbered row-major, and output cell ``n`` of sample ``b`` is input cell
``source[b, n]`` turned counter-clockwise by ``90 * rotation[b, n]`` degrees (the convention of ``torch.rot90``).
`remap_cells` applies any such remap with one ``gather`` whose index is built arithmetically, so there is no Python
loop over images or cells, the result is exact (no interpolation) and all kinds can be mixed in one batch. It is the
reference; `move_cells` gives bit-identical results faster (what the transforms use): it touches only the bounding box
of the cells that change and, where no cell in it turns, moves whole cell rows (runs of ``patch_size`` pixels) as
wide elements instead of single pixels.

Example:
    >>> import torch
    >>> x = torch.arange(16.0).view(1, 1, 4, 4)
    >>> source = torch.tensor([[1, 0, 2, 3]])          # swap the two top cells of the 2x2 grid
    >>> rotation = torch.tensor([[0, 0, 0, 2]])        # turn the bottom-right cell by 180 degrees
    >>> remap_cells(x, 2, source, rotation)[0, 0]
    tensor([[ 2.,  3.,  0.,  1.],
            [ 6.,  7.,  4.,  5.],
            [ 8.,  9., 15., 14.],
            [12., 13., 11., 10.]])
    >>> torch.equal(move_cells(x, 2, source, rotation), remap_cells(x, 2, source, rotation))
    True
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from vitlab.checks import check_int
from vitlab.errors import ConfigError

__all__ = [
    "cell_grid", "check_cell_params", "check_positive_int", "inverse_cell_params", "move_cells", "remap_cells",
    "valid_patch_sizes",
]


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """``value`` as an int if it is an integer >= ``minimum`` (Python or NumPy int, not a bool); else a
    `vitlab.errors.ConfigError` naming ``name``.

    Example:
        >>> import numpy as np
        >>> check_positive_int("patch_size", np.int64(8), minimum=2)
        8
    """
    return check_int(name, value, minimum=minimum)


def check_cell_params(source: object, rotation: object, batch: int, cells: int) -> None:
    """Check a ``(source, rotation)`` cell remap for a batch of ``batch`` images with ``cells`` cells each.

    ``source`` must be an integer tensor ``(B, N)`` with values in ``[0, N)``; ``rotation`` ``None`` or an integer
    tensor ``(B, N)`` with values in ``{0, 1, 2, 3}``. The value check reads the small ``(B, N)`` tensors once (one
    min/max each), never the images. Raises `vitlab.errors.ConfigError` (TypeError for a non-tensor).

    Example:
        >>> import torch
        >>> check_cell_params(torch.tensor([[1, 0]]), torch.tensor([[0, 4]]), 1, 2)
        Traceback (most recent call last):
        ...
        vitlab.errors.ConfigError: rotation holds values in [0, 4] but quarter turns must be 0, 1, 2 or 3
    """
    expected = (batch, cells)
    for name, value, high in (("source", source, cells - 1), ("rotation", rotation, 3)):
        if value is None and name == "rotation":
            continue
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor {expected} of int64, got {type(value).__name__}")
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise ConfigError(f"{name} must hold integer cell indices (int64), got {value.dtype}; "
                              f"convert with {name}.long()")
        if tuple(value.shape) != expected:
            raise ConfigError(f"{name} has shape {tuple(value.shape)} but this batch needs {expected} "
                              f"(batch size, cells of the grid)")
        if value.numel():
            low, top = torch.stack(value.aminmax()).tolist()
            if low < 0 or top > high:
                what = (f"cell indices must be in [0, {cells}) ({cells} cells)" if name == "source"
                        else "quarter turns must be 0, 1, 2 or 3")
                raise ConfigError(f"{name} holds values in [{low}, {top}] but {what}")


def valid_patch_sizes(
    height: int,
    width: int,
    model_patch_size: int | None = None,
    accept: Callable[[int, int], bool] | None = None,
) -> list[int]:
    """Cell sizes that tile a ``height`` x ``width`` image exactly, from 2 pixels up (a 1-pixel cell is no patch: its
    rotation is the identity, so the patch transforms refuse it).

    Args:
        height: image height H in pixels.
        width: image width W in pixels.
        model_patch_size: if given, keep only multiples of it (the paper's alignment rule with the ViT's tokens).
        accept: optional extra filter ``accept(grid_h, grid_w) -> bool`` on the resulting cell grid.

    Returns:
        Increasing list of sizes ``s >= 2`` with ``H % s == 0`` and ``W % s == 0`` that pass the filters.

    Example:
        >>> valid_patch_sizes(224, 224, model_patch_size=16)
        [16, 32, 112, 224]
    """
    height, width = check_positive_int("height", height, 1), check_positive_int("width", width, 1)
    if model_patch_size is not None:
        model_patch_size = check_positive_int("model_patch_size", model_patch_size, 1)
    sizes = []
    for size in range(2, min(height, width) + 1):
        if height % size or width % size:
            continue
        if model_patch_size is not None and size % model_patch_size:
            continue
        if accept is not None and not accept(height // size, width // size):
            continue
        sizes.append(size)
    return sizes


def cell_grid(
    height: int,
    width: int,
    patch_size: int,
    model_patch_size: int | None = None,
    problem: Callable[[int, int], str | None] | None = None,
) -> tuple[int, int]:
    """The ``(rows, cols)`` cell grid of an image, or a `vitlab.errors.ConfigError` that lists the patch sizes that fit.

    Args:
        height: image height H.
        width: image width W.
        patch_size: cell side in pixels.
        model_patch_size: enforce ``patch_size % model_patch_size == 0`` (alignment with the ViT's patches).
        problem: extra condition on the grid: ``problem(rows, cols)`` returns why the grid is unusable, or ``None``.

    Example:
        >>> cell_grid(32, 48, 8)
        (4, 6)
    """
    height, width = check_positive_int("height", height, 1), check_positive_int("width", width, 1)
    patch_size = check_positive_int("patch_size", patch_size, 1)
    if model_patch_size is not None:
        model_patch_size = check_positive_int("model_patch_size", model_patch_size, 1)
    problems = []
    if height % patch_size or width % patch_size:
        problems.append(f"patch_size={patch_size} does not divide the {height}x{width} input")
    if model_patch_size is not None and patch_size % model_patch_size:
        problems.append(f"patch_size={patch_size} is not a multiple of model_patch_size={model_patch_size}")
    if not problems and problem is not None:
        reason = problem(height // patch_size, width // patch_size)
        if reason is not None:
            problems.append(f"patch_size={patch_size} gives a {height // patch_size}x{width // patch_size} "
                            f"cell grid: {reason}")
    if problems:
        accept = None if problem is None else (lambda rows, cols: problem(rows, cols) is None)
        sizes = valid_patch_sizes(height, width, model_patch_size, accept)
        aligned = f" (multiples of model_patch_size={model_patch_size})" if model_patch_size is not None else ""
        fits = ", ".join(map(str, sizes)) if sizes else "none (resize the input)"
        raise ConfigError(f"{'; '.join(problems)}. Patch sizes that fit this {height}x{width} input{aligned}: {fits}")
    return height // patch_size, width // patch_size


# Source offset of output pixel (i, j) inside a cell turned by k quarter turns (counter-clockwise, as torch.rot90):
# offset = A[k] * i + B[k] * j + C[k], with A, B in units of image rows (W) and pixels.
def _rotation_coefficients(width: int, patch_size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    last = patch_size - 1
    a = torch.tensor([width, -1, -width, 1], device=device)
    b = torch.tensor([1, width, -1, -width], device=device)
    c = torch.tensor([0, last, last * (width + 1), last * width], device=device)
    return a, b, c


def remap_cells(x: Tensor, patch_size: int, source: Tensor, rotation: Tensor | None = None) -> Tensor:
    """Move and turn the cells of a batch: output cell ``n`` = ``rot90(input cell source[b, n], rotation[b, n])``.

    Args:
        x: images ``(B, C, H, W)``, any dtype; H and W must be multiples of ``patch_size``.
        patch_size: cell side in pixels.
        source: ``(B, N)`` int64 source cell of each output cell, ``N = (H / patch_size) * (W / patch_size)``,
            cells numbered row-major.
        rotation: optional ``(B, N)`` quarter turns in ``{0, 1, 2, 3}`` (counter-clockwise); ``None`` = no turn.

    Returns:
        A new tensor ``(B, C, H, W)`` with the dtype and device of ``x``.
    """
    if not isinstance(x, Tensor) or x.ndim != 4:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ConfigError(f"x must be images (B, C, H, W), got {got}; add a batch dimension with x.unsqueeze(0)")
    batch, channels, height, width = x.shape
    rows, cols = cell_grid(height, width, patch_size)
    check_cell_params(source, rotation, batch, rows * cols)
    device = x.device
    source = source.to(device=device, dtype=torch.long)
    cell_row, cell_col = source.div(cols, rounding_mode="floor"), source.remainder(cols)
    start = cell_row * (patch_size * width) + cell_col * patch_size  # (B, N) first pixel of each source cell
    i = torch.arange(patch_size, device=device).view(1, 1, patch_size, 1, 1)
    j = torch.arange(patch_size, device=device).view(1, 1, 1, 1, patch_size)
    if rotation is None:
        base = start.view(batch, rows, 1, cols, 1) + i * width
        index = base + j
    else:
        a, b, c = _rotation_coefficients(width, patch_size, device)
        k = rotation.to(device=device, dtype=torch.long)
        base = (start + c[k]).view(batch, rows, 1, cols, 1)
        index = torch.addcmul(torch.addcmul(base, a[k].view(batch, rows, 1, cols, 1), i), b[k].view_as(base), j)
    index = index.reshape(batch, 1, height * width).expand(batch, channels, height * width)
    return x.reshape(batch, channels, height * width).gather(2, index).view(batch, channels, height, width)


# Element types a run of pixels is reinterpreted as (bit copies only, never arithmetic): (bytes, dtype), widest first.
_WIDE = ((16, torch.complex128), (8, torch.int64), (4, torch.int32), (2, torch.int16), (1, torch.uint8))


def _wide_dtype(x: Tensor, run_bytes: int) -> tuple[int, torch.dtype]:
    """The widest element that tiles every ``run_bytes``-byte run of the contiguous ``x`` exactly and aligned."""
    offset = x.storage_offset() * x.element_size()
    wide = _WIDE if x.device.type in ("cpu", "cuda") else _WIDE[1:]  # no complex128 (float64) on e.g. MPS
    return next((size, dtype) for size, dtype in wide if run_bytes % size == offset % size == x.data_ptr() % size == 0)


def _changed_box(
    source: Tensor, rotation: Tensor | None, rows: int, cols: int
) -> tuple[tuple[int, int, int, int] | None, bool, bool]:
    """``(box, turned, moved)`` from one host read of the ``(B, N)`` params: ``box = (row0, row1, col0, col1)`` is the
    smallest block of cells outside which no sample moves or turns a cell (``None``: nothing changes); ``turned`` /
    ``moved``: whether some cell turns / comes from another cell."""
    moves = source != torch.arange(rows * cols, device=source.device)
    turns = torch.zeros_like(moves) if rotation is None else rotation != 0
    grid = (moves | turns).view(-1, rows, cols).any(dim=0)
    hit_rows, hit_cols = grid.any(dim=1).nonzero().flatten(), grid.any(dim=0).nonzero().flatten()
    if hit_rows.numel() == 0:
        return None, False, False
    row0, row1, col0, col1, turned, moved = torch.stack(
        [hit_rows[0], hit_rows[-1] + 1, hit_cols[0], hit_cols[-1] + 1, turns.any().long(), moves.any().long()]
    ).tolist()
    return (row0, row1, col0, col1), bool(turned), bool(moved)


def _cell_start(cells: Tensor, cols: int, patch_size: int, row_units: int, run_units: int) -> Tensor:
    """Flat index of the first element of each cell (any shape), with ``row_units`` elements per image row and
    ``run_units`` per cell row."""
    return cells.div(cols, rounding_mode="floor") * (patch_size * row_units) + cells.remainder(cols) * run_units


def _run_index(source: Tensor, cols: int, patch_size: int, row_units: int, run_units: int) -> Tensor:
    """``(B, n_rows, patch_size, n_cols, run_units)`` flat input index, in wide elements (``run_units`` per cell row,
    ``row_units`` per image row), of the runs of the output cells whose sources are ``source (B, n_rows, n_cols)``."""
    batch, box_rows, box_cols = source.shape
    start = _cell_start(source, cols, patch_size, row_units, run_units)
    line = torch.arange(patch_size, device=source.device).view(1, 1, patch_size, 1, 1) * row_units
    step = torch.arange(run_units, device=source.device).view(1, 1, 1, 1, run_units)
    return start.view(batch, box_rows, 1, box_cols, 1) + line + step  # the last add is the only full-size pass


@functools.lru_cache(maxsize=8)
def _turned_pixels(height: int, width: int, patch_size: int, device: torch.device) -> Tensor:
    """``(4 * rows * patch_size * cols, patch_size)``: row ``(k, r, i, cc)`` holds the flat input pixel index of run
    ``i`` of cell ``(r, cc)`` turned in place by ``k`` quarter turns (a small per-size table: ``4 * H * W`` entries)."""
    rows, cols = height // patch_size, width // patch_size
    a, b, c = (t.view(4, 1, 1, 1, 1) for t in _rotation_coefficients(width, patch_size, device))
    i = torch.arange(patch_size, device=device).view(1, 1, patch_size, 1, 1)
    j = torch.arange(patch_size, device=device).view(1, 1, 1, 1, patch_size)
    start = (torch.arange(rows, device=device).view(1, rows, 1, 1, 1) * (patch_size * width)
             + torch.arange(cols, device=device).view(1, 1, 1, cols, 1) * patch_size)
    return (start + a * i + b * j + c).reshape(-1, patch_size)


def _pixel_index(
    source: Tensor, turns: Tensor, box: tuple[int, int, int, int], height: int, width: int, patch_size: int,
    moved: bool,
) -> Tensor:
    """``(B, n_rows, patch_size, n_cols, patch_size)`` flat input pixel index of the box's output cells, which copy
    ``rot90(cell source, turns)`` (both ``(B, n_rows, n_cols)``), as in `remap_cells`: rows of the turned-in-place
    table, shifted by the source cell's offset when some cell ``moved``."""
    batch, box_rows, box_cols = source.shape
    row0, row1, col0, col1 = box
    rows, cols, device = height // patch_size, width // patch_size, source.device
    runs = torch.arange(rows * patch_size * cols, device=device).view(rows, patch_size, cols)[row0:row1, :, col0:col1]
    key = turns.remainder(4).view(batch, box_rows, 1, box_cols) * (rows * patch_size * cols) + runs
    table = _turned_pixels(height, width, patch_size, device)
    index = table.index_select(0, key.flatten()).view(batch, box_rows, patch_size, box_cols, patch_size)
    if moved:
        target = torch.arange(rows * cols, device=device).view(rows, cols)[row0:row1, col0:col1]
        shift = _cell_start(source, cols, patch_size, width, patch_size)
        shift -= _cell_start(target, cols, patch_size, width, patch_size)
        index += shift.view(batch, box_rows, 1, box_cols, 1)
    return index


def _inverse(source: Tensor) -> Tensor | None:
    """``(B, N)`` inverse permutations of the rows of ``source``, or ``None`` if some row is not a permutation."""
    inverse = torch.full_like(source, -1, dtype=torch.long)
    inverse.scatter_(1, source.long(), torch.arange(source.shape[1], device=source.device).expand_as(inverse))
    return inverse if bool((inverse >= 0).all()) else None  # a row misses a cell iff another cell is used twice


def inverse_cell_params(source: Tensor, rotation: Tensor | None) -> tuple[Tensor, Tensor]:
    """The ``(source, rotation)`` remap (both ``(B, N)``) that undoes the given one.

    Output cell ``n`` holds input cell ``source[n]`` turned by ``rotation[n]``; so input cell ``m`` is output cell
    ``inv[m]`` (``inv`` the inverse permutation) turned back by ``-rotation[inv[m]]``.

    Raises:
        ConfigError: some sample's ``source`` is not a permutation (P-Infill copies border cells over centre cells),
            naming the samples.

    Example:
        >>> import torch
        >>> inverse_cell_params(torch.tensor([[2, 0, 1]]), torch.tensor([[1, 0, 3]]))
        (tensor([[1, 2, 0]]), tensor([[0, 1, 3]]))
    """
    source = source.long()
    inverse = _inverse(source)
    if inverse is None:
        identity = torch.arange(source.shape[1], device=source.device)
        broken = (source.sort(dim=1).values != identity).any(dim=1).nonzero().flatten().tolist()
        raise ConfigError(f"sample(s) {broken} copy some cells over others (P-Infill), which cannot be undone; keep "
                          "the clean images instead (only P-Shuffle and P-Rotate are invertible)")
    turns = torch.zeros_like(source) if rotation is None else rotation.long().gather(1, inverse)
    return inverse, (4 - turns) % 4


@torch.compiler.disable  # bit views (e.g. 16-byte runs as complex128) break AOTAutograd's aliasing; runs eagerly
def move_cells(x: Tensor, patch_size: int, source: Tensor, rotation: Tensor | None = None) -> Tensor:
    """`remap_cells`, bit for bit, faster: only the changed block is moved, by wide runs when no cell turns.

    Inside ``torch.compile`` it runs eagerly (a graph break): it is one memory-bound copy with host-side decisions,
    and its bit reinterpretations cannot be traced.

    The ``(B, N)`` parameters are read on their own device (free on CPU, where the transforms draw them) to find the
    bounding box of the cells that move or turn in any sample; the rest of the output is a plain copy of ``x``.
    Without turns, cells are moved as runs of ``patch_size`` pixels, each reinterpreted as one or a few wide elements
    (bit copies of up to 16 bytes: a 4-px float32 run is one element); on CPU a permutation of the whole grid is
    *scattered* (input read in order, runs written to their places: far fewer cache misses than gathering from random
    places of a large batch). Turned cells are gathered pixel by pixel as in `remap_cells`. When autograd records
    (``x.requires_grad``), it is `remap_cells` itself (bit views would cut the gradient).

    Args:
        x: images ``(B, C, H, W)``, any dtype; H and W must be multiples of ``patch_size``.
        patch_size: cell side in pixels.
        source: ``(B, N)`` source cell of each output cell (row-major), as in `remap_cells`.
        rotation: optional ``(B, N)`` counter-clockwise quarter turns in ``{0, 1, 2, 3}``; ``None`` = no turn.

    Returns:
        A new tensor ``(B, C, H, W)`` with the dtype and device of ``x``, equal to ``remap_cells(x, ...)``.

    Raises:
        `vitlab.errors.ConfigError` (TypeError for a non-tensor ``source``) on the inputs `remap_cells` refuses: ``x``
        not 4-D, a ``patch_size`` that does not divide H and W, parameters of another shape, a cell index outside
        ``[0, N)``, a turn outside ``{0, 1, 2, 3}`` (never wrapped or read out of bounds).
    """
    if not isinstance(x, Tensor) or x.ndim != 4:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ConfigError(f"x must be images (B, C, H, W), got {got}; add a batch dimension with x.unsqueeze(0)")
    rows, cols = cell_grid(x.shape[-2], x.shape[-1], patch_size)
    check_cell_params(source, rotation, x.shape[0], rows * cols)
    return _move_cells(x, patch_size, source, rotation)


@torch.compiler.disable  # as move_cells
def _move_cells(x: Tensor, patch_size: int, source: Tensor, rotation: Tensor | None = None) -> Tensor:
    """`move_cells` without its input checks: the transforms' path (their parameters are drawn valid, and replayed
    ones are checked once in ``forward``)."""
    if x.requires_grad and torch.is_grad_enabled():
        return remap_cells(x, patch_size, source, rotation)
    batch, channels, height, width = x.shape
    rows, cols = height // patch_size, width // patch_size
    x = x.contiguous()
    box, turned, moved = _changed_box(source, rotation, rows, cols) if x.numel() else (None, False, False)
    if box is None:
        return x.clone()
    row0, row1, col0, col1 = box
    full = box == (0, rows, 0, cols)

    def crop(params: Tensor) -> Tensor:  # (B, N) -> (B, n_rows, n_cols) params of the box, on x's device
        return params.view(batch, rows, cols)[:, row0:row1, col0:col1].to(device=x.device, dtype=torch.long)

    def spread(index: Tensor) -> Tensor:  # (B, ...) flat index -> (B, C, L), shared by the channels
        return index.view(batch, 1, -1).expand(batch, channels, -1)

    if turned:
        assert rotation is not None
        flat = x.view(batch, channels, -1)
        index = _pixel_index(crop(source), crop(rotation), box, height, width, patch_size, moved)
        block = flat.gather(2, spread(index))
    else:
        size, wide = _wide_dtype(x, patch_size * x.element_size())
        row_units, run_units = width * x.element_size() // size, patch_size * x.element_size() // size
        flat = x.view(wide).view(batch, channels, -1)
        inverse = _inverse(source) if full and x.device.type == "cpu" else None  # CPU: cache misses; GPU: gather
        if inverse is not None:  # where each input run goes
            out = torch.empty_like(x)
            index = spread(_run_index(crop(inverse), cols, patch_size, row_units, run_units))
            out.view(wide).view(batch, channels, -1).scatter_(2, index, flat)
            return out
        block = flat.gather(2, spread(_run_index(crop(source), cols, patch_size, row_units, run_units)))
    block = block.view(x.dtype).view(batch, channels, (row1 - row0) * patch_size, (col1 - col0) * patch_size)
    if full:
        return block
    out = x.clone()
    out[:, :, row0 * patch_size : row1 * patch_size, col0 * patch_size : col1 * patch_size] = block
    return out
