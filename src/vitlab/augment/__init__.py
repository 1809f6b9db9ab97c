"""vitlab.augment: batched, vectorised patch-based negative views (P-Shuffle, P-Rotate, P-Infill).

Example:
    >>> import torch
    >>> from vitlab.augment import NegativeViews
    >>> views = NegativeViews(["shuffle", "rotate", "infill"], patch_size=8)
    >>> views(torch.rand(4, 3, 32, 32), generator=torch.Generator().manual_seed(0)).shape
    torch.Size([4, 3, 32, 32])
"""

from vitlab.augment.base import PatchTransform
from vitlab.augment.functional import cell_grid, remap_cells, valid_patch_sizes
from vitlab.augment.transforms import PatchInfill, PatchRotate, PatchShuffle
from vitlab.augment.views import KINDS, NegativeViews

__all__ = [
    "KINDS",
    "NegativeViews",
    "PatchInfill",
    "PatchRotate",
    "PatchShuffle",
    "PatchTransform",
    "cell_grid",
    "remap_cells",
    "valid_patch_sizes",
]
