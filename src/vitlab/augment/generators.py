"""Random parameters of the patch transforms, drawn per sample from an optional ``torch.Generator``.

Each function returns ``(B, N)`` int64 tensors on the generator's device (CPU when ``generator`` is ``None``, which
uses torch's default generator, seeded by ``torch.manual_seed`` / Lightning's ``seed_everything``). Rejection steps
loop over *retries*, never over images, and are what guarantees that no sample is returned unchanged.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> perm = shuffle_sources(4, 9, generator=g)
    >>> perm.shape, bool((perm == torch.arange(9)).all(dim=1).any())
    (torch.Size([4, 9]), False)
"""

from __future__ import annotations

import torch
from torch import Tensor

from vitlab.errors import ConfigError

__all__ = [
    "apply_probability", "check_generator", "infill_layout", "infill_sources", "rotation_turns", "shuffle_sources",
]


def check_generator(generator: object) -> None:
    """Refuse anything but ``None`` or a ``torch.Generator`` on a device that can draw numbers (not ``meta``).

    Example:
        >>> check_generator(0)
        Traceback (most recent call last):
        ...
        TypeError: generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or None, got int
    """
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        kind, module = type(generator).__qualname__, type(generator).__module__
        label = kind if module == "builtins" else f"{module}.{kind}"
        raise TypeError(f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or None, got "
                        f"{label}")
    if generator.device.type == "meta":
        raise ConfigError("generator is on the meta device, which cannot draw numbers: use a CPU (or the input's "
                          "accelerator) torch.Generator, e.g. torch.Generator().manual_seed(0)")


def _device(generator: torch.Generator | None) -> torch.device:
    if generator is None:
        return torch.device("cpu")
    check_generator(generator)
    return generator.device


def shuffle_sources(batch: int, cells: int, generator: torch.Generator | None = None) -> Tensor:
    """``(B, N)`` uniformly random cell orders, excluding the identity (needs ``N >= 2``).

    Each row is uniform over the ``N! - 1`` non-identity permutations (rejection sampling of whole rows).
    """
    if cells < 2:
        raise ValueError("P-Shuffle needs at least 2 cells; use a smaller patch_size")
    device = _device(generator)
    identity = torch.arange(cells, device=device)
    perm = torch.rand(batch, cells, generator=generator, device=device).argsort(dim=1)
    redo = (perm == identity).all(dim=1)
    while bool(redo.any()):
        count = int(redo.sum())
        perm[redo] = torch.rand(count, cells, generator=generator, device=device).argsort(dim=1)
        redo = (perm == identity).all(dim=1)
    return perm


def rotation_turns(batch: int, cells: int, generator: torch.Generator | None = None) -> Tensor:
    """``(B, N)`` quarter turns, each uniform in {0, 1, 2, 3}, conditioned on at least one non-zero turn per row."""
    device = _device(generator)
    turns = torch.randint(0, 4, (batch, cells), generator=generator, device=device)
    redo = (turns == 0).all(dim=1)
    while bool(redo.any()):
        count = int(redo.sum())
        turns[redo] = torch.randint(0, 4, (count, cells), generator=generator, device=device)
        redo = (turns == 0).all(dim=1)
    return turns


def infill_layout(
    rows: int, cols: int, replace_rate: float | None, centre_shape: tuple[int, int] | None
) -> tuple[int, int] | str:
    """The centred block ``(block_rows, block_cols)`` of P-Infill on a ``rows`` x ``cols`` cell grid.

    The block must sit strictly inside the border ring (``block_rows <= rows - 2``) and exactly in the centre
    (``rows - block_rows`` and ``cols - block_cols`` even). With ``centre_shape=None`` it is derived from
    ``replace_rate`` (= block cells / all cells, met exactly): of the shapes that fit, the one whose aspect ratio is
    closest to the grid's, the wider one on ties (8x8 grid: 25 % -> 4x4, 37.5 % -> 4x6; 4x4 grid: 25 % -> 2x2).

    Returns:
        The block shape, or a string explaining why none fits (callers turn it into an error).
    """
    total = rows * cols
    if centre_shape is not None:
        block_rows, block_cols = centre_shape
        if not (1 <= block_rows <= rows - 2 and 1 <= block_cols <= cols - 2):
            return f"centre_shape={centre_shape} does not fit inside the border ring of a {rows}x{cols} grid"
        if (rows - block_rows) % 2 or (cols - block_cols) % 2:
            return f"centre_shape={centre_shape} cannot be centred exactly on a {rows}x{cols} grid"
        if replace_rate is not None and abs(block_rows * block_cols - replace_rate * total) > 1e-9:
            rate = block_rows * block_cols / total
            return (f"centre_shape={centre_shape} replaces {rate:g} of a {rows}x{cols} grid, not "
                    f"replace_rate={replace_rate:g}; pass replace_rate={rate:g} or replace_rate=None")
        return block_rows, block_cols
    assert replace_rate is not None
    target = replace_rate * total
    if abs(target - round(target)) > 1e-9:
        return f"replace_rate={replace_rate:g} is not a whole number of cells on a {rows}x{cols} grid"
    target = round(target)
    shapes = [
        (r, target // r) for r in range(1, rows - 1)
        if target % r == 0 and 1 <= target // r <= cols - 2 and (rows - r) % 2 == 0 and (cols - target // r) % 2 == 0
    ]
    if not shapes:
        return f"no centred block of {target} cells fits inside the border ring of a {rows}x{cols} grid"
    return min(shapes, key=lambda s: (abs(s[0] / s[1] - rows / cols), s[0]))


def _ring_and_block(rows: int, cols: int, block: tuple[int, int], device: torch.device) -> tuple[Tensor, Tensor]:
    grid = torch.arange(rows * cols, device=device).view(rows, cols)
    ring = torch.ones(rows, cols, dtype=torch.bool, device=device)
    ring[1:-1, 1:-1] = False
    top, left = (rows - block[0]) // 2, (cols - block[1]) // 2
    return grid[ring], grid[top : top + block[0], left : left + block[1]].reshape(-1)


def infill_sources(
    batch: int,
    rows: int,
    cols: int,
    block: tuple[int, int],
    rule: str = "random",
    generator: torch.Generator | None = None,
) -> Tensor:
    """``(B, N)`` sources of P-Infill: identity, except the centre block whose cells copy border-ring cells.

    Args:
        batch: B.
        rows: grid rows.
        cols: grid columns.
        block: centre block shape from `infill_layout`.
        rule: ``"random"``: each centre cell copies an independent, uniformly drawn border cell;
            ``"distinct"``: the centre cells copy distinct border cells (uniform without replacement; needs at least
            as many border cells as centre cells).
        generator: source of randomness.
    """
    device = _device(generator)
    ring, centre = _ring_and_block(rows, cols, block, device)
    if rule == "random":
        pick = torch.randint(0, ring.numel(), (batch, centre.numel()), generator=generator, device=device)
    elif rule == "distinct":
        if centre.numel() > ring.numel():
            raise ValueError(f"source='distinct' needs {centre.numel()} border cells but the {rows}x{cols} grid has "
                             f"{ring.numel()}; use source='random' or a larger patch_size")
        pick = torch.rand(batch, ring.numel(), generator=generator, device=device).argsort(dim=1)[:, : centre.numel()]
    else:
        raise ValueError(f"unknown infill source rule {rule!r}; use 'random' or 'distinct'")
    sources = torch.arange(rows * cols, device=device).repeat(batch, 1)
    sources[:, centre] = ring[pick]
    return sources


def apply_probability(batch: int, p: float, generator: torch.Generator | None = None) -> Tensor:
    """``(B,)`` bool: which samples are transformed (each with probability ``p``; all when ``p == 1``)."""
    device = _device(generator)
    if p >= 1.0:
        return torch.ones(batch, dtype=torch.bool, device=device)
    return torch.rand(batch, generator=generator, device=device) < p
