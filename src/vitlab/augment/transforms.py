"""P-Shuffle, P-Rotate and P-Infill (Qin et al., NeurIPS 2022) as batched ``nn.Module`` transforms.

Each cuts the images into ``patch_size`` x ``patch_size`` cells and destroys global structure while keeping local
content; the shared contract (dtypes, generator, ``p``, ``same_on_batch``, replay, errors) is in
`vitlab.augment.base`. A ``torch.Generator`` passed from inside a ``Dataset`` is copied into every ``DataLoader``
worker, so the workers repeat each other's views: use the default ``generator=None`` there. They apply their
parameters with `vitlab.augment.functional.move_cells` (bit-identical to the reference `remap_cells`, faster:
P-Infill gathers only its centre block, P-Shuffle moves whole cell rows).

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(8, 3, 32, 32)
    >>> y = PatchShuffle(8)(x, generator=g)
    >>> y.shape, torch.equal(y.flatten().sort().values, x.flatten().sort().values)
    (torch.Size([8, 3, 32, 32]), True)
"""

from __future__ import annotations

import numbers

import torch

from vitlab.augment.base import Params, PatchTransform, check_positive_int
from vitlab.augment.generators import infill_layout, infill_sources, rotation_turns, shuffle_sources
from vitlab.errors import ConfigError

__all__ = ["PatchInfill", "PatchRotate", "PatchShuffle", "check_infill_options"]


class PatchShuffle(PatchTransform):
    """P-Shuffle: put the cells of each image back in a uniformly random order (never the original order).

    Args:
        patch_size: cell side in pixels; must divide H and W and give at least 2 cells.
        p: probability that a sample is shuffled.
        same_on_batch: use one permutation for the whole batch.
        model_patch_size: if given, require ``patch_size`` to be a multiple of it.

    Example:
        >>> import torch
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> y = PatchShuffle(2)(x, generator=torch.Generator().manual_seed(0))
        >>> sorted(y.flatten().tolist()) == list(range(16)), torch.equal(x, y)
        (True, False)
    """

    def _problem(self, rows: int, cols: int) -> str | None:
        return "P-Shuffle needs at least 2 cells" if rows * cols < 2 else None

    def _draw(self, batch: int, rows: int, cols: int, generator: torch.Generator | None) -> Params:
        source = shuffle_sources(batch, rows * cols, generator)
        return {"source": source, "rotation": torch.zeros_like(source)}


class PatchRotate(PatchTransform):
    """P-Rotate: turn every cell in place by 0, 90, 180 or 270 degrees (uniform, exact ``rot90``).

    Draws with every cell at 0 degrees are rejected, so a transformed sample always has at least one turned cell.
    A 1x1 grid (``patch_size`` = image size) is refused, as for P-Shuffle: it would turn the whole image, which is no
    patch-based negative.

    Args:
        patch_size: cell side in pixels; must divide H and W and give at least 2 cells.
        p: probability that a sample is rotated.
        same_on_batch: use one set of turns for the whole batch.
        model_patch_size: if given, require ``patch_size`` to be a multiple of it.

    Example:
        >>> import torch
        >>> x = torch.arange(8.0).view(1, 2, 4)
        >>> PatchRotate(2)(x, params={"source": torch.tensor([[0, 1]]), "rotation": torch.tensor([[1, 0]])})
        tensor([[[1., 5., 2., 3.],
                 [0., 4., 6., 7.]]])
    """

    def _problem(self, rows: int, cols: int) -> str | None:
        return ("P-Rotate needs at least 2 cells (one cell turns the whole image, no patch-based negative)"
                if rows * cols < 2 else None)

    def _draw(self, batch: int, rows: int, cols: int, generator: torch.Generator | None) -> Params:
        rotation = rotation_turns(batch, rows * cols, generator)
        return {"source": torch.arange(rows * cols, device=rotation.device).repeat(batch, 1), "rotation": rotation}


def check_infill_options(
    replace_rate: object, centre_shape: object, source: object
) -> tuple[float | None, tuple[int, int] | None]:
    """Validate the P-Infill options; returns ``(replace_rate as float or None, centre_shape as an int pair or None)``.

    Example:
        >>> check_infill_options(0.25, None, "random")
        (0.25, None)
    """
    if replace_rate is None and centre_shape is None:
        raise ConfigError("give replace_rate (e.g. 0.25 or 0.375) or centre_shape=(rows, cols)")
    if replace_rate is not None and (isinstance(replace_rate, bool) or not isinstance(replace_rate, numbers.Real)
                                     or not 0.0 < float(replace_rate) < 1.0):
        raise ConfigError(f"replace_rate must be a number in (0, 1) (the paper uses 0.25 and 0.375), "
                          f"got {replace_rate!r}")
    if centre_shape is not None:
        if not isinstance(centre_shape, (tuple, list)) or len(centre_shape) != 2:
            raise ConfigError(f"centre_shape must be a pair (rows, cols) of ints, e.g. (2, 2), got {centre_shape!r}")
        centre_shape = (check_positive_int("centre_shape[0]", centre_shape[0]),
                        check_positive_int("centre_shape[1]", centre_shape[1]))
    if not isinstance(source, str) or source not in ("random", "distinct"):
        raise ConfigError(f"source must be 'random' or 'distinct', got {source!r}")
    return (None if replace_rate is None else float(replace_rate)), centre_shape


class PatchInfill(PatchTransform):
    """P-Infill: overwrite a centred block of cells with copies of cells from the border ring.

    The replace rate is (replaced centre cells) / (all cells). The block is centred exactly and lies strictly
    inside the outermost ring of cells, so border cells never change and every replaced cell copies a border cell.
    With ``centre_shape=None`` its shape is derived from ``replace_rate`` (see `infill_layout`): on an 8x8 grid
    25 % gives 4x4 and 37.5 % gives 4x6; on a 4x4 grid 25 % gives 2x2. A rate that no centred block meets exactly
    raises an error listing the patch sizes that work.

    Args:
        patch_size: cell side in pixels.
        replace_rate: fraction of cells replaced (0 < rate < 1); with ``centre_shape``, ``None`` or the block's rate.
        centre_shape: explicit ``(rows, cols)`` of the centre block instead of deriving it from the rate.
        source: how border cells are picked: ``"random"`` (independent uniform draw per centre cell) or
            ``"distinct"`` (no border cell used twice in one image).
        p: probability that a sample is in-filled.
        same_on_batch: one draw for the whole batch.
        model_patch_size: if given, require ``patch_size`` to be a multiple of it.

    Example:
        >>> import torch
        >>> x = torch.arange(64.0).view(1, 8, 8)
        >>> y = PatchInfill(2, replace_rate=0.25)(x, generator=torch.Generator().manual_seed(0))
        >>> torch.equal(y[:, :2], x[:, :2]), torch.equal(y[:, 2:6, 2:6], x[:, 2:6, 2:6])
        (True, False)
    """

    def __init__(
        self,
        patch_size: int,
        replace_rate: float | None = 0.25,
        *,
        centre_shape: tuple[int, int] | None = None,
        source: str = "random",
        p: float = 1.0,
        same_on_batch: bool = False,
        model_patch_size: int | None = None,
    ) -> None:
        super().__init__(patch_size, p=p, same_on_batch=same_on_batch, model_patch_size=model_patch_size)
        replace_rate, centre_shape = check_infill_options(replace_rate, centre_shape, source)
        self.replace_rate = replace_rate
        self.centre_shape = centre_shape
        self.source = source

    def _problem(self, rows: int, cols: int) -> str | None:
        block = infill_layout(rows, cols, self.replace_rate, self.centre_shape)
        if isinstance(block, str):
            return block
        ring = 2 * (rows + cols) - 4
        if self.source == "distinct" and block[0] * block[1] > ring:
            return f"source='distinct' needs {block[0] * block[1]} border cells, the grid has {ring}"
        return None

    def _draw(self, batch: int, rows: int, cols: int, generator: torch.Generator | None) -> Params:
        block = infill_layout(rows, cols, self.replace_rate, self.centre_shape)
        source = infill_sources(batch, rows, cols, block, self.source, generator)
        return {"source": source, "rotation": torch.zeros_like(source)}

    def extra_repr(self) -> str:
        shape = f", centre_shape={self.centre_shape}" if self.centre_shape is not None else ""
        return f"{super().extra_repr()}, replace_rate={self.replace_rate}{shape}, source={self.source!r}"
