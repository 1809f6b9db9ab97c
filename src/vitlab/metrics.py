"""Classifier evaluation and logged-metrics reading shared by every layer (eval, train, peft).

This module sits at the bottom of vitlab's import order (beside ``vitlab.checkpoint``; it imports nothing from
vitlab), so the evaluation loops of ``vitlab.eval`` and the in-memory trainer of ``vitlab.peft.intrinsic`` use one
function, and ``vitlab.eval`` reads training curves without importing ``vitlab.train`` (and Lightning).

- `evaluate_classifier`: top-1 accuracy (torchmetrics ``MulticlassAccuracy``, micro average) and mean cross-entropy
  (torchmetrics ``MeanMetric``) of a model over ``(images, labels)`` batches;
- `tensor_batches`: in-memory ``(images [N, ...], labels [N])`` as such batches;
- `read_metrics`: the rows of a Lightning ``CSVLogger`` ``metrics.csv``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.eye(2)), model.bias.zero_()
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]); y = torch.tensor([0, 1, 1])
    >>> result = evaluate_classifier(model, tensor_batches(x, y, batch_size=2))
    >>> round(result["acc"], 4), result["samples"]
    (0.6667, 3)
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

__all__ = ["evaluate_classifier", "read_metrics", "tensor_batches"]


def tensor_batches(images: Tensor, labels: Tensor, batch_size: int = 2048) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive ``(images [b, ...], labels [b])`` slices of in-memory tensors, ``b <= batch_size``.

    Example:
        >>> [x.shape[0] for x, _ in tensor_batches(torch.zeros(5, 3), torch.zeros(5), batch_size=2)]
        [2, 2, 1]
    """
    if len(images) != len(labels):
        raise ValueError(f"images and labels differ in length ({len(images)} vs {len(labels)}): pass matching tensors")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size], labels[start : start + batch_size]


_IMAGE_KEYS, _LABEL_KEYS = ("pixel_values", "image", "images"), ("labels", "label")


def _images_and_labels(batch: object, index: int) -> tuple[Tensor, Tensor]:
    """``(images, labels)`` of one batch: a tuple / list ``(images, labels, ...)`` or a dict with an image key
    (``_IMAGE_KEYS``) and a label key (``_LABEL_KEYS``); anything else is a ``ValueError`` naming the fix."""
    if isinstance(batch, Mapping):
        image_key = next((k for k in _IMAGE_KEYS if k in batch), None)
        label_key = next((k for k in _LABEL_KEYS if k in batch), None)
        if image_key is None or label_key is None:
            raise ValueError(f"batch {index} is a dict with keys {sorted(map(str, batch))}: it needs an image entry "
                             f"(one of {list(_IMAGE_KEYS)}) and a label entry (one of {list(_LABEL_KEYS)}); rename "
                             "the keys in the collate function or pass (images, labels) tuples")
        images, labels = batch[image_key], batch[label_key]
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        images, labels = batch[0], batch[1]
    else:
        raise ValueError(f"batch {index} is a {type(batch).__name__}, not (images, labels): the batches must be "
                         "(images (B, C, H, W), labels (B,)) tuples or dicts such as {'pixel_values', 'labels'}")
    if not isinstance(images, Tensor) or not isinstance(labels, Tensor):
        raise ValueError(f"batch {index} holds {type(images).__name__} images and {type(labels).__name__} labels: "
                         "both must be torch tensors (a DataLoader's default collate makes them)")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"batch {index} has {labels.dtype} labels: labels are class indices, an integer tensor "
                         "(e.g. labels.long())")
    return images, labels.long()


def _logits(output: object) -> Tensor:
    """The logits tensor of a model output: the tensor itself, or its ``logits`` attribute / key (transformers)."""
    if isinstance(output, Tensor):
        return output
    logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    if not isinstance(logits, Tensor):
        raise ValueError(f"the model returned a {type(output).__name__} without logits: it must return class logits "
                         "(B, K) or an output whose .logits holds them")
    return logits


def _checked_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device, refusing a name torch does not know and CUDA on a machine without it."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device such as 'cpu', 'cuda' or 'cuda:0', got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this machine has no CUDA GPU that torch can use; pass device='cpu' (or "
                         "None to keep the model's device)")
    return resolved


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    device: str | torch.device | None = None,
    progress: str | None = None,
) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` over ``batches`` of ``(images (B, C, H, W), labels (B,))``.

    The model runs in eval mode on ``device`` and is put back into its previous train/eval mode afterwards.

    Args:
        model: classifier ``(B, ...) -> (B, K)`` logits, or an output with a ``.logits`` / ``["logits"]`` entry (a
            transformers ``ViTForImageClassification``). Float images are cast to the model's dtype (a bfloat16 or
            float16 model takes the float32 batches of a loader).
        batches: any iterable of ``(images, int64 labels, ...)`` (items after the first two are ignored) or of dicts
            with ``pixel_values`` / ``image`` / ``images`` and ``labels`` / ``label`` (transformers / datasets
            batches), e.g. a DataLoader or `tensor_batches`.
        device: where the model and the batches run; ``None`` keeps the model's device.
        progress: a tqdm bar description; ``None`` shows no bar.

    Returns:
        ``{"acc": fraction correct, "loss": mean cross-entropy, "samples": N}``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"evaluate_classifier needs the classifier as an nn.Module, got {type(model).__name__}")
    if progress is not None and not isinstance(progress, str):
        raise TypeError(f"progress is the progress bar's description (a str) or None for no bar, got {progress!r}")
    if device is not None:
        device = _checked_device(device)
        model = model.to(device)
    else:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if progress is not None:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=progress, leave=False)
    was_training = model.training
    model.eval()
    accuracy: MulticlassAccuracy | None = None
    loss = MeanMetric().to(device)
    samples = 0
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    try:
        for index, batch in enumerate(batches):
            images, labels = _images_and_labels(batch, index)
            if labels.numel() == 0 and images.shape[:1] == (0,):  # an empty batch (e.g. a filtered collate): nothing
                continue
            # float images in the model's dtype (a bfloat16 / float16 model refuses float32 inputs)
            images = images.to(device, dtype=dtype if dtype is not None and images.is_floating_point() else None)
            labels = labels.to(device)
            logits = _logits(model(images))
            if logits.ndim != 2 or labels.shape != logits.shape[:1]:
                raise ValueError(f"expected logits (B, K) and labels (B,), got {tuple(logits.shape)} and "
                                 f"{tuple(labels.shape)}: the model must return class logits and labels class indices")
            if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < logits.shape[1]:
                raise ValueError(f"labels {int(labels.min())}..{int(labels.max())} lie outside the model's "
                                 f"{logits.shape[1]} classes: evaluate on data with the classes the model predicts")
            if accuracy is None:
                accuracy = MulticlassAccuracy(logits.shape[1], average="micro").to(device)
            accuracy.update(logits, labels)
            loss.update(F.cross_entropy(logits.float(), labels, reduction="none"))
            samples += labels.numel()
    finally:
        model.train(was_training)
    if accuracy is None or samples == 0:
        raise ValueError("the evaluation batches held no sample: check the dataset split and the loader")
    return {"acc": float(accuracy.compute()), "loss": float(loss.compute()), "samples": samples}


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a Lightning ``CSVLogger`` ``metrics.csv``, empty cells dropped and values as floats.

    Raises ``ValueError`` naming the file for a cell that is not a number.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "metrics.csv"
        >>> _ = path.write_text("epoch,step,val/acc\\n0,9,0.5\\n0,9,\\n")
        >>> read_metrics(path)
        [{'epoch': 0.0, 'step': 9.0, 'val/acc': 0.5}, {'epoch': 0.0, 'step': 9.0}]
    """
    with open(path, newline="") as handle:
        try:
            return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]
        except ValueError as err:
            raise ValueError(f"{path}: not a Lightning metrics.csv of numbers ({err}); rerun the training") from None
