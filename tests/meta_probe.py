"""A model on the meta device that stops a loop at its first forward, reporting where its input was sent.

Checks on a CPU-only machine that code moves batches to the model's device (and leaves the model there) without a
GPU: the probe's parameter is on ``meta``, so a batch moved to the model arrives on ``meta``.
"""

from __future__ import annotations

import torch
from torch import nn


class Ran(Exception):
    """Raised by `MetaProbe.forward` with the device type of its input (``str(err)``)."""


class MetaProbe(nn.Module):
    """One meta-device parameter; ``forward`` raises `Ran` with its input's device type."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(2, device="meta"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise Ran(x.device.type)
