"""vitlab.eval: robustness to common corruptions, negative-view diagnostics and study reports (clean accuracy:
``evaluate``).

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
from vitlab.eval.glass_blur import glass_blur
from vitlab.eval.imagenet_c import evaluate_imagenet_c
from vitlab.eval.robustness import (
    ALEXNET_CLEAN_ERROR,
    ALEXNET_ERRORS,
    corruption_metrics,
    evaluate_corruptions,
    format_robustness_report,
)
from vitlab.eval.study_report import results_markdown, update_readme, write_study_report

__all__ = [
    "ALEXNET_CLEAN_ERROR",
    "ALEXNET_ERRORS",
    "ALL_CORRUPTIONS",
    "COMMON_CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "corrupt_images",
    "corruption_metrics",
    "diagnose_negatives",
    "evaluate_corruptions",
    "evaluate_imagenet_c",
    "format_negative_diagnostics",
    "format_robustness_report",
    "generate_corruption_set",
    "glass_blur",
    "images_from_loader",
    "results_markdown",
    "update_readme",
    "write_study_report",
]
