"""Small Vision Transformers for 32-px inputs (MNIST-family padded to 32, CIFAR), registered with timm.

They are timm ``VisionTransformer`` configurations, so every timm feature (``forward_features``, ``forward_head``,
``reset_classifier``, ``features_only``, ``forward_intermediates`` ...) works unchanged. Names follow timm's
``vit_<size>_patch<P>_<res>`` pattern (which also puts them in timm's test group for token-output models):

- ``vit_vitlab_tiny_patch8_32``: 8-px patches, 16 tokens (the model every vitlab config and README number uses);
- ``vit_vitlab_tiny_patch4_32``: 4-px patches, 64 tokens.

``vitlab_vit_tiny_32`` is a deprecated alias of ``vit_vitlab_tiny_patch4_32`` (its old default, so old checkpoints
rebuild exactly); timm warns when it is used.

Example:
    >>> import timm, torch, vitlab
    >>> model = timm.create_model("vit_vitlab_tiny_patch8_32", num_classes=10, in_chans=1)
    >>> model(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 10])
"""

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, register_model_deprecations
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

__all__ = ["vit_vitlab_tiny_patch4_32", "vit_vitlab_tiny_patch8_32"]


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


default_cfgs = generate_default_cfgs({
    "vit_vitlab_tiny_patch8_32.untrained": _cfg(),
    "vit_vitlab_tiny_patch4_32.untrained": _cfg(),
})


def _create_vit(variant: str, pretrained: bool = False, **kwargs) -> VisionTransformer:
    return build_model_with_cfg(
        VisionTransformer, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter"),
        **kwargs,
    )


_TINY = dict(
    img_size=32, embed_dim=128, depth=6, num_heads=4, mlp_ratio=3.0, global_pool="avg", class_token=False,
    fc_norm=False, num_classes=10,
)


@register_model
def vit_vitlab_tiny_patch8_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT for 32x32 inputs: 8-px patches (16 tokens), width 128, depth 6, 4 heads, global average pooling.

    About 1.0M parameters with 10 classes. vitlab trains it from scratch (no weights are downloaded); pass
    ``pretrained_cfg_overlay=dict(file=PATH)`` to load a local checkpoint.
    """
    model_args = dict(_TINY, patch_size=8)
    return _create_vit("vit_vitlab_tiny_patch8_32", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vit_vitlab_tiny_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT for 32x32 inputs: 4-px patches (64 tokens), width 128, depth 6, 4 heads, global average pooling.

    About 1.0M parameters with 10 classes (what the deprecated name ``vitlab_vit_tiny_32`` builds).
    """
    model_args = dict(_TINY, patch_size=4)
    return _create_vit("vit_vitlab_tiny_patch4_32", pretrained=pretrained, **dict(model_args, **kwargs))


register_model_deprecations(__name__, {"vitlab_vit_tiny_32": "vit_vitlab_tiny_patch4_32"})
