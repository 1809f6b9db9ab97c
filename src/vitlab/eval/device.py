"""``resolve_device``: the device an evaluation runs on, refused up front when this machine lacks it.

Example:
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("gpu")
    Traceback (most recent call last):
    ...
    vitlab.errors.ConfigError: device must be cpu, cuda or cuda:N (or another torch device name), got 'gpu'
"""

from __future__ import annotations

import torch

from vitlab.errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` picks CUDA when available, else the CPU.

    Raises:
        ConfigError: not a device name, or a CUDA device this machine does not have (the message names the fix).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device must be cpu, cuda or cuda:N (or another torch device name), got {device!r}") \
            from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {device!r}: this machine has no CUDA GPU that torch can use; pass --device cpu "
                              "(or leave it unset to pick a GPU when there is one)")
        if chosen.index is not None and chosen.index >= count:
            raise ConfigError(f"device {device!r}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    return chosen
