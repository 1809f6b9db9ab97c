"""Negative-view diagnostics: how much a classifier still "sees" in patch-shuffled, -rotated or -infilled images.

For each view kind (and the clean images) over a test loader: accuracy against the *original* label (the paper's
Figure 2 / Table 11 measurement; chance is 1/K), mean max-softmax confidence (ideal for a model trained with
negatives: 1/K), and agreement = fraction of images whose prediction equals the clean prediction.

Example:
    >>> import timm, torch
    >>> model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=1,
    ...                           num_heads=2, num_classes=10)
    >>> loader = [(torch.rand(8, 3, 32, 32), torch.arange(8))]
    >>> result = diagnose_negatives(model, loader, patch_size=8)
    >>> sorted(result["views"]), result["chance"]
    (['clean', 'infill', 'rotate', 'shuffle'], 0.1)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from vitlab.augment import KINDS, NegativeViews
from vitlab.checks import check_seed
from vitlab.errors import ConfigError, DataError
from vitlab.eval.device import model_device

__all__ = ["diagnose_negatives", "format_negative_diagnostics", "model_patch_size"]


@torch.no_grad()
def diagnose_negatives(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    patch_size: int,
    kinds: Sequence[str] = KINDS,
    n: int | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    **view_options: Any,
) -> dict[str, Any]:
    """Accuracy, confidence and agreement of ``model`` on each negative-view kind of the images in ``loader``.

    Args:
        model: classifier ``(B, C, H, W) -> (B, K)``; put in eval mode. The float images are cast to its dtype
            (a bfloat16 model takes a loader's float32 batches).
        loader: batches ``(images (B, C, H, W) as the model takes them, labels (B,) or soft (B, K))``; the views
            commute with per-channel normalisation, so normalised images are fine.
        patch_size: cell size of the views.
        kinds: view kinds to measure (default all three).
        n: images to use (``None``: the whole loader).
        device: where the model runs; ``None`` (default): where the model is (it is not moved).
        seed: seed of the views' ``torch.Generator`` (the measurement is reproducible).
        **view_options: `NegativeViews` keywords (``model_patch_size``, ``replace_rate``, ``centre_shape``,
            ``source``).

    Returns:
        ``{"n", "num_classes", "chance", "patch_size", "views": {"clean": {"accuracy", "confidence"},
        kind: {"accuracy", "confidence", "agreement"}, ...}}`` (fractions).
    """
    _check_arguments(model, kinds, n, seed)
    views = {kind: NegativeViews([kind], patch_size, **view_options) for kind in kinds}
    generator = torch.Generator().manual_seed(seed)
    device = model_device(model, device)
    model = model.to(device).eval()
    # the images in the model's float dtype: a bfloat16 / float16 model refuses a loader's float32 batches
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    names = ["clean", *views]
    totals = {name: {"accuracy": 0.0, "confidence": 0.0, "agreement": 0.0} for name in names}
    count, num_classes = 0, None
    for batch_index, pair in enumerate(loader):
        if n is not None and count >= n:
            break
        images, targets = _check_batch(pair, batch_index)
        if images.shape[0] == 0:  # an empty batch (e.g. a filtering collate): nothing to count
            continue
        take = images.shape[0] if n is None else min(images.shape[0], n - count)
        images, targets = images[:take].to(device, dtype=dtype), targets[:take].to(device)
        labels = targets.argmax(dim=1) if targets.ndim == 2 else targets
        clean_pred = None
        for name in names:
            batch = images if name == "clean" else views[name](images, generator=generator)
            logits = model(batch)
            if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != batch.shape[0]:
                shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                raise ConfigError(f"the model must return class logits (B, K) = ({batch.shape[0]}, K), got {shape}: "
                                  "pass a classifier (e.g. a timm model with num_classes set)")
            probs = logits.float().softmax(dim=1)
            num_classes = probs.shape[1]
            if name == "clean":
                _check_labels(labels, targets, num_classes, batch_index)
            confidence, pred = probs.max(dim=1)
            clean_pred = pred if name == "clean" else clean_pred
            totals[name]["accuracy"] += float((pred == labels).sum())
            totals[name]["confidence"] += float(confidence.sum())
            totals[name]["agreement"] += float((pred == clean_pred).sum())
        count += take
    if count == 0:
        raise DataError("the loader yielded no image: pass a loader of the (non-empty) test set")
    if n is not None and count < n:
        raise ConfigError(f"asked for n={n} images but the loader has only {count}: pass n <= {count} or None")
    result = {name: {key: value / count for key, value in totals[name].items()} for name in names}
    del result["clean"]["agreement"]
    return {"n": count, "num_classes": num_classes, "chance": 1.0 / num_classes, "patch_size": patch_size,
            "views": result}


def _check_arguments(model: Any, kinds: Any, n: Any, seed: Any) -> None:
    """Refuse arguments `diagnose_negatives` cannot use, before any image is processed."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(kinds, str):
        raise ConfigError(f"kinds must be a list of view kinds, got the string {kinds!r}: pass [{kinds!r}]")
    kinds = list(kinds)
    if not kinds or len(set(kinds)) != len(kinds):
        raise ConfigError(f"kinds must be a non-empty list of distinct view kinds from {list(KINDS)}, got {kinds}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"n must be an int >= 1 (images to use) or None for the whole loader, got {n!r}")
    check_seed("seed", seed)  # as robustness and the corruption generator: an int >= 0


def _check_batch(pair: Any, index: int) -> tuple[Tensor, Tensor]:
    """One loader batch as ``(float images (B, C, H, W), labels (B,) or (B, K))``, or a `DataError` naming the fix."""
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise DataError(f"loader batch {index} is not a pair (images, labels): the loader must yield "
                        "(images (B, C, H, W), labels (B,)) batches, e.g. a torch DataLoader of a labelled dataset")
    images, targets = pair
    if not isinstance(images, Tensor) or not isinstance(targets, Tensor):
        raise DataError(f"loader batch {index} holds {type(images).__name__} and {type(targets).__name__}: images "
                        "and labels must be torch tensors (torch.from_numpy(...))")
    if images.ndim != 4 or not images.is_floating_point():
        raise DataError(f"loader batch {index} images are {images.dtype} {tuple(images.shape)}: pass float images "
                        "(B, C, H, W), channels first and preprocessed as the model takes them (e.g. x.float() / 255, "
                        "normalised; x.permute(0, 3, 1, 2) for channels-last)")
    if targets.ndim not in (1, 2) or targets.shape[0] != images.shape[0]:
        raise DataError(f"loader batch {index} has {images.shape[0]} images but labels of shape "
                        f"{tuple(targets.shape)}: pass labels (B,) or soft labels (B, K), one per image")
    if targets.ndim == 1 and (targets.is_floating_point() or targets.dtype == torch.bool):
        raise DataError(f"loader batch {index} labels are {targets.dtype}: pass int64 class indices")
    return images, targets


def _check_labels(labels: Tensor, targets: Tensor, num_classes: int, index: int) -> None:
    """Refuse labels the model's ``num_classes`` logits cannot match (they would count as wrong predictions)."""
    if targets.ndim == 2 and targets.shape[1] != num_classes:
        raise DataError(f"loader batch {index} has soft labels over {targets.shape[1]} classes but the model predicts "
                        f"{num_classes}: diagnose on data with the classes the model predicts")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise DataError(f"loader batch {index} has labels {low}..{high} outside the model's {num_classes} classes: "
                        "diagnose on data with the classes the model predicts (or a model with num_classes set to "
                        "the data's)")


def format_negative_diagnostics(result: dict[str, Any]) -> str:
    """Markdown table of `diagnose_negatives`, with chance beside the numbers."""
    missing = [k for k in ("n", "patch_size", "num_classes", "chance", "views") if k not in result] \
        if isinstance(result, dict) else ["a dict"]
    if missing:
        raise ConfigError(f"result lacks {missing}: pass the dict that diagnose_negatives returns")
    lines = [
        f"Negative-view diagnostics on {result['n']} test images, patch size {result['patch_size']} px, "
        f"{result['num_classes']} classes (chance {100 * result['chance']:.1f} %).",
        "",
        "| view | accuracy vs original label (%) | mean max-softmax (%) | same prediction as clean (%) |",
        "|---|---|---|---|",
    ]
    for name, values in result["views"].items():
        agreement = f"{100 * values['agreement']:.1f}" if "agreement" in values else "-"
        lines.append(f"| {name} | {100 * values['accuracy']:.1f} | {100 * values['confidence']:.1f} | {agreement} |")
    lines.append(f"| chance | {100 * result['chance']:.1f} | {100 * result['chance']:.1f} | - |")
    return "\n".join(lines) + "\n"


def model_patch_size(model: nn.Module) -> int | None:
    """The square patch size of a ViT-style model (``model.patch_embed.patch_size``), or None if it has none.

    Example:
        >>> import timm, vitlab
        >>> model_patch_size(timm.create_model("vit_vitlab_tiny_patch4_32", patch_size=8))
        8
    """
    size = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if isinstance(size, int):
        return size
    if isinstance(size, (tuple, list)) and len(size) == 2 and size[0] == size[1]:
        return int(size[0])
    return None
