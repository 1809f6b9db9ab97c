"""``resolve_device``: the device an evaluation runs on, refused up front when this machine lacks it;
``model_device``: the same, defaulting to the device the model is on (so that an evaluation does not move it).

Example:
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("gpu")
    Traceback (most recent call last):
    ...
    vitlab.errors.ConfigError: device must be cpu, cuda or cuda:N (or another torch device name), got 'gpu'
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from vitlab.errors import ConfigError

__all__ = ["model_device", "resolve_device"]


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
    elif chosen.type == "meta":
        raise ConfigError(f"device {device!r} holds no values, so nothing can be evaluated on it: pass --device cpu or "
                          "cuda")
    elif chosen.type != "cpu":
        try:  # e.g. mps on a machine or torch build without it: torch's error is a deep RuntimeError
            torch.empty(0, device=chosen)
        except (RuntimeError, AssertionError, ImportError) as err:
            why = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise ConfigError(f"device {device!r}: this machine or torch build cannot use it ({why}); pass --device "
                              "cpu (or leave it unset to pick a CUDA GPU when there is one)") from None
    return chosen


def model_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """``resolve_device(device)``, or with ``None`` the device of ``model``'s first parameter or buffer (the CPU when
    it has none): an evaluation called without a device runs where the model is and leaves it there.

    Example:
        >>> model_device(torch.nn.Linear(2, 2, device="meta"), None)
        device(type='meta')
    """
    if device is not None:
        return resolve_device(device)
    return next((t.device for t in itertools.chain(model.parameters(), model.buffers())), torch.device("cpu"))
