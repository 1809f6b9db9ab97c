"""Kronecker Adaptation (KAdaptation) as an HF peft method: config, layer and tuner in peft's tuner layout."""

from vitlab.peft.kadaptation.config import KADAPTATION, KAdaptationConfig
from vitlab.peft.kadaptation.layer import KAdaptationLayer
from vitlab.peft.kadaptation.model import KAdaptationModel, apply_kadaptation, kadaptation_layers, merge_kadaptation

__all__ = [
    "KADAPTATION",
    "KAdaptationConfig",
    "KAdaptationLayer",
    "KAdaptationModel",
    "apply_kadaptation",
    "kadaptation_layers",
    "merge_kadaptation",
]
