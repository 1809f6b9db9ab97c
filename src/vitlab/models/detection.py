"""Inception Transformer + FPN as a torchvision detection backbone (Faster / Mask R-CNN, RetinaNet, ...).

The paper reports COCO detection and instance segmentation with an iFormer-S/B + FPN backbone (Mask R-CNN 1x:
46.2 / 48.3 box AP), but the official repository released no code for it. :func:`iformer_fpn_backbone` builds the
stage maps with timm's ``features_only`` wrapper and torchvision's ``FeaturePyramidNetwork``, and exposes what
torchvision's detectors expect of a backbone: an ``out_channels`` attribute and an ``OrderedDict`` of maps.

Example:
    >>> import torch
    >>> from torchvision.models.detection import FasterRCNN
    >>> from vitlab.models import iformer_fpn_backbone
    >>> backbone = iformer_fpn_backbone("inception_transformer_tiny", out_channels=64)
    >>> {k: tuple(v.shape) for k, v in backbone(torch.randn(1, 3, 64, 96)).items()}
    {'0': (1, 64, 16, 24), '1': (1, 64, 8, 12), '2': (1, 64, 4, 6), '3': (1, 64, 2, 3), 'pool': (1, 64, 1, 2)}
    >>> detector = FasterRCNN(backbone, num_classes=3, min_size=64, max_size=96)
"""

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import timm
import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool

__all__ = ["IFormerFPN", "iformer_fpn_backbone"]


class IFormerFPN(nn.Module):
    """A ``features_only`` timm model followed by an FPN: ``(B, 3, H, W)`` -> ``OrderedDict`` of ``out_channels`` maps.

    Keys are ``"0"`` ... ``"n-1"`` (one per returned stage, strides ``body.feature_info.reduction()``) and, with the
    default extra block, ``"pool"`` (a stride-2 max-pool of the last map), the names torchvision's RPN anchor
    generator and ``MultiScaleRoIAlign`` use by default.
    """

    def __init__(self, body: nn.Module, out_channels: int, extra_blocks: ExtraFPNBlock | None = None):
        super().__init__()
        if not hasattr(body, "feature_info"):
            raise TypeError(f"body must be a timm features_only model (with feature_info), got {type(body).__name__}")
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            body.feature_info.channels(), out_channels,
            extra_blocks=LastLevelMaxPool() if extra_blocks is None else extra_blocks,
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def iformer_fpn_backbone(
    name: str = "inception_transformer_small", out_indices: Sequence[int] = (0, 1, 2, 3), out_channels: int = 256,
    extra_blocks: ExtraFPNBlock | None = None, **model_kwargs: Any,
) -> IFormerFPN:
    """An Inception Transformer backbone with FPN for ``torchvision.models.detection`` models.

    Args:
        name: A timm name of the family, ``inception_transformer_{tiny,small,base,large}[_384]``.
        out_indices: Stages (0-3, strides 4/8/16/32) fed to the FPN.
        out_channels: Channels of every FPN map (torchvision's detectors read ``backbone.out_channels``).
        extra_blocks: torchvision FPN extra block; default ``LastLevelMaxPool`` (the ``"pool"`` map Faster/Mask
            R-CNN's default anchors expect: 5 maps for 5 anchor sizes).
        **model_kwargs: Passed to ``timm.create_model``, e.g. ``pretrained=True,
            pretrained_cfg_overlay=dict(file="iformer_small.pth")`` for official ImageNet weights, or
            ``drop_path_rate=0.2``.

    Input images go through the detector's own transform, which pads batches to multiples of 32: every such size is
    one the iFormer takes (position embeddings are resized to the map at forward time).

    Example:
        >>> from torchvision.models.detection import MaskRCNN
        >>> model = MaskRCNN(iformer_fpn_backbone("inception_transformer_tiny", out_channels=64), num_classes=3)
    """
    if not name.startswith("inception_transformer_") or not timm.is_model(name):
        raise ValueError(f"{name!r} is not an Inception Transformer: use one of "
                         f"{timm.list_models('inception_transformer_*')}")
    if out_channels < 1:
        raise ValueError(f"out_channels must be positive, got {out_channels}")
    for key in ("features_only", "out_indices", "num_classes"):
        if key in model_kwargs:
            raise ValueError(f"{key} is set by iformer_fpn_backbone; remove it from the model kwargs")
    body = timm.create_model(name, features_only=True, out_indices=tuple(out_indices), **model_kwargs)
    return IFormerFPN(body, out_channels, extra_blocks)
