"""Small Vision Transformers for 32-px inputs (MNIST-family padded to 32, CIFAR), registered with timm.

They are timm ``VisionTransformer`` configurations, so every timm feature (``forward_features``, ``forward_head``,
``reset_classifier``, ``features_only`` ...) works unchanged.

Example:
    >>> import timm, torch, vitlab
    >>> model = timm.create_model("vitlab_vit_tiny_32", num_classes=10, in_chans=1)
    >>> model(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

__all__ = ["vitlab_vit_tiny_32"]


def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"vitlab_vit_tiny_32.untrained": _cfg()})


def _create_vit(variant: str, pretrained: bool = False, **kwargs) -> VisionTransformer:
    return build_model_with_cfg(
        VisionTransformer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs
    )


@register_model
def vitlab_vit_tiny_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT for 32x32 inputs: 4-px patches (64 tokens), width 128, depth 6, 4 heads, global average pooling.

    About 1.2M parameters with 10 classes. vitlab trains it from scratch (no weights are downloaded); pass
    ``pretrained_cfg_overlay=dict(file=PATH)`` to load a local checkpoint.
    """
    model_args = dict(
        img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4, mlp_ratio=3.0,
        global_pool="avg", class_token=False, fc_norm=False, num_classes=10,
    )
    return _create_vit("vitlab_vit_tiny_32", pretrained=pretrained, **dict(model_args, **kwargs))
