"""Robustness on a published ImageNet-C folder (JPEGs), with AlexNet-normalised mCE (see `vitlab.eval.robustness`).

Usage (with the published ImageNet-C folder, which vitlab cannot download)::

    report = evaluate_imagenet_c(model, "/data/ImageNet-C", transform, clean_accuracy=0.81)
    report["metrics"]["mce"]  # e.g. 48.2
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vitlab.errors import ConfigError, MissingFileError
from vitlab.eval.corruptions import COMMON_CORRUPTIONS, SEVERITIES, _check_corruption_names, _is_int
from vitlab.eval.device import resolve_device
from vitlab.eval.robustness import Accuracies, _is_fraction, corruption_metrics
from vitlab.metrics import evaluate_classifier

__all__ = ["evaluate_imagenet_c"]


def evaluate_imagenet_c(
    model: nn.Module,
    root: str | Path,
    transform: Callable[[Any], Tensor],
    clean_accuracy: float | None = None,
    n: int | None = None,
    corruptions: Sequence[str] = COMMON_CORRUPTIONS,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    alexnet_normalise: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy on a published ImageNet-C folder ``<root>/<corruption>/<severity>/<wnid>/<image>.JPEG``.

    Args:
        model: ImageNet classifier (1000 classes, wnid folders in sorted order = the standard class indices).
        root: ImageNet-C folder.
        transform: PIL image -> model input ``(C, H, W)`` (resize, crop, normalise).
        clean_accuracy: clean ImageNet accuracy of the model, for the relative mCE.
        n: images per (corruption, severity), evenly spaced over the folder; ``None`` uses all (50,000).
        corruptions: corruptions to evaluate (the 15 common ones by default).
        batch_size: evaluation batch size.
        device: where the model runs.
        num_workers: DataLoader workers.
        alexnet_normalise: add mCE and relative mCE (needs all 15 common corruptions).
        progress: show a tqdm bar.
    """
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder
    from tqdm.auto import tqdm

    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(transform):
        raise ConfigError(f"transform must be a callable PIL image -> (C, H, W) tensor, got {type(transform).__name__}"
                          ": e.g. vitlab.data.build_eval_transform(data_config)")
    corruptions = _check_corruption_names(corruptions)
    if alexnet_normalise and sorted(corruptions) != sorted(COMMON_CORRUPTIONS):
        raise ConfigError(f"alexnet_normalise needs all 15 common corruptions, got {corruptions}: pass "
                          "corruptions=COMMON_CORRUPTIONS or alexnet_normalise=False")
    if not any(c in COMMON_CORRUPTIONS for c in corruptions):
        raise ConfigError(f"corruptions {corruptions} holds none of the 15 common corruptions the summary is over: "
                          f"add at least one of {', '.join(COMMON_CORRUPTIONS)}")
    if clean_accuracy is not None and not _is_fraction(clean_accuracy):
        raise ConfigError(f"clean_accuracy must be a fraction in [0, 1] (e.g. 0.81, not 81), got {clean_accuracy!r}")
    if n is not None and (not _is_int(n) or n < 1):
        raise ConfigError(f"n must be an int >= 1 (images per corruption and severity) or None for all, got {n!r}")
    if not _is_int(batch_size) or batch_size < 1:
        raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}")
    root = Path(root)
    missing = [f"{c}/{s}" for c in corruptions for s in SEVERITIES if not (root / c / str(s)).is_dir()]
    if missing:
        raise MissingFileError(f"{root} lacks ImageNet-C folders {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    device = resolve_device(device)
    model = model.to(device).eval()
    accuracy: Accuracies = {}
    counts = set()
    bar = tqdm(total=len(corruptions) * len(SEVERITIES), desc="ImageNet-C", unit="set", disable=not progress)
    for corruption in corruptions:
        accuracy[corruption] = {}
        for severity in SEVERITIES:
            dataset = ImageFolder(str(root / corruption / str(severity)), transform=transform)
            if n is not None:
                if not 1 <= n <= len(dataset):
                    raise ConfigError(f"n={n} but {corruption}/{severity} has {len(dataset)} images: pass n <= "
                                      f"{len(dataset)} or None")
                dataset = Subset(dataset, np.linspace(0, len(dataset) - 1, n).round().astype(int).tolist())
            counts.add(len(dataset))
            loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
            accuracy[corruption][severity] = evaluate_classifier(model, loader, device)["acc"]
            bar.update(1)
    bar.close()
    return {
        "source": "ImageNet-C", "folder": str(root), "meta": None, "n": min(counts), "n_available": None,
        "accuracy": accuracy, "clean_accuracy": clean_accuracy,
        "metrics": corruption_metrics(accuracy, clean_accuracy, alexnet_normalise),
    }
