"""Clean accuracy and predictions from a vitlab checkpoint (``model.safetensors`` or run folder).

Example:
    >>> result = evaluate_checkpoint("runs/vit_fashion_mnist", data="fashion_mnist")  # doctest: +SKIP
    >>> result["acc"]  # doctest: +SKIP
    0.89
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vitlab.checkpoint import load_model

__all__ = ["accuracy", "evaluate_checkpoint", "predict_images"]


@torch.no_grad()
def accuracy(model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], device: str | torch.device = "cpu",
             desc: str = "eval") -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` over ``loader`` (batches of ``(B,C,H,W)``, ``(B,)``)."""
    model = model.to(device).eval()
    correct, total, loss = 0, 0, 0.0
    for images, labels in tqdm(loader, desc=desc, leave=False):
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(dim=1) == labels).sum().item()
        total += labels.numel()
    if total == 0:
        raise ValueError("the evaluation loader yielded no sample")
    return {"acc": correct / total, "loss": loss / total, "samples": total}


def evaluate_checkpoint(checkpoint: str | Path, data: str, root: str | None = None, split: str = "test",
                        batch_size: int = 256, device: str | None = None, **data_options: Any) -> dict[str, float]:
    """Evaluate a ``kind="model"`` checkpoint on a dataset split, with the checkpoint's input size and channels.

    Args:
        checkpoint: ``model.safetensors`` or a run folder.
        data: dataset name (see ``vitlab.data``).
        root: data folder; ``None`` uses (and fills) vitlab's cache.
        split: ``test`` (the official test set) or ``val`` (the seeded hold-out of the training set).
        batch_size: evaluation batch size.
        device: ``cpu``/``cuda``; default: CUDA when available.
    """
    from vitlab.data import build_datamodule

    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    model, meta = load_model(checkpoint)
    data_cfg = meta.get("extra", {}).get("data", {})
    kwargs = meta["model_kwargs"]
    datamodule = build_datamodule(
        data, root=root, img_size=data_cfg.get("img_size", kwargs.get("img_size", 32)),
        in_chans=kwargs.get("in_chans"), batch_size=batch_size, **data_options,
    )
    if datamodule.num_classes != kwargs.get("num_classes", datamodule.num_classes):
        raise ValueError(
            f"{data} has {datamodule.num_classes} classes but the checkpoint predicts {kwargs['num_classes']}"
        )
    datamodule.prepare_data()
    datamodule.setup("test" if split == "test" else "validate")
    loader: DataLoader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return accuracy(model, loader, device=device, desc=f"{data}/{split}")


@torch.no_grad()
def predict_images(checkpoint: str | Path, images: Sequence[str | Path], topk: int = 1) -> list[dict[str, Any]]:
    """Classify image files with a ``kind="model"`` checkpoint, preprocessed as in training.

    Returns:
        One dict per image: ``{"image": path, "predictions": [(class_name, probability), ...]}`` (``topk`` long).
    """
    from PIL import Image

    from vitlab.data import build_eval_transform

    if not images:
        raise ValueError("give at least one image path")
    model, meta = load_model(checkpoint)
    data_cfg = meta.get("extra", {}).get("data")
    if not data_cfg:
        raise ValueError(f"{checkpoint} has no data config in its metadata: it was not written by `vitlab fit`")
    transform = build_eval_transform(data_cfg)
    names = data_cfg.get("class_names") or [str(i) for i in range(meta["model_kwargs"]["num_classes"])]
    topk = max(1, min(topk, len(names)))
    results = []
    for path in images:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no image at {path}")
        with Image.open(path) as image:
            batch = transform(image).unsqueeze(0)
        probs = model(batch).softmax(dim=1)[0]
        values, indices = probs.topk(topk)
        predictions = [(names[i], float(v)) for v, i in zip(values, indices, strict=True)]
        results.append({"image": str(path), "predictions": predictions})
    return results
