"""Clean accuracy and predictions from a vitlab checkpoint (``model.safetensors`` or run folder).

Usage (with a run of ``vitlab fit --config configs/vit_fashion_mnist.yaml``; tests/eval/test_evaluate.py runs both
functions on a tiny checkpoint)::

    evaluate_checkpoint("runs/vit_fashion_mnist", data="fashion_mnist")  # {"acc": 0.89, "loss": ..., "samples": ...}
    predict_images("runs/vit_fashion_mnist", ["shoe.png"], topk=2)  # [{"image": "shoe.png", "predictions": [...]}]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from vitlab.errors import ConfigError, DataError
from vitlab.metrics import evaluate_classifier
from vitlab.peft.export import load_run_model

__all__ = ["evaluate_checkpoint", "predict_images"]


def evaluate_checkpoint(checkpoint: str | Path, data: str, root: str | None = None, split: str = "test",
                        batch_size: int = 256, device: str | None = None, **data_options: Any) -> dict[str, float]:
    """Evaluate a ``kind="model"`` checkpoint on a dataset split, with the checkpoint's input size and channels.

    Evaluating on a dataset other than the one recorded in the checkpoint (``extra.data.name``, written by
    ``vitlab fit``) is allowed (transfer) but warns with both names.

    Args:
        checkpoint: ``model.safetensors`` or a run folder.
        data: dataset name (see ``vitlab.data``).
        root: data folder; ``None`` uses (and fills) vitlab's cache.
        split: ``test`` (the official test set) or ``val`` (the seeded hold-out of the training set).
        batch_size: evaluation batch size.
        device: ``cpu``/``cuda``; default: CUDA when available.

    Returns:
        ``{"acc", "loss", "samples"}`` (see `vitlab.metrics.evaluate_classifier`).
    """
    from vitlab.data import build_datamodule

    if split not in ("test", "val"):
        raise ConfigError(f"split must be 'test' or 'val', got {split!r}")
    model, meta = load_run_model(checkpoint)
    data_cfg = meta.get("extra", {}).get("data", {})
    trained_on = data_cfg.get("name")
    if trained_on is not None and trained_on != data:
        warnings.warn(f"{checkpoint} was trained on {trained_on!r} but is evaluated on {data!r}: the accuracy is a "
                      f"transfer result (pass --data {trained_on} for the model's own test set)", stacklevel=2)
    kwargs = meta["model_kwargs"]
    if data_cfg.get("mean") and data_cfg.get("std") and "mean" not in data_options:  # the normalisation it trained on
        data_options = {**data_options, "mean": list(data_cfg["mean"]), "std": list(data_cfg["std"])}
    datamodule = build_datamodule(
        data, root=root, img_size=data_cfg.get("img_size", kwargs.get("img_size", 32)),
        in_chans=kwargs.get("in_chans"), batch_size=batch_size, **data_options,
    )
    if datamodule.num_classes != kwargs.get("num_classes", datamodule.num_classes):
        raise ConfigError(f"{data} has {datamodule.num_classes} classes but {checkpoint} predicts "
                          f"{kwargs['num_classes']}: evaluate it on a dataset with {kwargs['num_classes']} classes")
    datamodule.prepare_data()
    datamodule.setup("test" if split == "test" else "validate")
    loader: DataLoader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return evaluate_classifier(model, loader, device=device, progress=f"{data}/{split}")


@torch.no_grad()
def predict_images(checkpoint: str | Path, images: Sequence[str | Path], topk: int = 1) -> list[dict[str, Any]]:
    """Classify image files with a ``kind="model"`` checkpoint, preprocessed as in training.

    A file that is missing or cannot be decoded does not stop the others: its row carries an ``"error"`` (one line
    naming the file) and no predictions. 16-bit greyscale PNGs are scaled to 8 bits (see
    `vitlab.data.transforms.pil_to_uint8`), not clipped.

    Returns:
        One dict per image, in order: ``{"image": path, "predictions": [(class_name, probability), ...]}``
        (``topk`` long), or ``{"image": path, "predictions": [], "error": message}``.

    Raises:
        DataError: no image at all could be read (the message lists each file's problem).
    """
    from PIL import Image

    from vitlab.data import build_eval_transform

    if not images:
        raise ConfigError("give at least one image path")
    model, meta = load_run_model(checkpoint)
    model.eval()
    data_cfg = meta.get("extra", {}).get("data")
    if not data_cfg:
        raise ConfigError(f"{checkpoint} has no data config in its metadata: it was not written by `vitlab fit`; "
                          "predict with a run folder or model.safetensors that `vitlab fit` wrote")
    transform = build_eval_transform(data_cfg)
    names = data_cfg.get("class_names") or [str(i) for i in range(meta["model_kwargs"]["num_classes"])]
    topk = max(1, min(topk, len(names)))
    results = []
    for path in images:
        try:
            if not Path(path).is_file():
                raise DataError("no such image file")
            with Image.open(path) as image:
                batch = transform(image).unsqueeze(0)
        except (OSError, DataError, Image.DecompressionBombError) as err:  # UnidentifiedImageError is an OSError
            message = f"{path}: {err}" if isinstance(err, DataError) else f"{path}: not a readable image ({err})"
            results.append({"image": str(path), "predictions": [], "error": message})
            continue
        probs = model(batch).softmax(dim=1)[0]
        values, indices = probs.topk(topk)
        predictions = [(names[i], float(v)) for v, i in zip(values, indices, strict=True)]
        results.append({"image": str(path), "predictions": predictions})
    if all("error" in row for row in results):
        raise DataError("no image could be read: " + "; ".join(row["error"] for row in results))
    return results
