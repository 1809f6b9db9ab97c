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

from collections.abc import Sequence
from typing import Any

import timm
import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool

from vitlab.checkpoint import record_state_dict_loads
from vitlab.models.inception_transformer import InceptionTransformer

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
        self.train(body.training)

    def train(self, mode: bool = True) -> "IFormerFPN":
        """``nn.Module.train``, except that batch norms whose affine weights are frozen (``trainable_layers``) stay
        in eval mode, as torchvision's frozen backbones (``FrozenBatchNorm2d``): they normalise with their running
        statistics and never update them."""
        super().train(mode)
        for module in self.body.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None and (
                    not module.weight.requires_grad):
                module.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, 3, H, W)`` -> the FPN's ordered maps (written so that TorchScript compiles it, as torchvision's
        detectors are scriptable)."""
        features = self.body(x)
        if not torch.jit.isinstance(features, list[torch.Tensor]):  # also TorchScript's refinement of the type
            raise TypeError("the body must return a list of feature maps, as timm's features_only models do (e.g. "
                            "feature_cls='getter'); a dict-returning body is not supported")
        maps: dict[str, torch.Tensor] = {}
        for i, feature in enumerate(features):
            maps[str(i)] = feature
        return self.fpn(maps)


def iformer_fpn_backbone(
    name: str = "inception_transformer_small", out_indices: Sequence[int] = (0, 1, 2, 3), out_channels: int = 256,
    extra_blocks: ExtraFPNBlock | None = None, trainable_layers: int | None = None,
    returned_layers: Sequence[int] | None = None, **model_kwargs: Any,
) -> IFormerFPN:
    """An Inception Transformer backbone with FPN for ``torchvision.models.detection`` models.

    Args:
        name: A timm name of the family, ``inception_transformer_{tiny,small,base,large}[_384]``.
        out_indices: Stages (0-3, strides 4/8/16/32, in increasing order) fed to the FPN.
        out_channels: Channels of every FPN map (torchvision's detectors read ``backbone.out_channels``).
        extra_blocks: torchvision FPN extra block; default ``LastLevelMaxPool`` (the ``"pool"`` map Faster/Mask
            R-CNN's default anchors expect: 5 maps for 5 anchor sizes).
        trainable_layers: As torchvision's ``resnet_fpn_backbone``: how many of the iFormer's 4 stages, counted from
            the last, keep trainable weights (0 freezes the whole iFormer, only the FPN trains); ``None`` trains all.
            The batch norms of frozen stages stay in eval mode (running statistics fixed, as torchvision's).
        returned_layers: torchvision's spelling of ``out_indices``, counting stages from 1 as
            ``resnet_fpn_backbone`` does: ``returned_layers=[2, 3, 4]`` is ``out_indices=(1, 2, 3)``. Give one of the
            two.
        **model_kwargs: Passed to ``timm.create_model``, e.g. ``pretrained=True,
            pretrained_cfg_overlay=dict(file="iformer_small.pth")`` for official ImageNet weights, or
            ``drop_path_rate=0.2``. Pretrained weights must cover every tensor of the backbone (timm itself loads
            ``features_only`` weights non-strictly); a file that misses some is refused, naming them.

    Input images go through the detector's own transform, which pads batches to multiples of 32: every such size is
    one the iFormer takes (position embeddings are resized to the map at forward time).

    Raises:
        ValueError: not an iFormer name, bad ``out_indices`` / ``out_channels`` / ``trainable_layers``, keywords this
            function sets, pretrained weights that miss tensors or that timm did not load.

    Example:
        >>> from torchvision.models.detection import MaskRCNN
        >>> model = MaskRCNN(iformer_fpn_backbone("inception_transformer_tiny", out_channels=64), num_classes=3)
    """
    family = timm.list_models("inception_transformer_*")
    if not isinstance(name, str) or name.split(".")[0] not in family:
        raise ValueError(f"{name!r} is not an Inception Transformer: use one of {family}")
    if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
        raise ValueError(f"out_channels must be a positive int, got {out_channels!r}")
    if returned_layers is not None:
        if not isinstance(out_indices, Sequence) or tuple(out_indices) != (0, 1, 2, 3):
            raise ValueError("give out_indices (stages 0-3) or returned_layers (torchvision's stages 1-4), not both")
        valid = isinstance(returned_layers, Sequence) and not isinstance(returned_layers, str) and all(
            isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= _STAGES for i in returned_layers)
        if not valid or len(returned_layers) == 0:
            raise ValueError(f"returned_layers must be a non-empty sequence of stage numbers in 1..{_STAGES} "
                             f"(torchvision's counting; out_indices counts from 0), got {returned_layers!r}")
        out_indices = [i - 1 for i in returned_layers]
    out_indices = _check_out_indices(out_indices)
    if trainable_layers is not None and (isinstance(trainable_layers, bool) or not isinstance(trainable_layers, int)
                                         or not 0 <= trainable_layers <= _STAGES):
        raise ValueError(f"trainable_layers must be None (all) or an int in 0..{_STAGES}, got {trainable_layers!r}")
    for key in ("features_only", "out_indices", "num_classes"):
        if key in model_kwargs:
            raise ValueError(f"{key} is set by iformer_fpn_backbone; remove it from the model kwargs")
    try:
        with record_state_dict_loads() as loads:
            body = timm.create_model(name, features_only=True, out_indices=out_indices, **model_kwargs)
    except RuntimeError as err:  # load_state_dict's size mismatches
        if not model_kwargs.get("pretrained"):
            raise
        reason = " ".join(str(err).split())[:400]
        raise ValueError(f"the pretrained weights do not fit {name}: {reason}; pass a checkpoint of this variant "
                         "(pretrained_cfg_overlay=dict(file=PATH))") \
            from None
    if model_kwargs.get("pretrained"):
        _check_pretrained(name, loads)
    if trainable_layers is not None:
        for stage in range(1, _STAGES - trainable_layers + 1):
            for prefix in (f"patch_embed{'' if stage == 1 else stage}.", f"pos_embed{stage}", f"blocks{stage}."):
                for param_name, param in body.model.named_parameters():
                    if param_name.startswith(prefix):
                        param.requires_grad_(False)
    return IFormerFPN(body, out_channels, extra_blocks)


_STAGES = 4


def _check_out_indices(out_indices: Any) -> tuple[int, ...]:
    if isinstance(out_indices, int | str) or not isinstance(out_indices, Sequence) or not out_indices or any(
            isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < _STAGES for i in out_indices):
        raise ValueError(f"out_indices must be a non-empty sequence of stage indices in 0..{_STAGES - 1}, "
                         f"got {out_indices!r}")
    if list(out_indices) != sorted(set(out_indices)):
        raise ValueError(f"out_indices must be distinct and increasing (the FPN's maps go from fine to coarse), got "
                         f"{list(out_indices)}: pass {sorted(set(out_indices))}")
    return tuple(out_indices)


def _check_pretrained(name: str, loads: list[tuple[nn.Module, Any]]) -> None:
    """timm loads ``features_only`` weights non-strictly (it drops the classifier) and only logs what it missed."""
    results = [result for module, result in loads if isinstance(module, InceptionTransformer)]
    if not results:
        raise ValueError(f"pretrained=True loaded no weights into {name}: vitlab ships none; pass "
                         "pretrained_cfg_overlay=dict(file='iformer_small.pth') (an official or vitlab checkpoint)")
    missing = [k for k in results[-1].missing_keys if not k.startswith("head.")]
    unexpected = [k for k in results[-1].unexpected_keys if not k.startswith("head.")]
    if missing or unexpected:
        listed = "; ".join(f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                           for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys)
        raise ValueError(f"the pretrained weights do not fit {name} ({listed}): pass a checkpoint of this variant")
