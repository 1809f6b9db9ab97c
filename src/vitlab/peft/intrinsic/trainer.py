"""A plain-PyTorch trainer for small in-memory classification tasks (the MNIST FC anchor, digits sweeps in tests).

Adam on the ``requires_grad`` parameters, seeded shuffling, test accuracy after every epoch. A ``SubspaceModel`` is
evaluated through ``merge_subspace`` (one projection per evaluation instead of one per batch).

Example:
    >>> import torch
    >>> from torch import nn
    >>> x = torch.randn(256, 2); y = (x[:, 0] > 0).long()
    >>> result = fit_classifier(nn.Linear(2, 2), (x, y), (x, y), FitSettings(epochs=20, batch_size=32, lr=0.05))
    >>> result.accuracy > 0.95
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 2048) -> float:
    """Top-1 accuracy of ``model`` on ``images [N, ...]`` / ``labels [N]`` (eval mode, restored afterwards)."""
    net = merge_subspace(model) if isinstance(model, SubspaceModel) else model
    was_training = net.training
    net.eval()
    correct = sum((net(images[i: i + batch_size]).argmax(-1) == labels[i: i + batch_size]).sum().item()
                  for i in range(0, len(images), batch_size))
    net.train(was_training)
    return correct / len(images)


def fit_classifier(model: nn.Module, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor],
                   settings: FitSettings) -> FitResult:
    """Train ``model`` with cross-entropy and Adam; return test accuracies.

    Args:
        model: any classifier ``[B, ...] -> [B, K]``; only its ``requires_grad`` parameters are trained.
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
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)) if settings.cosine else 1.0
    )
    gen = torch.Generator().manual_seed(settings.seed)
    history = []
    for _ in range(settings.epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), settings.batch_size):
            idx = order[i: i + settings.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        history.append(evaluate(model, *test))
    return FitResult(history[-1], max(history), history)
