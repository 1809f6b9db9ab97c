"""vitlab.losses: the negative losses of patch-based negative augmentation and the training loss term.

Example:
    >>> import torch
    >>> from vitlab.losses import L2NegativeLoss
    >>> L2NegativeLoss()(torch.zeros(2, 10), torch.zeros(2, 10)).item()
    -0.0
"""

from vitlab.losses.negative import (
    IGNORE_INDEX,
    ContrastiveNegativeLoss,
    L2NegativeLoss,
    UniformNegativeLoss,
    supcon_masks,
)
from vitlab.losses.negative_augmentation import LOSSES, NegativeAugmentationLoss

__all__ = [
    "IGNORE_INDEX",
    "LOSSES",
    "ContrastiveNegativeLoss",
    "L2NegativeLoss",
    "NegativeAugmentationLoss",
    "UniformNegativeLoss",
    "supcon_masks",
]
