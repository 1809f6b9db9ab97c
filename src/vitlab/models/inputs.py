"""Checks of what users pass to vitlab's models: images must be a floating-point tensor of the model's dtype,
dropout / drop-path rates must be probabilities, and a local pretrained file must exist.

A ``uint8`` image batch, a NumPy array or a ``float16`` batch fed to a ``float32`` model otherwise fails deep inside
the first convolution ("Input type (unsigned char) and bias type (float) should be the same"); these checks say what
to convert instead.

Example:
    >>> check_image_tensor(torch.zeros(1, 3, 8, 8), torch.float32)
    >>> check_image_tensor(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.float32)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: expected floating-point images, got torch.uint8: ...
"""

from __future__ import annotations

import contextlib
import itertools
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError

from vitlab.checkpoint import CheckpointError, MissingWeightsError, read_weights_file
from vitlab.checks import check_probability
from vitlab.errors import MissingFileError, VitlabError

__all__ = [
    "autocast_enabled", "check_image_tensor", "check_increasing_indices", "check_pretrained_file", "check_rates",
    "pretrained_file_errors",
]


def autocast_enabled(device: torch.device | str) -> bool:
    """Whether ``torch.autocast`` is on for tensors of ``device``; ``False`` for device types autocast does not
    support (``torch.is_autocast_enabled("meta")`` raises instead, so a forward pass on the meta device failed).

    Example:
        >>> autocast_enabled("meta"), autocast_enabled("cpu")
        (False, False)
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     autocast_enabled(torch.device("cpu"))
        True
    """
    kind = torch.device(device).type
    return torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind)


@torch.jit.ignore  # eager only: TorchScript checks the Tensor annotation of the callers itself
def check_image_tensor(x: Any, dtype: torch.dtype | None) -> None:
    """Raise ``TypeError`` unless ``x`` is a floating-point ``torch.Tensor`` of ``dtype`` (any float dtype under
    ``torch.autocast``, which casts it; ``dtype=None`` skips that part), naming the conversion."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected images as a torch.Tensor (B, C, H, W), got a {type(x).__name__}: convert them "
                        "with torch.as_tensor(...), or load them through timm.data.create_transform")
    if not x.is_floating_point():
        raise TypeError(
            f"expected floating-point images, got {x.dtype}: convert them, e.g. x.float() / 255 then normalise with "
            "the model's mean/std (timm.data.create_transform(**timm.data.resolve_input_data_config(model)) does "
            "both, for the model's own size and channels)"
        )
    if dtype is not None and x.dtype != dtype and not autocast_enabled(x.device):
        raise TypeError(f"the images are {x.dtype} but the model's weights are {dtype}: pass x.to({dtype}), or "
                        f"convert the model with model.to({x.dtype}), or run it under torch.autocast")


def check_rates(rates: Mapping[str, Any]) -> None:
    """Raise `vitlab.errors.ConfigError` (a ``ValueError``) naming the first of ``rates`` (constructor keyword ->
    value) that is not a probability (a string, a bool, a negative rate or one above 1, which torch takes silently for
    drop path): `vitlab.checks.check_probability` on each.

    Example:
        >>> check_rates({"drop_rate": 0.1, "drop_path_rate": 0})
        >>> check_rates({"drop_path_rate": 1.5})
        Traceback (most recent call last):
        ...
        vitlab.errors.ConfigError: drop_path_rate must be a probability in [0, 1] (a Python or NumPy float), got 1.5
    """
    for key, value in rates.items():
        check_probability(key, value)


def check_increasing_indices(given: Any, absolute: list[int], unit: str) -> None:
    """Raise ``ValueError`` unless ``absolute`` (``given`` ``features_only`` ``out_indices`` with negatives resolved)
    is strictly increasing: the features come out in network order, one per index, while timm's ``feature_info``
    follows ``out_indices`` as given, so a repeated or reordered index would pair maps with the wrong channel counts.

    Example:
        >>> check_increasing_indices((0, -1), [0, 3], "stage")
        >>> check_increasing_indices((2, 1), [2, 1], "stage")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: out_indices must name each stage once, in increasing order ..., got (2, 1): pass (1, 2)
    """
    if any(b <= a for a, b in itertools.pairwise(absolute)):
        raise ValueError(f"out_indices must name each {unit} once, in increasing order (features come out in network "
                         f"order), got {given!r}: pass {tuple(sorted(set(absolute)))}")


def check_pretrained_file(variant: str, pretrained: bool, kwargs: Mapping[str, Any]) -> None:
    """Raise :class:`~vitlab.errors.MissingFileError` (a ``FileNotFoundError``) naming the path when
    ``pretrained=True`` points timm at a local file (``pretrained_cfg_overlay=dict(file=PATH)`` or a
    ``pretrained_cfg`` dict with ``file``) that does not exist; timm itself raises a bare ``FileNotFoundError()``.

    Example:
        >>> overlay = {"pretrained_cfg_overlay": {"file": "/no.pth"}}
        >>> check_pretrained_file("inception_transformer_small", True, overlay)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        vitlab.errors.MissingFileError: pretrained weights for inception_transformer_small: /no.pth does not exist; ...
    """
    if not pretrained:
        return
    for key in ("pretrained_cfg_overlay", "pretrained_cfg"):
        cfg = kwargs.get(key)
        path = cfg.get("file") if isinstance(cfg, Mapping) else None
        if not isinstance(path, str | Path):
            continue
        if cfg.get("source") == "local-dir":  # timm's create_model("local-dir:FOLDER"): a save_for_hf folder
            if not Path(path).is_dir():
                raise MissingFileError(f"pretrained weights for {variant}: the folder {path} does not exist; pass "
                                       "a folder written by timm.models.save_for_hf (config.json and the weights)")
        elif not Path(path).is_file():
            what = "is a folder, not a file" if Path(path).is_dir() else "does not exist"
            raise MissingFileError(
                f"pretrained weights for {variant}: {path} {what}; pass the path of a local weights file "
                f"({key}=dict(file=PATH), .safetensors, .pth or .bin)"
            )


@contextlib.contextmanager
def pretrained_file_errors(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Around timm's model building: yield ``kwargs`` with a ``~`` in the local weights file's path expanded (timm
    would not find ``~/iformer_small.pth``) after :func:`check_pretrained_file`; when building fails while that file
    is unreadable (truncated, empty, not a checkpoint, a pickle that needs code), raise
    :class:`~vitlab.checkpoint.CheckpointError` naming the file instead of torch's or safetensors' error (torch's
    advises ``weights_only=False``, which would run the file's code).

    Example:
        >>> kwargs = {"pretrained_cfg_overlay": {"file": "~/no.pth"}}
        >>> with pretrained_file_errors("inception_transformer_tiny", False, kwargs) as expanded:
        ...     expanded["pretrained_cfg_overlay"]["file"] == str(Path("~/no.pth").expanduser())
        True
    """
    kwargs = dict(kwargs)
    path = None
    for key in ("pretrained_cfg_overlay", "pretrained_cfg"):
        cfg = kwargs.get(key)
        if isinstance(cfg, Mapping) and isinstance(cfg.get("file"), str | Path):
            kwargs[key] = {**cfg, "file": str(Path(cfg["file"]).expanduser())}
            if cfg.get("source") != "local-dir":
                path = kwargs[key]["file"]
    check_pretrained_file(variant, pretrained, kwargs)
    try:
        yield kwargs
    except OSError as err:  # a download (urllib's URLError, the Hub's errors) without network or cache
        if not pretrained or path is not None or isinstance(err, VitlabError):
            raise
        cfg = timm.models.get_pretrained_cfg(variant, allow_unregistered=True)
        url = f" ({cfg.url})" if cfg is not None and cfg.url else ""
        reason = " ".join(str(err).split())[:200]
        raise MissingWeightsError(
            f"could not fetch the pretrained weights of {variant}: {reason}; without network, download them "
            f"elsewhere{url} and pass pretrained_cfg_overlay=dict(file=PATH), or build with pretrained=False"
        ) from err
    except (RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError):
        if not pretrained or path is None:
            raise
        try:
            read_weights_file(path)  # the file itself is at fault: its one-line reason, naming it
        except CheckpointError as unreadable:
            raise CheckpointError(f"pretrained weights for {variant}: {unreadable}") from None
        raise
