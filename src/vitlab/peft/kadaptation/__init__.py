"""Kronecker Adaptation (KAdaptation): config, layers and model-level functions, in HF peft's tuner layout."""

from vitlab.peft.kadaptation.config import KAdaptationConfig
from vitlab.peft.kadaptation.layer import KAdaptationDelta, KroneckerRule
from vitlab.peft.kadaptation.model import (
    apply_kadaptation,
    kadaptation_layers,
    merge_kadaptation,
    unmerge_kadaptation,
)

__all__ = [
    "KAdaptationConfig",
    "KAdaptationDelta",
    "KroneckerRule",
    "apply_kadaptation",
    "kadaptation_layers",
    "merge_kadaptation",
    "unmerge_kadaptation",
]
