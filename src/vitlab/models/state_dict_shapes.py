"""One clear error, naming the fix, when a state dict's tensors have other shapes than the model's.

``model.load_state_dict``, ``timm.create_model(..., checkpoint_path=PATH)`` and ``timm.models.load_checkpoint`` load
strictly, without timm's pretrained-path adaptations; a checkpoint saved at another ``img_size``, ``num_classes`` or
``in_chans`` then fails with one "size mismatch" line per tensor. vitlab's models call :func:`check_state_dict_shapes`
from ``_load_from_state_dict`` instead, so the error says which constructor argument differs and how to load anyway
(timm's pretrained path resizes position embeddings, adapts the first conv and drops the classifier).

Example:
    >>> import timm, torch, vitlab
    >>> small = timm.create_model("inception_transformer_tiny", num_classes=10).state_dict()
    >>> try:
    ...     timm.create_model("inception_transformer_tiny", num_classes=5).load_state_dict(small)
    ... except ValueError as err:  # a StateDictShapeError
    ...     print(str(err).splitlines()[1])  # the first line says how to load it
      head.weight: checkpoint (10, 192), model (5, 192): the checkpoint has 10 classes
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from vitlab.errors import WeightsError

__all__ = ["StateDictShapeError", "check_state_dict_shapes"]

_MAX_LINES = 12  # tensors listed in the message
_PRETRAINED_PATH = "timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH), ...)"


class StateDictShapeError(WeightsError, RuntimeError):
    """A state dict's tensor shapes do not fit the model (a ``RuntimeError`` as torch's own size-mismatch error, and
    a ``ValueError`` as every vitlab weights error)."""


def check_state_dict_shapes(
    module: nn.Module, state_dict: Mapping[str, Any], prefix: str, *, classifier: str, first_conv: str,
    grid_hint: Callable[[str, tuple[int, ...], tuple[int, ...]], str | None],
) -> None:
    """Raise :class:`StateDictShapeError` if a tensor of ``state_dict`` under ``prefix`` has another shape than the
    one of ``module`` it would load into; the message names, per tensor, the constructor argument that differs.

    Args:
        module: The model being loaded (``_load_from_state_dict``'s ``self``).
        state_dict: The state dict being loaded (keys with ``prefix``).
        prefix: ``module``'s key prefix in ``state_dict`` (``""`` at the top, ``"model."`` inside timm wrappers).
        classifier: The classifier module's name (``pretrained_cfg["classifier"]``).
        first_conv: The first conv's name (``pretrained_cfg["first_conv"]``).
        grid_hint: ``(name, checkpoint_shape, model_shape) -> str`` explaining a position-embedding mismatch, or
            ``None`` for tensors that are not position embeddings.
    """
    lines, fixes = [], []
    for name, own in module.state_dict().items():
        value = state_dict.get(prefix + name)
        if not isinstance(value, torch.Tensor) or value.shape == own.shape:
            continue
        theirs, mine = tuple(value.shape), tuple(own.shape)
        reason = grid_hint(name, theirs, mine)
        if reason is not None:
            fix = ("build the model with the checkpoint's img_size, or load through timm's pretrained path, which "
                   f"resizes position embeddings: {_PRETRAINED_PATH}")
        elif name.startswith(classifier + ".") and theirs[:1] != mine[:1]:
            reason = f"the checkpoint has {theirs[0]} classes"
            fix = (f"pass num_classes={theirs[0]}, or load through timm's pretrained path, which drops a classifier "
                   f"of another size: {_PRETRAINED_PATH}")
        elif name == first_conv + ".weight" and len(theirs) > 1 and theirs[1] != mine[1]:
            reason = f"the checkpoint takes {theirs[1]}-channel images"
            fix = (f"pass in_chans={theirs[1]}, or load through timm's pretrained path, which adapts the first conv "
                   f"to in_chans (timm's adapt_input_conv): {_PRETRAINED_PATH}")
        else:
            reason = "another variant or width"
            fix = "build the model variant (and depth/width arguments) the checkpoint was saved from"
        lines.append(f"  {name}: checkpoint {theirs}, model {mine}: {reason}")
        if fix not in fixes:
            fixes.append(fix)
    if lines:
        raise StateDictShapeError(
            f"the state dict does not fit this {type(module).__name__} ({len(lines)} tensor(s) of another shape); "
            "to load it: " + "; and ".join(fixes) + "\n" + "\n".join(lines[:_MAX_LINES])
            + (f"\n  ... and {len(lines) - _MAX_LINES} more" if len(lines) > _MAX_LINES else "")
        )
