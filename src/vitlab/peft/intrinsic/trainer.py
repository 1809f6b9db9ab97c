"""A plain-PyTorch trainer for small in-memory classification tasks (the MNIST FC anchor, digits sweeps in tests).

Adam on the ``requires_grad`` parameters, seeded shuffling, torch's ``CosineAnnealingLR`` stepped per batch, test
accuracy (`vitlab.metrics.evaluate_classifier`) after every epoch. A ``SubspaceModel`` is evaluated through
``merge_subspace`` (one projection per evaluation instead of one per batch).

Why a loop of its own beside the Lightning harness (``vitlab.train.ClassificationTask``, which trains subspace models
for ``vitlab fit`` through the ``subspace`` model transform of `vitlab.peft.subspace`):

- layering: ``vitlab.peft`` sits below ``vitlab.train`` and may not import it (tests/test_import_layers.py);
- measured cost: a 64-64-10 MLP on scikit-learn's digits held in memory (1,797 images, batch 128, one thread, 2
  shared CPU cores), 40 epochs = 560 steps: 0.34-1.1 s with this loop, 2.8-4.7 s with ``ClassificationTask`` +
  ``lightning.Trainer`` (no logger, checkpointing, progress bar or model summary); 5 epochs: 0.03-0.05 s against
  0.18-0.50 s. An intrinsic-dimension curve trains dozens of such tiny in-memory models, where Lightning's per-step
  hooks and logging would multiply the sweep's time by 4 to 8.

Example:
    >>> import torch
    >>> from torch import nn
    >>> x = torch.randn(256, 2); y = (x[:, 0] > 0).long()
    >>> result = fit_classifier(nn.Linear(2, 2), (x, y), (x, y), FitSettings(epochs=20, batch_size=32, lr=0.05))
    >>> result.accuracy > 0.95
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.metrics import evaluate_classifier, tensor_batches

from .model import SubspaceModel, merge_subspace

__all__ = ["FitResult", "FitSettings", "evaluate", "fit_classifier"]


@dataclass
class FitSettings:
    """Hyperparameters of ``fit_classifier``.

    Args:
        epochs: passes over the training set.
        batch_size: minibatch size.
        lr: Adam learning rate (subspace training usually needs a larger one than full training).
        seed: seed of the shuffling generator.
        cosine: decay the learning rate to 0 along a cosine over all steps (else constant).
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    cosine: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"epochs and batch_size must be >= 1 and lr > 0, got {self}")


@dataclass
class FitResult:
    """Final test accuracy, the best one over epochs, and the per-epoch history."""

    accuracy: float
    best_accuracy: float
    history: list[float] = field(default_factory=list)


def evaluate(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 2048) -> float:
    """Top-1 accuracy of ``model`` on ``images [N, ...]`` / ``labels [N]`` (`vitlab.metrics.evaluate_classifier`;
    eval mode, restored afterwards)."""
    net = merge_subspace(model) if isinstance(model, SubspaceModel) else model
    return evaluate_classifier(net, tensor_batches(images, labels, batch_size))["acc"]


def fit_classifier(model: nn.Module, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor],
                   settings: FitSettings) -> FitResult:
    """Train ``model`` with cross-entropy and Adam; return test accuracies.

    Args:
        model: any classifier ``[B, ...] -> [B, K]``; only its ``requires_grad`` parameters are trained, on the device
            they are on (each batch is moved there).
        train: ``(images [N, ...], labels [N] int64)`` held in memory.
        test: the same for evaluation.
        settings: ``FitSettings``.
    """
    x, y = train
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"train images and labels must be non-empty and of equal length, got {len(x)} and {len(y)}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter (requires_grad=True)")
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    total = settings.epochs * -(-len(x) // settings.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total) if settings.cosine else None
    gen = torch.Generator().manual_seed(settings.seed)
    history = []
    for _ in range(settings.epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), settings.batch_size):
            idx = order[i: i + settings.batch_size]
            loss = F.cross_entropy(model(x[idx].to(params[0].device)), y[idx].to(params[0].device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
        history.append(evaluate(model, *test))
    return FitResult(history[-1], max(history), history)
