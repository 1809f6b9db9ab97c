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
from vitlab.eval.device import resolve_device

__all__ = ["diagnose_negatives", "format_negative_diagnostics", "model_patch_size"]


@torch.no_grad()
def diagnose_negatives(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    patch_size: int,
    kinds: Sequence[str] = KINDS,
    n: int | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    **view_options: Any,
) -> dict[str, Any]:
    """Accuracy, confidence and agreement of ``model`` on each negative-view kind of the images in ``loader``.

    Args:
        model: classifier ``(B, C, H, W) -> (B, K)``; put in eval mode.
        loader: batches ``(images (B, C, H, W) as the model takes them, labels (B,) or soft (B, K))``; the views
            commute with per-channel normalisation, so normalised images are fine.
        patch_size: cell size of the views.
        kinds: view kinds to measure (default all three).
        n: images to use (``None``: the whole loader).
        device: where the model runs.
        seed: seed of the views' ``torch.Generator`` (the measurement is reproducible).
        **view_options: `NegativeViews` keywords (``model_patch_size``, ``replace_rate``, ``centre_shape``,
            ``source``).

    Returns:
        ``{"n", "num_classes", "chance", "patch_size", "views": {"clean": {"accuracy", "confidence"},
        kind: {"accuracy", "confidence", "agreement"}, ...}}`` (fractions).
    """
    views = {kind: NegativeViews([kind], patch_size, **view_options) for kind in kinds}
    generator = torch.Generator().manual_seed(seed)
    device = resolve_device(device)
    model = model.to(device).eval()
    names = ["clean", *views]
    totals = {name: {"accuracy": 0.0, "confidence": 0.0, "agreement": 0.0} for name in names}
    count, num_classes = 0, None
    for images, targets in loader:
        if n is not None and count >= n:
            break
        take = images.shape[0] if n is None else min(images.shape[0], n - count)
        images, targets = images[:take].to(device), targets[:take].to(device)
        labels = targets.argmax(dim=1) if targets.ndim == 2 else targets
        clean_pred = None
        for name in names:
            batch = images if name == "clean" else views[name](images, generator=generator)
            probs = model(batch).float().softmax(dim=1)
            num_classes = probs.shape[1]
            confidence, pred = probs.max(dim=1)
            clean_pred = pred if name == "clean" else clean_pred
            totals[name]["accuracy"] += float((pred == labels).sum())
            totals[name]["confidence"] += float(confidence.sum())
            totals[name]["agreement"] += float((pred == clean_pred).sum())
        count += take
    if count == 0:
        raise ValueError("the loader yielded no image")
    if n is not None and count < n:
        raise ValueError(f"asked for n={n} images but the loader has only {count}")
    result = {name: {key: value / count for key, value in totals[name].items()} for name in names}
    del result["clean"]["agreement"]
    return {"n": count, "num_classes": num_classes, "chance": 1.0 / num_classes, "patch_size": patch_size,
            "views": result}


def format_negative_diagnostics(result: dict[str, Any]) -> str:
    """Markdown table of `diagnose_negatives`, with chance beside the numbers."""
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
