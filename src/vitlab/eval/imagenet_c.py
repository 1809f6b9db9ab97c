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

from vitlab.errors import ConfigError, DataError, MissingFileError
from vitlab.eval.corruptions import COMMON_CORRUPTIONS, SEVERITIES, _check_corruption_names, _is_int
from vitlab.eval.device import model_device
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
    device: str | torch.device | None = None,
    num_workers: int = 0,
    alexnet_normalise: bool = True,
    progress: bool = True,
    class_names: Sequence[str] | None = None,
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
        device: where the model runs; ``None`` (default): where the model is (it is not moved).
        num_workers: DataLoader workers.
        alexnet_normalise: add mCE and relative mCE (needs all 15 common corruptions).
        progress: show a tqdm bar.
        class_names: the model's class names in index order (e.g. a `vitlab fit` run's ``data.class_names``). When
            every class folder is one of them, images are labelled by name, so a folder holding a subset of the
            classes is scored correctly. Otherwise the sorted class folders must be exactly the model's classes in
            index order (one folder per model output), as in the published set.

    Raises:
        MissingFileError / DataError: ``root`` is missing, a file (e.g. the downloaded ``.tar``: unpack it), lacks a
            ``<corruption>/<severity>`` folder, has images outside class folders, or different class folders in
            different ``<corruption>/<severity>`` folders; checked before any image is evaluated.
        ConfigError: the class folders do not match the model's classes, or ``n`` exceeds a folder's image count.
    """
    from torch.utils.data import DataLoader, Subset
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
    if not _is_int(num_workers) or num_workers < 0:
        raise ConfigError(f"num_workers must be an int >= 0 (DataLoader worker processes; 0 loads in this process), "
                          f"got {num_workers!r}")
    if class_names is not None and (isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names)):
        raise ConfigError(f"class_names must be a list of the model's class names (str) in index order, got "
                          f"{class_names!r}")
    root = _check_root(Path(root).expanduser())
    missing = [f"{c}/{s}" for c in corruptions for s in SEVERITIES if not (root / c / str(s)).is_dir()]
    if missing:
        raise MissingFileError(f"{root} lacks ImageNet-C folders {missing[:5]}{' ...' if len(missing) > 5 else ''}: "
                               "the layout is <root>/<corruption>/<severity 1-5>/<class>/<image>")
    device = model_device(model, device)
    model = model.to(device).eval()
    datasets = {(c, s): _class_folder_dataset(root, c, s, transform) for c in corruptions for s in SEVERITIES}
    first = datasets[corruptions[0], SEVERITIES[0]]
    for (corruption, severity), dataset in datasets.items():
        if dataset.classes != first.classes:
            differ = sorted(set(dataset.classes) ^ set(first.classes))
            raise DataError(f"{root}/{corruption}/{severity} has other class folders than "
                            f"{root}/{corruptions[0]}/{SEVERITIES[0]} (differing: {differ[:5]}): every "
                            "<corruption>/<severity> folder must hold the same class folders")
        if n is not None and n > len(dataset):
            raise ConfigError(f"n={n} but {corruption}/{severity} has {len(dataset)} images: pass n <= "
                              f"{len(dataset)} or None (--n all on the command line)")
    labels = _label_map(model, first, class_names, device, root)
    accuracy: Accuracies = {}
    counts = set()
    bar = tqdm(total=len(corruptions) * len(SEVERITIES), desc="ImageNet-C", unit="set", disable=not progress)
    for corruption in corruptions:
        accuracy[corruption] = {}
        for severity in SEVERITIES:
            dataset = datasets[corruption, severity]
            dataset.target_transform = labels
            if n is not None:
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


def _check_root(root: Path) -> Path:
    """``root`` must be an existing folder; an archive is named as one (unpack it first)."""
    if root.is_file():
        archive = any(root.name.endswith(suffix) for suffix in (".tar", ".tar.gz", ".tgz", ".zip"))
        hint = f"unpack it first (e.g. `tar -xf {root}`) and pass" if archive else "pass"
        raise DataError(f"{root} is a file, not a folder: {hint} the ImageNet-C folder "
                        "<root>/<corruption>/<severity>/<class>/<image>")
    if not root.is_dir():
        raise MissingFileError(f"{root} does not exist: pass the ImageNet-C folder "
                               "<root>/<corruption>/<severity>/<class>/<image>")
    return root


def _class_folder_dataset(root: Path, corruption: str, severity: int, transform: Callable[[Any], Tensor]) -> Any:
    """The torchvision ``ImageFolder`` of ``root/corruption/severity``, refusing images outside class folders."""
    from torchvision.datasets import ImageFolder

    folder = root / corruption / str(severity)
    if not any(path.is_dir() for path in folder.iterdir()):
        raise DataError(f"{folder} holds no class folders: ImageNet-C is laid out as "
                        "<root>/<corruption>/<severity>/<class>/<image>; put the images into one folder per class")
    return ImageFolder(str(folder), transform=transform)


def _label_map(model: nn.Module, dataset: Any, class_names: Sequence[str] | None, device: torch.device,
               root: Path) -> Callable[[int], int] | None:
    """Folder index -> model class index: by name when every class folder is one of ``class_names``, else the
    identity, which needs exactly one class folder per model output."""
    folders = list(dataset.classes)
    if class_names is not None and set(folders) <= set(class_names):
        index = {name: i for i, name in enumerate(class_names)}
        return [index[name] for name in folders].__getitem__
    image = dataset[0][0]
    if not isinstance(image, Tensor) or image.ndim != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ConfigError(f"transform must turn a PIL image into a (C, H, W) tensor, it gave {shape}: e.g. "
                          "vitlab.data.build_eval_transform(data_config)")
    with torch.no_grad():
        num_outputs = model(image.unsqueeze(0).to(device)).shape[-1]
    if len(folders) != num_outputs:
        by_name = (f", or name the folders by the model's class names ({', '.join(list(class_names)[:3])}, ...)"
                   if class_names else "")
        raise ConfigError(f"{root} has {len(folders)} class folders ({', '.join(folders[:3])}, ...) but the model "
                          f"predicts {num_outputs} classes: the sorted class folders must be the model's classes in "
                          f"index order (one per output; the 1000 ImageNet wnids for an ImageNet model){by_name}")
    return None
