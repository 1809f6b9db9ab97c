"""Loading official Inception Transformer checkpoints into `vitlab.models.InceptionTransformer`.

The model keeps the official parameter names and shapes, so no key is renamed: loading only unwraps containers,
strips DataParallel prefixes and resizes position embeddings whose grid differs (224-px weights into a 384-px model).

Example (with the authors' released ``iformer_small.pth``)::

    import timm, vitlab
    from vitlab.models import load_official_checkpoint

    model = load_official_checkpoint(timm.create_model("inception_transformer_small"), "iformer_small.pth")
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed_nhwc
from torch import nn

from vitlab.checkpoint import read_weights_file

__all__ = ["checkpoint_filter_fn", "load_official_checkpoint"]


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapt an official iFormer state dict to ``model`` (no key renaming is needed: the names are the official ones).

    Unwraps ``{"model": ...}`` / ``{"state_dict": ...}``, strips ``module.`` prefixes (DataParallel/DDP), resizes
    position embeddings whose grid differs from the model's (bilinear, ``align_corners=False``, no antialias: the
    interpolation the official code applies at forward time, e.g. 224-px weights into a 384-px model), and casts
    ``num_batches_tracked`` to the model's dtype.
    """
    for key in ("model", "state_dict"):
        if key in state_dict and isinstance(state_dict[key], Mapping):
            state_dict = state_dict[key]
            break
    own = model.state_dict()
    out = {}
    for name, value in state_dict.items():
        name = name.removeprefix("module.")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"checkpoint entry {name!r} is a {type(value).__name__}, not a tensor")
        target = own.get(name)
        if target is not None and name.startswith("pos_embed") and value.ndim == 4 and value.shape != target.shape:
            if value.shape[-1] == target.shape[-1]:
                value = resample_abs_pos_embed_nhwc(
                    value, list(target.shape[1:3]), interpolation="bilinear", antialias=False
                )
        elif target is not None and name.endswith("num_batches_tracked"):
            value = value.to(target.dtype)
        out[name] = value
    return out


def load_official_checkpoint(
    model: nn.Module, path_or_state_dict: str | Path | Mapping[str, Any]
) -> nn.Module:
    """Load official iFormer weights (``.pth`` read with ``weights_only=True``, or ``.safetensors``) into ``model``.

    Accepts a bare state dict or one wrapped in ``"model"``/``"state_dict"``, with or without ``module.`` prefixes.
    Position embeddings are resized bilinearly when the checkpoint's grid differs (e.g. 224-px weights into an
    ``inception_transformer_small_384``). Raises ``TypeError`` for another kind of model (a ViT, a ``features_only``
    wrapper) and ``ValueError`` naming every missing, unexpected and mis-shaped key;
    a missing file is a ``FileNotFoundError``, an unreadable one or a pickle that needs code a ``ValueError``
    (`vitlab.checkpoint.read_weights_file`).

    Example::

        model = load_official_checkpoint(timm.create_model("inception_transformer_small"), "iformer_small.pth")
    """
    if not isinstance(model, nn.Module) or not isinstance(getattr(model, "pos_embed1", None), nn.Parameter):
        raise TypeError(
            f"load_official_checkpoint loads into an InceptionTransformer, got a {type(model).__name__}: build one "
            "with timm.create_model('inception_transformer_small') (the checkpoint's variant); for a features_only "
            "model pass the file as timm.create_model(name, features_only=True, pretrained=True, "
            "pretrained_cfg_overlay=dict(file=PATH))"
        )
    if isinstance(path_or_state_dict, (str, Path)):
        state_dict = read_weights_file(path_or_state_dict)  # refuses pickled code and files that hold no state dict
    elif isinstance(path_or_state_dict, Mapping):
        state_dict = path_or_state_dict
    else:
        raise TypeError(f"expected a path or a state dict, got {type(path_or_state_dict).__name__}")
    state_dict = checkpoint_filter_fn(state_dict, model)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    misshaped = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items() if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or misshaped:
        raise ValueError(
            "checkpoint does not fit this InceptionTransformer (was it built with the checkpoint's variant, "
            "num_classes and in_chans?):"
            + "".join(f"\n  {label} ({len(keys)}): {', '.join(keys)}" for label, keys in (
                ("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys)
        )
    model.load_state_dict(state_dict, strict=True)
    return model
