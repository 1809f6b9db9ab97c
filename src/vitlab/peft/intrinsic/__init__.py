"""Intrinsic dimension: random-subspace training θ = θ₀ + P·θ_d (dense or Fastfood P, DID or SAID) and d90 sweeps.

Example:
    >>> import timm
    >>> from vitlab.peft.intrinsic import SubspaceConfig, wrap_in_subspace
    >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2,
    ...                         num_heads=2, num_classes=10)
    >>> model = wrap_in_subspace(vit, SubspaceConfig(dim=500))
    >>> sum(p.numel() for p in model.parameters() if p.requires_grad)
    500
"""

from .config import PROJECTION_NORMS, PROJECTIONS, SubspaceConfig
from .hadamard import fwht
from .layout import Segment, build_layout
from .model import SubspaceModel, merge_subspace, subspace_size, wrap_in_subspace
from .projection import DenseProjection, FastfoodProjection, PerTensorFastfoodProjection

__all__ = [
    "PROJECTIONS", "PROJECTION_NORMS", "DenseProjection", "FastfoodProjection", "PerTensorFastfoodProjection",
    "Segment", "SubspaceConfig", "SubspaceModel",
    "build_layout", "fwht", "merge_subspace", "subspace_size", "wrap_in_subspace",
]
