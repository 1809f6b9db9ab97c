"""vitlab.eval: clean accuracy (``evaluate``), robustness to common corruptions and negative-view diagnostics, of a
model or of a checkpoint (``robustness_report`` / ``diagnose_checkpoint`` write a run folder's evaluation files).

Example:
    >>> from vitlab.eval import COMMON_CORRUPTIONS, corruption_metrics
    >>> len(COMMON_CORRUPTIONS)
    15
"""

from vitlab.eval.corruptions import (
    ALL_CORRUPTIONS,
    COMMON_CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    corrupt_images,
    generate_corruption_set,
    images_from_loader,
)
from vitlab.eval.diagnostics import diagnose_negatives, format_negative_diagnostics
from vitlab.eval.evaluate import diagnose_checkpoint, robustness_report
from vitlab.eval.glass_blur import glass_blur
from vitlab.eval.imagenet_c import evaluate_imagenet_c
from vitlab.eval.robustness import (
    ALEXNET_CLEAN_ERROR,
    ALEXNET_ERRORS,
    corruption_metrics,
    evaluate_corruptions,
    format_robustness_report,
)

__all__ = [
    "ALEXNET_CLEAN_ERROR",
    "ALEXNET_ERRORS",
    "ALL_CORRUPTIONS",
    "COMMON_CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "corrupt_images",
    "corruption_metrics",
    "diagnose_checkpoint",
    "diagnose_negatives",
    "evaluate_corruptions",
    "evaluate_imagenet_c",
    "format_negative_diagnostics",
    "format_robustness_report",
    "generate_corruption_set",
    "glass_blur",
    "images_from_loader",
    "robustness_report",
]
