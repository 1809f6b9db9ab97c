"""Pure tensor operations behind the patch transforms: grid checks and one vectorised cell remap.

Every patch-based negative view (P-Shuffle, P-Rotate, P-Infill) is a *cell remap*: the image is cut into a grid of
``patch_size`` x ``patch_size`` cells, numbered row-major, and output cell ``n`` of sample ``b`` is input cell
``source[b, n]`` turned counter-clockwise by ``90 * rotation[b, n]`` degrees (the convention of ``torch.rot90``).
`remap_cells` applies any such remap with one ``gather`` whose index is built arithmetically, so there is no Python
loop over images or cells, the result is exact (no interpolation) and all kinds can be mixed in one batch.

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
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["cell_grid", "remap_cells", "valid_patch_sizes"]


def valid_patch_sizes(
    height: int,
    width: int,
    model_patch_size: int | None = None,
    accept: Callable[[int, int], bool] | None = None,
) -> list[int]:
    """Cell sizes that tile a ``height`` x ``width`` image exactly.

    Args:
        height: image height H in pixels.
        width: image width W in pixels.
        model_patch_size: if given, keep only multiples of it (the paper's alignment rule with the ViT's tokens).
        accept: optional extra filter ``accept(grid_h, grid_w) -> bool`` on the resulting cell grid.

    Returns:
        Increasing list of sizes ``s`` with ``H % s == 0`` and ``W % s == 0`` that pass the filters.

    Example:
        >>> valid_patch_sizes(224, 224, model_patch_size=16)
        [16, 32, 112, 224]
    """
    sizes = []
    for size in range(1, min(height, width) + 1):
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
    """The ``(rows, cols)`` cell grid of an image, or a ``ValueError`` that lists the patch sizes that fit.

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
        raise ValueError(f"{'; '.join(problems)}. Patch sizes that fit this {height}x{width} input{aligned}: {fits}")
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
    batch, channels, height, width = x.shape
    rows, cols = height // patch_size, width // patch_size
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
