"""Small Vision Transformers for 32-px inputs (MNIST-family padded to 32, CIFAR), registered with timm.

They are timm ``VisionTransformer`` configurations, so every timm feature (``forward_features``, ``forward_head``,
``reset_classifier``, ``features_only``, ``forward_intermediates`` ...) works unchanged. Names follow timm's
``vit_<size>_patch<P>_<res>`` pattern (which also puts them in timm's test group for token-output models):

- ``vit_vitlab_tiny_patch8_32``: 8-px patches, 16 tokens (the model every vitlab config and README number uses);
- ``vit_vitlab_tiny_patch4_32``: 4-px patches, 64 tokens.

``vitlab_vit_tiny_32`` is a deprecated alias of ``vit_vitlab_tiny_patch4_32`` (its old default, so old checkpoints
rebuild exactly); timm warns when it is used.

The class, :class:`VitlabVisionTransformer`, is timm's ``VisionTransformer`` with two checks that name the fix: bad
images given to ``forward`` (not a float tensor of the model's dtype, not ``(B, in_chans, H, W)``, another size), and
state dicts of another ``img_size`` / ``num_classes`` / ``in_chans`` given to ``load_state_dict``. As for timm's
ViTs, ``features_only=True`` returns the last 3 blocks unless ``out_indices`` says otherwise.

Example:
    >>> import timm, torch, vitlab
    >>> model = timm.create_model("vit_vitlab_tiny_patch8_32", num_classes=10, in_chans=1)
    >>> model(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 10])
"""

import functools
import math
import operator
import types
from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import PatchEmbed, get_act_layer, get_norm_layer, register_notrace_function, to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, register_model_deprecations
from timm.models.vision_transformer import ATTN_LAYERS, VisionTransformer, checkpoint_filter_fn

from vitlab.checks import check_bool, check_float, check_int, check_optional_int
from vitlab.errors import ConfigError
from vitlab.models.inputs import check_image_tensor, check_increasing_indices, check_rates, pretrained_file_errors
from vitlab.models.state_dict_shapes import check_state_dict_shapes

__all__ = ["VitlabVisionTransformer", "check_vit_images", "vit_vitlab_tiny_patch4_32", "vit_vitlab_tiny_patch8_32"]


@register_notrace_function  # shape checks are data-dependent control flow: a leaf for torch.fx
def check_vit_images(
    x: torch.Tensor, in_chans: int, dtype: torch.dtype, img_size: tuple[int, int] | None, patch_size: tuple[int, int],
    strict_img_size: bool, dynamic_img_pad: bool,
) -> torch.Tensor:
    """Return ``x`` if it is a ``(B, in_chans, H, W)`` float batch of ``dtype`` of a size the patch embedding takes
    (``img_size`` exactly when ``strict_img_size``, else multiples of ``patch_size`` unless ``dynamic_img_pad``);
    else raise, naming the fix. The checks run in eager mode and in torch.fx graphs (a leaf); in TorchScript (a
    scripted fx graph too) timm's patch embedding checks the size itself.

    Example:
        >>> check_vit_images(torch.zeros(2, 3, 32, 32), 3, torch.float32, (32, 32), (8, 8), True, False).shape
        torch.Size([2, 3, 32, 32])
    """
    if not torch.jit.is_scripting():
        _check_vit_images(x, in_chans, dtype, img_size, patch_size, strict_img_size, dynamic_img_pad)
    return x


torch.fx.wrap("check_vit_images")  # a leaf for every torch.fx tracer too (torchvision's create_feature_extractor)


@torch.jit.ignore
def _check_vit_images(
    x: Any, in_chans: int, dtype: torch.dtype, img_size: tuple[int, int] | None, patch_size: tuple[int, int],
    strict_img_size: bool, dynamic_img_pad: bool,
) -> None:
    check_image_tensor(x, dtype)
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(f"expected input (B, {in_chans}, H, W), got shape {list(x.shape)}; pass images as a 4-D "
                         "batch with the model's in_chans channels")
    size = (x.shape[2], x.shape[3])
    if img_size is not None and strict_img_size and size != tuple(img_size):
        raise ValueError(f"this ViT takes {img_size[0]}x{img_size[1]} images, got {size[0]}x{size[1]}: resize them "
                         "(timm.data.create_transform(**timm.data.resolve_input_data_config(model)) makes this "
                         "model's size), or build the model with img_size="
                         f"{size[0] if size[0] == size[1] else size} or "
                         "dynamic_img_size=True (position embeddings are then resized to each input)")
    if not dynamic_img_pad and (size[0] % patch_size[0] or size[1] % patch_size[1]):
        raise ValueError(f"the image size {size[0]}x{size[1]} is not a multiple of the patch size "
                         f"{patch_size[0]}x{patch_size[1]}: resize or crop the images, or build the model with "
                         "dynamic_img_pad=True")


def check_patch_embed_input(module: PatchEmbed, args: tuple[torch.Tensor]) -> None:
    """Forward pre-hook of the patch embedding: :func:`check_vit_images` on its input (eager mode)."""
    if not torch.jit.is_scripting():
        check_vit_images(args[0], module.in_chans, module.proj.weight.dtype, module.img_size,
                         module.patch_size, module.strict_img_size, module.dynamic_img_pad)


class VitlabVisionTransformer(VisionTransformer):
    """timm's ``VisionTransformer`` whose ``forward`` and ``forward_features`` check their images and whose
    ``load_state_dict`` explains tensors of another shape (both naming the fix); outputs and parameters are timm's.

    Input ``(B, in_chans, H, W)`` floats, output ``(B, num_classes)``.

    Example:
        >>> import timm
        >>> timm.create_model("vit_vitlab_tiny_patch8_32")(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """

    def __init__(self, *args: Any, output_stride: int | None = None, **kwargs: Any):
        check_rates({k: v for k, v in kwargs.items() if k.endswith("drop_rate") or k == "drop_path_rate"})
        _check_keywords(kwargs)
        _check_sizes(kwargs)
        super().__init__(*args, **kwargs)
        _check_output_stride(output_stride, self.patch_embed.patch_size)
        _check_whole_patches(self.patch_embed.img_size, self.patch_embed.patch_size,
                             self.patch_embed.dynamic_img_pad and self.dynamic_img_size)
        # forward_features (timm's, called directly too) checks its images: TorchScript compiles no super() call
        # in an override, so the check runs as the patch embedding's pre-hook
        self.patch_embed.in_chans = self.in_chans  # the hook's: peft may wrap proj in a module without in_channels
        self.patch_embed.register_forward_pre_hook(check_patch_embed_input)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """timm's ``reset_classifier`` after refusing a ``num_classes`` that is not an int >= 0 (timm silently
        builds no head for a negative one)."""
        _check_sizes({"num_classes": num_classes})
        if global_pool is not None:
            _check_global_pool(global_pool, self.has_class_token)
            if global_pool in ("map", "prr") and global_pool != self.global_pool:
                raise ValueError(f"reset_classifier cannot switch global_pool from {self.global_pool!r} to "
                                 f"{global_pool!r} (attention pooling is built with the model): build a new model "
                                 f"with global_pool={global_pool!r} and load this one's state_dict with strict=False")
        super().reset_classifier(num_classes, global_pool)

    def set_input_size(self, img_size: Any = None, patch_size: Any = None) -> None:
        """timm's ``set_input_size`` (position embeddings resampled to the new grid) after refusing sizes that are
        not ints or ``(height, width)`` ints >= 1 (timm fails on them inside its arithmetic), and an image size that
        is not a multiple of the patch size (unless padded, see :func:`_check_whole_patches`)."""
        sizes = _plain_sizes({k: v for k, v in (("img_size", img_size), ("patch_size", patch_size)) if v is not None})
        embed = self.patch_embed
        _check_whole_patches(sizes.get("img_size", embed.img_size), sizes.get("patch_size", embed.patch_size),
                             embed.dynamic_img_pad and self.dynamic_img_size)
        super().set_input_size(**sizes)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        if not torch.jit.is_scripting():
            embed = self.patch_embed
            x = check_vit_images(x, self.in_chans, embed.proj.weight.dtype, embed.img_size,
                                 embed.patch_size, embed.strict_img_size, embed.dynamic_img_pad)
        return self.forward_head(self.forward_features(x, attn_mask=attn_mask, is_causal=is_causal))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, *args: Any,
                              **kwargs: Any) -> Any:
        """timm's ``VisionTransformer.forward_intermediates`` (same arguments and results; ``features_only`` models
        call it), after the image checks of :meth:`forward` and a ``ValueError`` naming the valid range for
        ``indices`` out of range and an ``output_fmt`` other than ``'NCHW'`` / ``'NLC'`` (timm asserts, which
        ``python -O`` skips)."""
        _check_block_indices(indices, len(self.blocks), allow_none=True)
        output_fmt = kwargs.get("output_fmt", "NCHW")
        if not isinstance(output_fmt, str) or output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' (token maps as images) or 'NLC' (token sequences), got "
                             f"{output_fmt!r}")
        embed = self.patch_embed
        x = check_vit_images(x, self.in_chans, embed.proj.weight.dtype, embed.img_size, embed.patch_size,
                             embed.strict_img_size, embed.dynamic_img_pad)
        return super().forward_intermediates(x, indices, *args, **kwargs)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, *args: Any, **kwargs: Any) -> list[int]:
        """timm's ``prune_intermediate_layers`` (blocks after the last of ``indices`` deleted), after a ``ValueError``
        naming the valid range for ``indices`` (timm asserts, which ``python -O`` skips)."""
        _check_block_indices(indices, len(self.blocks), allow_none=False)
        return super().prune_intermediate_layers(indices, *args, **kwargs)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        check_state_dict_shapes(
            self, state_dict, prefix, classifier="head", first_conv="patch_embed.proj", grid_hint=self._grid_hint
        )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _grid_hint(self, name: str, theirs: tuple[int, ...], mine: tuple[int, ...]) -> str | None:
        """Why ``pos_embed`` has another shape: the ``img_size`` its token grid was made for."""
        if name != "pos_embed" or len(theirs) != 3 or theirs[-1] != mine[-1]:
            return None
        tokens = theirs[1] - (0 if self.no_embed_class else self.num_prefix_tokens)
        side = math.isqrt(max(tokens, 0))
        made_for = f"img_size={side * self.patch_embed.patch_size[0]}" if side * side == tokens else "another size"
        return f"position embeddings for {made_for}, the model's is img_size={self.patch_embed.img_size}"


def _check_block_indices(indices: Any, depth: int, allow_none: bool) -> None:
    """Refuse ``indices`` that are not an int ``n`` in ``1..depth`` (the last ``n`` blocks) or a non-empty sequence
    of block indices in ``[-depth, depth)`` (``None``, all blocks, when ``allow_none``), naming the range."""
    if depth == 0:
        raise ValueError("this ViT has no blocks (depth=0), so it has no intermediate layers: build it with "
                         "depth >= 1, or take the patch embeddings from forward_features")
    if indices is None and allow_none:
        return
    if not _valid_block_indices(indices, depth):
        everything = "None (all blocks), " if allow_none else ""
        raise ValueError(f"indices must be {everything}an int n in 1..{depth} (the last n blocks) or a non-empty "
                         f"list of block indices in [-{depth}, {depth}) (this ViT has {depth} blocks), got "
                         f"{indices!r}")


def _valid_block_indices(indices: Any, depth: int) -> bool:
    """Whether ``indices`` is an int ``n`` in ``1..depth`` (the last ``n`` blocks) or a non-empty sequence of block
    indices in ``[-depth, depth)``, as timm's ``feature_take_indices`` reads them."""
    items = [indices] if isinstance(indices, int) else indices
    if isinstance(indices, bool | str) or not isinstance(items, Sequence) or not items or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in items):
        return False
    if isinstance(indices, int):
        return 1 <= indices <= depth
    return all(-depth <= i < depth for i in items)


def _check_output_stride(output_stride: Any, patch_size: tuple[int, int]) -> None:
    """Refuse an ``output_stride`` other than the patch size (or ``None``): every token map of a ViT has the patch
    size as its stride, and a ViT cannot dilate to another one (timm's ViTs refuse the keyword)."""
    check_optional_int("output_stride", output_stride, minimum=1)
    if output_stride is not None and (output_stride, output_stride) != tuple(patch_size):
        stride = patch_size[0] if patch_size[0] == patch_size[1] else tuple(patch_size)
        raise ConfigError(f"output_stride={output_stride} is not possible: every block of this ViT outputs one token "
                          f"per {patch_size[0]}x{patch_size[1]} patch (stride {stride}) and a ViT cannot dilate; "
                          "leave output_stride out (or pass the patch size), or choose the feature stride with "
                          "patch_size")


_BOOL_KEYWORDS = ("class_token", "no_embed_class", "dynamic_img_size", "dynamic_img_pad", "qkv_bias", "qk_norm",
                  "proj_bias", "pre_norm", "final_norm", "fix_init", "pool_include_prefix", "scale_attn_norm",
                  "scale_mlp_norm")
_WEIGHT_INITS = ("", "skip", "reset", "jax", "jax_nlhb", "moco")
_POS_EMBEDS = ("learn", "none", "")


def _check_keywords(kwargs: dict[str, Any]) -> None:
    """Refuse, naming the keyword and its valid values, what timm's ``VisionTransformer`` fails on deep inside
    (KeyError, bare AssertionError, a negative tensor size) or takes silently (``class_token='no'`` is truthy):
    flags that are not bools, unknown layer names, ``weight_init`` / ``pos_embed`` modes and ``reg_tokens`` < 0.
    timm's layer names, classes and callables stay accepted."""
    for key in _BOOL_KEYWORDS:
        if key in kwargs:
            check_bool(key, kwargs[key])
    if kwargs.get("fc_norm") is not None:
        check_bool("fc_norm", kwargs["fc_norm"])
    if "reg_tokens" in kwargs:
        check_int("reg_tokens", kwargs["reg_tokens"], minimum=0, fix="the number of register tokens, e.g. 0 or 4")
    if kwargs.get("init_values") is not None:
        check_float("init_values", kwargs["init_values"], fix="the LayerScale init, e.g. 1e-5, or None for none")
    for key, modes in (("weight_init", _WEIGHT_INITS), ("pos_embed", _POS_EMBEDS)):
        if key in kwargs and (not isinstance(kwargs[key], str) or kwargs[key] not in modes):
            raise ConfigError(f"{key} must be one of {', '.join(map(repr, modes))}, got {kwargs[key]!r}")
    act = kwargs.get("act_layer")
    if act is not None and not callable(act) and not _known_layer(get_act_layer, act):
        raise ConfigError(f"act_layer must be a timm activation name (e.g. 'gelu', 'gelu_tanh', 'quick_gelu', "
                          f"'relu', 'silu'), an nn.Module class or None (GELU), got {act!r}")
    for key in ("norm_layer", "embed_norm_layer"):
        norm = kwargs.get(key)
        if norm is not None and not isinstance(norm, type | types.FunctionType | functools.partial) and not (
                _known_layer(get_norm_layer, norm)):
            raise ConfigError(f"{key} must be a timm norm name (e.g. 'layernorm', 'rmsnorm', 'layernormfp32'), an "
                              f"nn.Module class, a function or functools.partial building one, or None, got {norm!r}")
    attn = kwargs.get("attn_layer")
    if attn is not None and not callable(attn) and not (isinstance(attn, str) and attn in ATTN_LAYERS):
        raise ConfigError(f"attn_layer must be one of {', '.join(map(repr, ATTN_LAYERS))} or an attention module "
                          f"class, got {attn!r}")
    for key in ("embed_layer", "block_fn", "mlp_layer"):
        if key in kwargs and not callable(kwargs[key]):
            raise ConfigError(f"{key} must be a module class (or a callable building one), got {kwargs[key]!r}")


def _known_layer(lookup: Any, name: Any) -> bool:
    """Whether timm's ``lookup`` (``get_act_layer`` / ``get_norm_layer``) knows the layer name ``name``."""
    if not isinstance(name, str):
        return False
    try:
        lookup(name)
    except KeyError:
        return False
    return True


def _check_whole_patches(img_size: Any, patch_size: Any, padded: bool) -> None:
    """Refuse a native ``img_size`` that is not a multiple of ``patch_size`` unless ``padded`` (``dynamic_img_pad``
    with ``dynamic_img_size``): the model's forward refuses images that would leave a partial patch, and timm's
    padding alone makes more tokens than the position embeddings (a size-mismatch RuntimeError), so such a model
    could take no image of its own size."""
    if img_size is None or padded:
        return
    img, patch = tuple(to_2tuple(img_size)), tuple(to_2tuple(patch_size))
    if img[0] % patch[0] or img[1] % patch[1]:
        whole = tuple(max(p, i // p * p) for i, p in zip(img, patch, strict=True))
        raise ConfigError(f"img_size={img[0] if img[0] == img[1] else img} is not a multiple of patch_size="
                          f"{patch[0] if patch[0] == patch[1] else patch}, and this ViT refuses images that leave a "
                          f"partial patch: pass img_size={whole[0] if whole[0] == whole[1] else whole} (whole "
                          "patches), or dynamic_img_pad=True with dynamic_img_size=True to pad images to whole patches")


def _plain_sizes(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` after :func:`_check_sizes`, with sizes and counts of NumPy ints as Python ints (timm's size
    arithmetic and model traits take only Python ints: ``img_size=np.int64(64)`` and ``depth=np.int64(2)`` failed
    in them)."""
    _check_sizes(kwargs)
    plain = dict(kwargs)
    for key in ("img_size", "patch_size"):
        size = kwargs.get(key)
        if size is not None:
            plain[key] = tuple(map(operator.index, size)) if isinstance(size, tuple | list) else operator.index(size)
    for key in ("depth", "embed_dim", "num_heads", "num_classes", "in_chans"):
        if key in kwargs:
            plain[key] = operator.index(kwargs[key])
    return plain


def _check_sizes(kwargs: dict[str, Any]) -> None:
    """Refuse ``num_classes`` (int >= 0), ``in_chans`` and ``patch_size`` (ints >= 1) of another kind, naming the
    keyword; timm takes a negative ``num_classes`` as 0 and fails deep inside torch on the others."""
    if "num_classes" in kwargs:
        check_int("num_classes", kwargs["num_classes"], minimum=0, fix="0 gives the pooled features, no classifier")
    if "in_chans" in kwargs:
        check_int("in_chans", kwargs["in_chans"], minimum=1, fix="the number of image channels, e.g. 1 or 3")
    if "patch_size" in kwargs:
        sizes = kwargs["patch_size"]
        for size in (sizes if isinstance(sizes, tuple | list) and len(sizes) == 2 else [sizes]):
            check_int("patch_size", size, minimum=1, fix="an int or (height, width) ints, e.g. 8")
    if kwargs.get("img_size") is not None:
        sizes = kwargs["img_size"]
        for size in (sizes if isinstance(sizes, tuple | list) and len(sizes) == 2 else [sizes]):
            check_int("img_size", size, minimum=1, fix="an int or (height, width) ints, e.g. 32")
    for key, minimum, fix in (("depth", 0, "the number of transformer blocks, e.g. 6"),
                              ("embed_dim", 1, "the token width, e.g. 128"),
                              ("num_heads", 1, "the attention heads per block, e.g. 4")):
        if key in kwargs:
            check_int(key, kwargs[key], minimum=minimum, fix=fix)
    embed_dim, num_heads = kwargs.get("embed_dim", 768), kwargs.get("num_heads", 12)  # timm's defaults
    if embed_dim % num_heads:
        raise ConfigError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}: each head takes "
                          "embed_dim // num_heads channels, e.g. embed_dim=128 with num_heads=4")
    if "mlp_ratio" in kwargs:
        check_float("mlp_ratio", kwargs["mlp_ratio"], minimum=1e-3,
                    fix="the MLP's hidden width over embed_dim, e.g. 3.0")
    if "global_pool" in kwargs:
        _check_global_pool(kwargs["global_pool"], kwargs.get("class_token", True))


def _check_global_pool(global_pool: Any, class_token: bool) -> None:
    """Refuse a ``global_pool`` timm's ViT does not offer, or ``'token'`` without a class token (timm asserts)."""
    if not isinstance(global_pool, str) or global_pool not in _POOLS:
        raise ConfigError(f"global_pool must be one of {', '.join(map(repr, _POOLS))} ('' keeps every token), got "
                          f"{global_pool!r}")
    if global_pool == "token" and not class_token:
        raise ConfigError("global_pool='token' needs a class token, and this ViT has none (class_token=False): use "
                          "global_pool='avg', or build the model with class_token=True")


_POOLS = ("", "avg", "avgmax", "max", "token", "map", "prr")


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


def _check_out_indices(out_indices: Any, depth: int) -> None:
    """``out_indices`` for ``features_only``: an int ``n`` (the last ``n`` blocks) or a non-empty sequence of block
    indices in ``[-depth, depth)``; anything else is refused naming the form (timm fails on it with a TypeError)."""
    if depth == 0:
        raise ValueError("features_only needs transformer blocks, and this ViT has none (depth=0): build it with "
                         "depth >= 1")
    if not _valid_block_indices(out_indices, depth):
        raise ValueError(f"out_indices must be an int n in 1..{depth} (the last n blocks) or a non-empty sequence of "
                         f"block indices in [-{depth}, {depth}), got {out_indices!r}")
    if not isinstance(out_indices, int):
        check_increasing_indices(out_indices, [i + depth if i < 0 else i for i in out_indices], "block")


def _create_vit(variant: str, pretrained: bool = False, **kwargs) -> VitlabVisionTransformer:
    kwargs = _plain_sizes(kwargs)
    depth = kwargs.get("depth", _TINY["depth"])
    # features_only default: the last 3 blocks, as timm's ViTs (all of them in a shallower model)
    out_indices = kwargs.pop("out_indices", min(3, depth) if isinstance(depth, int) and depth > 0 else 3)
    if kwargs.get("features_only") and isinstance(depth, int):
        _check_out_indices(out_indices, depth)
    with pretrained_file_errors(variant, pretrained, kwargs) as kwargs:
        return build_model_with_cfg(
            VitlabVisionTransformer, variant, pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
            **kwargs,
        )


_TINY = dict(
    img_size=32, embed_dim=128, depth=6, num_heads=4, mlp_ratio=3.0, global_pool="avg", class_token=False,
    fc_norm=False, num_classes=10,
)


@register_model
def vit_vitlab_tiny_patch8_32(pretrained: bool = False, **kwargs) -> VitlabVisionTransformer:
    """ViT for 32x32 inputs: 8-px patches (16 tokens), width 128, depth 6, 4 heads, global average pooling.

    About 1.0M parameters with 10 classes. vitlab trains it from scratch (no weights are downloaded); pass
    ``pretrained_cfg_overlay=dict(file=PATH)`` to load a local checkpoint.
    """
    model_args = dict(_TINY, patch_size=8)
    return _create_vit("vit_vitlab_tiny_patch8_32", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vit_vitlab_tiny_patch4_32(pretrained: bool = False, **kwargs) -> VitlabVisionTransformer:
    """ViT for 32x32 inputs: 4-px patches (64 tokens), width 128, depth 6, 4 heads, global average pooling.

    About 1.0M parameters with 10 classes (what the deprecated name ``vitlab_vit_tiny_32`` builds).
    """
    model_args = dict(_TINY, patch_size=4)
    return _create_vit("vit_vitlab_tiny_patch4_32", pretrained=pretrained, **dict(model_args, **kwargs))


# The old name (4-px patches, as it always built), and the vitlab_* spelling of the current names (timm's vit_* group
# is where timm's tooling looks for ViTs, so the listed names start with vit_): all create the model with a warning.
register_model_deprecations(__name__, {
    "vitlab_vit_tiny_32": "vit_vitlab_tiny_patch4_32",
    "vitlab_vit_tiny_patch8_32": "vit_vitlab_tiny_patch8_32",
    "vitlab_vit_tiny_patch4_32": "vit_vitlab_tiny_patch4_32",
})
