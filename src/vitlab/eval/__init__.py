"""vitlab.eval: clean accuracy (``evaluate``), robustness to common corruptions and negative-view diagnostics, of a
model or of a checkpoint (``robustness_report`` / ``diagnose_checkpoint`` write a run folder's evaluation files).

The names below are imported on first use, so a command's ``--help`` that shows `vitlab.eval.defaults` loads no torch.

Example:
    >>> from vitlab.eval import COMMON_CORRUPTIONS, corruption_metrics
    >>> len(COMMON_CORRUPTIONS)
    15
"""

from importlib import import_module
from typing import Any

# imported now: the function shares its submodule's name, which the first import of the submodule would bind here
from vitlab.eval.glass_blur import glass_blur as glass_blur

_HOMES = {
    "ALL_CORRUPTIONS": "corruptions", "COMMON_CORRUPTIONS": "corruptions", "EXTRA_CORRUPTIONS": "corruptions",
    "corrupt_images": "corruptions", "generate_corruption_set": "corruptions", "images_from_loader": "corruptions",
    "diagnose_negatives": "diagnostics", "format_negative_diagnostics": "diagnostics",
    "diagnose_checkpoint": "evaluate", "robustness_report": "evaluate",
    "evaluate_imagenet_c": "imagenet_c", "ALEXNET_CLEAN_ERROR": "robustness", "ALEXNET_ERRORS": "robustness",
    "corruption_metrics": "robustness", "evaluate_corruptions": "robustness", "format_robustness_report": "robustness",
}

__all__ = sorted([*_HOMES, "glass_blur"])


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'vitlab.eval' has no attribute {name!r}")
    return getattr(import_module(f"vitlab.eval.{_HOMES[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
