"""Inception Transformer (iFormer), equivalent to the official implementation and its checkpoints.

Paper: `Inception Transformer` (Si, Yu, Zhou, Zhou, Wang, Yan, NeurIPS 2022) - https://arxiv.org/abs/2205.12956
Original code: https://github.com/sail-sg/iFormer (Apache-2.0). This is an independent implementation that keeps the
official parameter names and shapes, so official ``.pth`` files load with ``strict=True`` and no renaming.

Each block splits its channels: a high-frequency part (max-pool and depthwise-conv branches) and a low-frequency part
(self-attention on a 2x2 average-pooled map in stages 1-2). ``attention_heads`` lists, per block, how many of the
stage's heads go to attention; the rest of the channels go to the high-frequency mixer (the "frequency ramp").

Every Linear and 1x1-conv product runs through :func:`vitlab.models.cpu_linear.linear` (oneDNN on float32 CPU
tensors, about twice PyTorch's default kernel's speed on this project's CPU; ``F.linear`` elsewhere), unless the
layer was replaced by another module (a peft adapter), whose own forward then runs.

Registered in timm (on ``import vitlab``): ``inception_transformer_{small,base,large}[_384]`` and
``inception_transformer_tiny``. The name ``iformer_*`` is left alone: timm ships an unrelated mobile model there.

Example:
    >>> import timm, torch, vitlab
    >>> model = timm.create_model("inception_transformer_tiny", num_classes=10, in_chans=1).eval()
    >>> model(torch.randn(2, 1, 32, 32)).shape
    torch.Size([2, 10])
"""

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath,
    Mlp,
    register_notrace_function,
    resample_abs_pos_embed_nhwc,
    to_2tuple,
    trunc_normal_,
    use_fused_attn,
)
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from torch import nn
from torch.nn.modules import module as torch_module

from vitlab.models.cpu_linear import capturing_or_transforming, in_torch_func_transform, linear, linear_gelu
from vitlab.models.iformer_checkpoint import checkpoint_filter_fn, load_official_checkpoint
from vitlab.models.inputs import check_image_tensor, check_increasing_indices, check_rates, pretrained_file_errors
from vitlab.models.state_dict_shapes import check_state_dict_shapes

__all__ = [
    "ChunkedMlp", "InceptionTransformer", "add_pos_embed", "batch_norm_explained", "check_image_size",
    "check_input_size", "checkpoint_filter_fn", "gelu_mlp", "linear_module", "load_official_checkpoint",
    "mlp_in_row_chunks", "pointwise_conv", "runs_as_plain",
]

_NUM_STAGES = 4
_POOL_SIZES = (2, 2, 1, 1)  # attention pooling per stage (official)


def _stage_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """Feature-map size of each stage for an input of ``height x width`` (stride-2 3x3 convs: ceil halving)."""
    h, w = math.ceil(height / 4), math.ceil(width / 4)
    sizes = [(h, w)]
    for _ in range(_NUM_STAGES - 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        sizes.append((h, w))
    return sizes


def _check_img_size(img_size: Any) -> tuple[int, int]:
    """``img_size`` (int or ``(height, width)``) as a 2-tuple of ints the model can take, else ``ValueError``."""
    if isinstance(img_size, bool) or not all(isinstance(v, int) and not isinstance(v, bool)
                                              for v in to_2tuple(img_size)) or len(to_2tuple(img_size)) != 2:
        raise ValueError(f"img_size must be an int or (height, width) ints, got {img_size!r}")
    size = tuple(to_2tuple(img_size))
    check_image_size(*size)
    return size


def check_image_size(height: int, width: int) -> None:
    """Raise ``ValueError`` unless the 2x2 attention pooling of stages 1-2 can be undone exactly on this input size.

    The stage-1 and stage-2 maps (``ceil(size / 4)``, ``ceil(size / 8)``) must be even in both directions. Written
    for TorchScript (integer ceil division, no f-strings).

    Example:
        >>> check_image_size(224, 160)
        >>> check_image_size(72, 72)
        Traceback (most recent call last):
        ...
        ValueError: InceptionTransformer cannot take a 72x72 input: ...
    """
    if height < 1 or width < 1:
        raise ValueError("InceptionTransformer cannot take a " + str(height) + "x" + str(width) + " input: give images "
                         "of at least 16x16 pixels (any multiple of 16 works)")
    h1, w1 = (height + 3) // 4, (width + 3) // 4
    h2, w2 = (h1 + 1) // 2, (w1 + 1) // 2
    if h1 % 2 != 0 or w1 % 2 != 0 or h2 % 2 != 0 or w2 % 2 != 0:
        raise ValueError(
            "InceptionTransformer cannot take a " + str(height) + "x" + str(width) + " input: the stage-1 and "
            "stage-2 maps (" + str(h1) + ", " + str(w1) + ") and (" + str(h2) + ", " + str(w2) + ") (ceil(size/4), "
            "ceil(size/8)) must be even in both directions, because attention runs on a 2x2 average-pooled map that "
            "is upsampled back. Any multiple of 16 works (e.g. 32, 48, 64, 224, 384); other sizes work when "
            "ceil(size/4) and ceil(size/8) are even."
        )


@register_notrace_function  # shape checks are data-dependent control flow: a leaf for torch.fx
def check_input_size(x: torch.Tensor, in_chans: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Return ``x`` if it is ``(B, in_chans, H, W)`` with a size :func:`check_image_size` accepts, else raise.

    ``x`` is passed through so that a torch.fx graph keeps the check (a leaf whose output is unused would be dropped).
    With ``dtype`` (the model's), images that are not a floating-point tensor of that dtype are refused too (outside
    autocast), naming the conversion.
    """
    if not torch.jit.is_scripting():
        check_image_tensor(x, dtype)
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(
            "expected input (B, " + str(in_chans) + ", H, W), got shape " + str(list(x.shape))
            + "; pass images as a 4-D batch with the model's in_chans channels"
        )
    check_image_size(x.shape[2], x.shape[3])
    return x


@register_notrace_function  # the resize depends on the input's size: a leaf for torch.fx
def add_pos_embed(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``x + pos`` on ``(B, H, W, C)`` maps; ``pos`` ``(1, h, w, C)`` is resized bilinearly (align_corners=False, no
    antialias: the official forward-time rule) when ``(h, w) != (H, W)``.

    Example:
        >>> add_pos_embed(torch.zeros(2, 4, 6, 8), torch.ones(1, 2, 3, 8)).shape
        torch.Size([2, 4, 6, 8])
    """
    if pos.shape[1] != x.shape[1] or pos.shape[2] != x.shape[2]:
        pos = F.interpolate(
            pos.permute(0, 3, 1, 2), size=(x.shape[1], x.shape[2]), mode="bilinear", align_corners=False
        ).permute(0, 2, 3, 1)
    return x + pos


@torch.jit.ignore
def _check_indices_type(indices: Any) -> None:
    """Eager-mode type check of ``indices`` (TorchScript checks the annotation instead)."""
    if indices is None:
        return
    items = [indices] if isinstance(indices, int) else indices
    if isinstance(indices, str) or not isinstance(items, Sequence) or any(
            isinstance(i, bool) or not isinstance(i, int) for i in items):
        raise ValueError(f"indices must be None, an int n (the last n stages) or a sequence of stage indices, got "
                         f"{indices!r}")


@torch.jit.ignore
def _describe_fmt(output_fmt: Any) -> str:
    """``repr`` of a bad ``output_fmt`` (TorchScript has no ``repr``; eager callers may pass ``None``)."""
    return repr(output_fmt)


def _take_indices(num_features: int, indices: int | list[int] | None) -> tuple[list[int], int]:
    """Absolute stage indices to return (``None``: all, int ``n``: last ``n``, sequence: as given) and their max.
    Written for TorchScript (no f-strings, no generators)."""
    if not torch.jit.is_scripting():
        _check_indices_type(indices)
    if indices is None:
        return list(range(num_features)), num_features - 1
    if isinstance(indices, int):
        if indices <= 0 or indices > num_features:
            raise ValueError("indices=" + str(indices) + " must be between 1 and " + str(num_features)
                             + " (the last n stages)")
        return list(range(num_features - indices, num_features)), num_features - 1
    take: list[int] = []
    for i in indices:
        j = i + num_features if i < 0 else i
        if j < 0 or j >= num_features:
            raise ValueError("indices=" + str(list(indices)) + " must be stage indices in [-" + str(num_features)
                             + ", " + str(num_features) + ")")
        take.append(j)
    if len(take) == 0:
        raise ValueError("indices must name at least one stage, got an empty list")
    return take, max(take)


def _check_global_pool(global_pool: str) -> None:
    if not isinstance(global_pool, str) or global_pool not in ("avg", ""):
        raise ValueError(f"global_pool must be 'avg' (the official mean over tokens) or '' (no pooling: forward_head "
                         f"then takes pooled (B, C) features), got {global_pool!r}; timm's other pools ('max', "
                         "'avgmax', 'token', ...) are not offered: pool forward_features' (B, H, W, C) maps yourself")


def _check_output_stride(output_stride: Any) -> None:
    """Refuse an ``output_stride`` other than ``None`` or 32: the strides of the stage maps are fixed (4, 8, 16, 32)
    because the position-embedding grids and the stage-1/2 attention pooling are built for them, so the iFormer
    cannot dilate its last stages as a CNN can (timm's ConvNeXt takes 8 or 16)."""
    if output_stride is None or (type(output_stride) is int and output_stride == 32):
        return
    raise ValueError(f"output_stride={output_stride!r} is not possible: the iFormer's stages have fixed strides "
                     "4, 8, 16 and 32 (it cannot dilate); leave output_stride out or pass 32, and for stride-16 "
                     "features take stage 2's map (features_only=True, out_indices=(0, 1, 2): strides 4, 8, 16)")


def _count(value: Any) -> int | None:
    """``value`` as a Python int if it is an integer (NumPy's too, e.g. ``labels.max() + 1``), else ``None``."""
    return None if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral) else int(value)


def _check_num_classes(num_classes: Any) -> int:
    """``num_classes`` as a Python int >= 0, else ``ValueError``."""
    count = _count(num_classes)
    if count is None or count < 0:
        raise ValueError(f"num_classes must be an int >= 0 (0: no classifier, the pooled features), got "
                         f"{num_classes!r}")
    return count


def _ints(name: str, values: Any) -> list[int]:
    """``values`` as a list of positive ints (a sequence of ints, not bools or floats), else ``ValueError`` naming
    ``name`` (the constructor keyword; the architecture checks of ``InceptionTransformer._validate`` follow)."""
    if isinstance(values, str) or not isinstance(values, Sequence) or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name} must be a sequence of positive ints (e.g. the official iFormer-S "
                         f"{_SMALL[name] if name != 'attention_heads' else '(1, 1, 1, 3, ...)'}), got {values!r}")
    return list(values)


def _check_hyperparameters(rates: dict[str, Any], mlp_ratio: Any, qkv_bias: Any, layer_scale_init_value: Any) -> None:
    """Refuse dropout/drop-path rates outside [0, 1], a non-positive ``mlp_ratio``, a non-bool ``qkv_bias`` and a
    non-numeric ``layer_scale_init_value``, naming the argument."""
    check_rates(rates)
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, int | float) or not 0 < mlp_ratio < math.inf:
        raise ValueError(f"mlp_ratio must be a positive number (MLP hidden width / channels, official 4.0), got "
                         f"{mlp_ratio!r}")
    if not isinstance(qkv_bias, bool):
        raise ValueError(f"qkv_bias must be True or False, got {qkv_bias!r}")
    if layer_scale_init_value is not None and (
            isinstance(layer_scale_init_value, bool) or not isinstance(layer_scale_init_value, int | float)
            or not math.isfinite(layer_scale_init_value)):
        raise ValueError(f"layer_scale_init_value must be a number (a finite one, official 1e-6) or None (no "
                         f"LayerScale), got {layer_scale_init_value!r}")


class Stem(nn.Module):
    """Conv3x3/2 -> BN -> GELU -> Conv3x3/2 -> BN: ``(B, in_chans, H, W) -> (B, ceil(H/4), ceil(W/4), dim)``."""

    def __init__(self, in_chans: int, dim: int, act_layer: type[nn.Module] = nn.GELU, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.proj1 = nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1, **dd)
        self.norm1 = nn.BatchNorm2d(dim // 2, **dd)
        self.act = act_layer()
        self.proj2 = nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1, **dd)
        self.norm2 = nn.BatchNorm2d(dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            x = x.contiguous(memory_format=torch.channels_last)
        elif not in_torch_func_transform():  # vmap has no channels-last copy
            x = x.contiguous(memory_format=torch.channels_last)  # so every conv below runs channels-last
        x = self.norm2(self.proj2(self.act(self.norm1(self.proj1(x)))))
        return x.permute(0, 2, 3, 1)


class Downsample(nn.Module):
    """Conv3x3/2 -> BN between stages: ``(B, H, W, in_dim) -> (B, ceil(H/2), ceil(W/2), out_dim)``."""

    def __init__(self, in_dim: int, out_dim: int, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1, device=device, dtype=dtype)
        self.norm = nn.BatchNorm2d(out_dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x.permute(0, 3, 1, 2))
        if torch.jit.is_scripting():
            x = self.norm(x)
        elif capturing_or_transforming():
            x = self.norm(x)
        else:
            x = batch_norm_explained(self.norm, x)
        return x.permute(0, 2, 3, 1)


_ONE_VALUE = "Expected more than 1 value per channel when training"


@torch.jit.unused
def batch_norm_explained(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)``; torch's error for a training-mode BatchNorm that sees one value per channel (a batch of 1 whose
    map is 1x1, e.g. the last batch of an epoch at 32 px) is re-raised naming the fixes.

    Example:
        >>> batch_norm_explained(nn.BatchNorm2d(4), torch.randn(2, 4, 1, 1)).shape
        torch.Size([2, 4, 1, 1])
    """
    try:
        return norm(x)
    except ValueError as err:
        if _ONE_VALUE not in str(err):
            raise
        raise ValueError(
            f"in training mode the iFormer's BatchNorm needs more than one value per channel, but this batch of "
            f"{x.shape[0]} image(s) leaves a {x.shape[2]}x{x.shape[3]} map after a downsampling: train with batches "
            "of at least 2 images (DataLoader(..., drop_last=True) drops a last batch of 1), or with larger images "
            "(64 px and up), or call model.eval() to predict"
        ) from None


@torch.jit.unused
def runs_as_plain(module: nn.Module, cls: type[nn.Module]) -> bool:
    """Whether calling ``module`` is exactly ``cls.forward``: its type is ``cls`` and no hook is registered on it or on
    every module (``torch.nn.utils.prune``, old-style ``spectral_norm``, activation-capture or per-sample-gradient
    hooks must run, so such a module is called, not replaced by the same product).

    Example:
        >>> layer = nn.Linear(4, 2)
        >>> runs_as_plain(layer, nn.Linear), runs_as_plain(nn.Identity(), nn.Linear)
        (True, False)
    """
    if type(module) is not cls:
        return False
    own = module._forward_pre_hooks or module._forward_hooks or module._backward_pre_hooks or module._backward_hooks
    every = (torch_module._global_forward_pre_hooks or torch_module._global_forward_hooks
             or torch_module._global_backward_pre_hooks or torch_module._global_backward_hooks)
    return not (own or every)


def linear_module(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, through :func:`~vitlab.models.cpu_linear.linear` when ``module`` is exactly an ``nn.Linear``
    without hooks (:func:`runs_as_plain`); any other module (a peft adapter wrapping the Linear, a quantised or
    subclassed layer, a hooked or pruned one) runs its own forward.
    (Defined here, not in ``cpu_linear``, so that torch.fx, which patches this module's globals, keeps ``linear`` a
    leaf.)

    Example:
        >>> linear_module(nn.Linear(8, 3), torch.randn(4, 8)).shape
        torch.Size([4, 3])
    """
    if runs_as_plain(module, nn.Linear):
        return linear(x, module.weight, module.bias)
    return module(x)


def pointwise_conv(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 ``nn.Conv2d`` applied to an NHWC map ``(B, H, W, C_in) -> (B, H, W, C_out)`` as one matrix product
    (:func:`~vitlab.models.cpu_linear.linear` with the conv's weights); a module that wraps or replaces the conv (a
    peft adapter) is run as a conv on the NCHW view instead, so its own forward counts.

    Example:
        >>> pointwise_conv(nn.Conv2d(4, 6, 1), torch.randn(2, 3, 5, 4)).shape
        torch.Size([2, 3, 5, 6])
    """
    if runs_as_plain(conv, nn.Conv2d):
        return linear(x, conv.weight.flatten(1), conv.bias)
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class HighMixer(nn.Module):
    """High-frequency mixer on ``dim`` channels (NCHW): conv branch and max-pool branch, ``dim -> 2 * dim`` channels.

    The first ``dim / 2`` channels go through 1x1 conv -> depthwise 3x3 -> GELU, the others through max-pool 3x3 ->
    1x1 conv (with bias) -> GELU; the outputs are concatenated in that order.
    """

    def __init__(self, dim: int, act_layer: type[nn.Module] = nn.GELU, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.half = dim // 2
        self.conv1 = nn.Conv2d(self.half, dim, 1, bias=False, **dd)
        self.proj1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False, **dd)
        self.act1 = act_layer()
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.proj2 = nn.Conv2d(self.half, dim, 1, **dd)
        self.act2 = act_layer()

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The conv branch and the max-pool branch, each ``(B, dim, H, W)``, not yet concatenated.

        The 1x1 convs run as matrix products on channels-last views (:func:`pointwise_conv`): a channel slice of a
        channels-last map is neither NCHW- nor NHWC-contiguous, so convolution takes its generic im2col path on it
        (same result; up to 2 % faster in training on a CPU, see the README's speed table).
        """
        if torch.jit.is_scripting():
            cx = F.linear(x[:, : self.half].permute(0, 2, 3, 1), self.conv1.weight.flatten(1))
            px = self.pool(x[:, self.half :]).permute(0, 2, 3, 1)
            px = F.linear(px, self.proj2.weight.flatten(1), self.proj2.bias)
        else:
            cx = pointwise_conv(self.conv1, x[:, : self.half].permute(0, 2, 3, 1))
            px = pointwise_conv(self.proj2, self.pool(x[:, self.half :]).permute(0, 2, 3, 1))
        return self.act1(self.proj1(cx.permute(0, 3, 1, 2))), self.act2(px.permute(0, 3, 1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cx, px = self.branches(x)
        return torch.cat((cx, px), dim=1)


class LowMixer(nn.Module):
    """Low-frequency mixer (NCHW -> NCHW, ``dim`` channels): avg-pool, multi-head self-attention, nearest upsample.

    There is no output projection (official); the output channels run head-major (``c = head * head_dim + d``).
    """

    def __init__(
        self, dim: int, num_heads: int, pool_size: int, qkv_bias: bool = True, attn_drop: float = 0.0,
        device=None, dtype=None,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, device=device, dtype=dtype)
        self.attn_drop = attn_drop
        self.fused_attn = use_fused_attn()  # timm's switch (set_fused_attn / TIMM_FUSED_ATTN), as its own attention
        self.pool = nn.AvgPool2d(pool_size) if pool_size > 1 else nn.Identity()
        self.uppool = nn.Upsample(scale_factor=pool_size, mode="nearest") if pool_size > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        B, C, H, W = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        tokens = x.permute(0, 2, 3, 1).reshape(B, H * W, C)
        qkv = self.qkv(tokens) if torch.jit.is_scripting() else linear_module(self.qkv, tokens)
        qkv = qkv.reshape(B, H * W, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        dropout_p = self.attn_drop if self.training else 0.0
        fused = self.fused_attn
        if not torch.jit.is_scripting():
            fused = fused and not in_torch_func_transform()  # the fused CPU kernel has no forward-mode / vmap rule
        if fused:
            x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], dropout_p=dropout_p)
        else:  # plain ops: e.g. second derivatives, which PyTorch's fused CPU kernel lacks
            attn = (qkv[0] * qkv.shape[-1] ** -0.5) @ qkv[1].transpose(-2, -1)
            x = F.dropout(attn.softmax(dim=-1), p=dropout_p) @ qkv[2]
        x = x.transpose(1, 2).reshape(B, H, W, C).permute(0, 3, 1, 2)
        return self.uppool(x)


class Mixer(nn.Module):
    """Inception token mixer: ``(B, H, W, dim) -> (B, H, W, dim)``.

    Channels ``[0, high_dim)`` go to :class:`HighMixer`, the last ``attention_heads * head_dim`` to :class:`LowMixer`;
    the outputs are concatenated (high first), fused by a residual depthwise 3x3 conv and projected by a 1x1 conv.
    """

    def __init__(
        self, dim: int, num_heads: int, attention_heads: int, pool_size: int, qkv_bias: bool = True,
        attn_drop: float = 0.0, proj_drop: float = 0.0, device=None, dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        head_dim = dim // num_heads
        self.low_dim = attention_heads * head_dim
        self.high_dim = dim - self.low_dim
        fuse_dim = self.low_dim + 2 * self.high_dim
        self.high_mixer = HighMixer(self.high_dim, **dd)
        self.low_mixer = LowMixer(self.low_dim, attention_heads, pool_size, qkv_bias, attn_drop, **dd)
        self.conv_fuse = nn.Conv2d(fuse_dim, fuse_dim, 3, padding=1, groups=fuse_dim, bias=False, **dd)
        self.proj = nn.Conv2d(fuse_dim, dim, 1, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)  # a view: channels-last memory, NCHW shape
        cx, px = self.high_mixer.branches(x[:, : self.high_dim])
        x = torch.cat((cx, px, self.low_mixer(x[:, self.high_dim :])), dim=1)  # one copy for the three branches
        if torch.jit.is_scripting():
            x = self._fuse(x)
        elif runs_as_plain(self.conv_fuse, nn.Conv2d):
            x = self._fuse(x)
        else:  # a wrapped (peft), hooked or pruned conv_fuse runs its own forward
            x = x + self.conv_fuse(x)
        x = x.permute(0, 2, 3, 1)
        if torch.jit.is_scripting():
            return self.proj_drop(F.linear(x, self.proj.weight.flatten(1), self.proj.bias))
        return self.proj_drop(pointwise_conv(self.proj, x))  # the 1x1 conv, on NHWC

    def _fuse(self, x: torch.Tensor) -> torch.Tensor:
        """``x + conv_fuse(x)`` in one depthwise conv: the residual is an identity tap added to the kernel's centre."""
        weight = self.conv_fuse.weight
        identity = F.pad(weight.new_ones(weight.shape[0], 1, 1, 1), (1, 1, 1, 1))
        return F.conv2d(x, weight + identity, None, 1, 1, 1, weight.shape[0])


@register_notrace_function  # the row loop depends on the input's size: a leaf for torch.fx
def mlp_in_row_chunks(
    x: torch.Tensor, fc1_weight: torch.Tensor, fc1_bias: torch.Tensor, fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor, approximate: str, rows: int,
) -> torch.Tensor:
    """``fc2(gelu(fc1(x)))`` over the last dim of ``x`` ``(..., C_in) -> (..., C_out)``, ``rows`` tokens at a time.

    The same products as one pass, row by row (through :func:`~vitlab.models.cpu_linear.linear_gelu` and
    :func:`~vitlab.models.cpu_linear.linear`: within float rounding of ``F.linear``); only one chunk's hidden
    activation exists at a time. It stays in the CPU cache between the three ops and is reused, instead of a fresh
    multi-MB buffer that is written, read back from memory and freed three times per block. Under autocast the
    output takes the dtype autocast gives the second product, as in one pass.

    Example:
        >>> w1, b1, w2, b2 = torch.randn(8, 4), torch.randn(8), torch.randn(4, 8), torch.randn(4)
        >>> x = torch.randn(2, 5, 5, 4)
        >>> ref = F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)
        >>> bool((mlp_in_row_chunks(x, w1, b1, w2, b2, "none", 7) - ref).abs().max() < 1e-5)
        True
    """
    if rows < 1:
        raise ValueError("rows must be >= 1, got " + str(rows))
    flat = x.reshape(-1, x.shape[-1])
    if flat.shape[0] == 0:  # no tokens (an empty batch): nothing to chunk
        return F.linear(F.gelu(F.linear(x, fc1_weight, fc1_bias), approximate=approximate), fc2_weight, fc2_bias)
    out = torch.empty(0)
    for start in range(0, flat.shape[0], rows):
        hidden = linear_gelu(flat[start : start + rows], fc1_weight, fc1_bias, approximate)
        chunk = linear(hidden, fc2_weight, fc2_bias)
        if start == 0:
            out = chunk.new_empty(flat.shape[0], chunk.shape[1])
        out[start : start + rows] = chunk
    return out.reshape(x.shape[:-1] + (fc2_weight.shape[0],))


@register_notrace_function  # the chunked path's loop depends on the input's size: a leaf for torch.fx
def gelu_mlp(
    x: torch.Tensor, fc1_weight: torch.Tensor, fc1_bias: torch.Tensor, fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor, approximate: str, rows: int,
) -> torch.Tensor:
    """``fc2(gelu(fc1(x)))`` at inference: :func:`mlp_in_row_chunks` on CPU tensors, the plain three ops under
    autocast, graph capture (``torch.compile``/``export``, ``torch.jit.trace``: no size-dependent loop in the graph)
    or off the CPU. ``(..., C_in) -> (..., C_out)``.

    Example:
        >>> w1, b1, w2, b2 = torch.randn(8, 4), torch.randn(8), torch.randn(4, 8), torch.randn(4)
        >>> gelu_mlp(torch.randn(2, 5, 5, 4), w1, b1, w2, b2, "none", rows=7).shape
        torch.Size([2, 5, 5, 4])
    """
    if (
        x.device.type != "cpu" or torch.is_autocast_enabled(x.device.type) or capturing_or_transforming()
    ):
        return F.linear(F.gelu(F.linear(x, fc1_weight, fc1_bias), approximate=approximate), fc2_weight, fc2_bias)
    return mlp_in_row_chunks(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, approximate, rows)


class ChunkedMlp(Mlp):
    """timm's ``Mlp`` (same parameters and names) that runs in chunks of tokens at inference on the CPU.

    In eval mode with autograd off, with GELU, biases, no hidden norm and no dropout, :func:`gelu_mlp` runs the
    three ops ``rows = hidden_budget // hidden_features`` tokens at a time, so that a chunk's hidden activation stays
    in the cache (still 6 % faster than one pass with the oneDNN products). Otherwise (training, autograd) it is
    timm's ``Mlp.forward`` with the two products through :func:`~vitlab.models.cpu_linear.linear`: doing the backward
    pass in chunks too (a custom autograd op) measured 0-5 % faster in training, within this machine's noise, so it
    was not kept. ``fc1`` / ``fc2`` replaced by other modules (peft adapters) run their own forward, unchunked.
    Input and output ``(..., in_features)``.

    Example:
        >>> mlp = ChunkedMlp(16, 64, hidden_budget=7 * 64).eval()
        >>> with torch.no_grad():
        ...     mlp(torch.randn(2, 5, 5, 16)).shape  # 50 tokens in chunks of 7
        torch.Size([2, 5, 5, 16])
    """

    def __init__(self, in_features: int, hidden_features: int, hidden_budget: int = 1 << 19, **kwargs):
        super().__init__(in_features, hidden_features, **kwargs)
        if hidden_budget < 1:
            raise ValueError(f"hidden_budget must be >= 1 (hidden values per chunk), got {hidden_budget}")
        self.rows = max(1, hidden_budget // hidden_features)
        chunkable = (
            isinstance(self.act, nn.GELU) and isinstance(self.norm, nn.Identity)
            and self.fc1.bias is not None and self.fc2.bias is not None
            and self.drop1.p == 0 and self.drop2.p == 0
        )
        self.approximate = self.act.approximate if chunkable else ""  # "" marks "not chunkable"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc1_bias, fc2_bias = self.fc1.bias, self.fc2.bias
        if (
            self.approximate != "" and not self.training and not torch.is_grad_enabled()
            and fc1_bias is not None and fc2_bias is not None
            and not torch.jit.is_tracing()  # one graph whatever the grad mode (torch.jit.trace's check re-traces)
        ):
            if torch.jit.is_scripting():
                if x.device.type == "cpu":
                    return mlp_in_row_chunks(
                        x, self.fc1.weight, fc1_bias, self.fc2.weight, fc2_bias, self.approximate, self.rows
                    )
            elif runs_as_plain(self.fc1, nn.Linear) and runs_as_plain(self.fc2, nn.Linear):  # not wrapped or hooked
                return gelu_mlp(x, self.fc1.weight, fc1_bias, self.fc2.weight, fc2_bias, self.approximate, self.rows)
        if torch.jit.is_scripting():
            return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))  # timm's Mlp.forward
        x = self.norm(self.drop1(self.act(linear_module(self.fc1, x))))  # the same, products through `linear`
        return self.drop2(linear_module(self.fc2, x))


class Block(nn.Module):
    """Pre-norm block on ``(B, H, W, dim)``: ``x + ls1 * Mixer(LN(x))``, then ``x + ls2 * Mlp(LN(x))``.

    ``layer_scale_init_value=None`` means no LayerScale (official stages 1-2).
    """

    def __init__(
        self, dim: int, num_heads: int, attention_heads: int, pool_size: int, mlp_ratio: float = 4.0,
        qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
        layer_scale_init_value: float | None = None, norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU, device=None, dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if layer_scale_init_value is not None:
            self.layer_scale_1 = nn.Parameter(torch.full((dim,), float(layer_scale_init_value), **dd))
            self.layer_scale_2 = nn.Parameter(torch.full((dim,), float(layer_scale_init_value), **dd))
        else:
            self.layer_scale_1 = self.layer_scale_2 = None
        self.norm1 = norm_layer(dim, eps=1e-6, **dd)
        self.attn = Mixer(dim, num_heads, attention_heads, pool_size, qkv_bias, attn_drop, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim, eps=1e-6, **dd)
        self.mlp = ChunkedMlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attn(self.norm1(x))
        x = x + self.drop_path(y if self.layer_scale_1 is None else self.layer_scale_1 * y)
        z = self.mlp(self.norm2(x))
        return x + self.drop_path(z if self.layer_scale_2 is None else self.layer_scale_2 * z)


class Blocks(nn.Sequential):
    """One stage's blocks on ``(B, H, W, dim)``, run under activation checkpointing when ``grad_checkpointing``."""

    def __init__(self, *blocks: nn.Module):
        super().__init__(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self, x)
        for block in self:
            x = block(x)
        return x


class InceptionTransformer(nn.Module):
    """Inception Transformer with the official parameter layout.

    Parameter names follow the official code: ``pos_embed1..4``, ``patch_embed[2-4]``, ``blocks1..4``.

    Args:
        depths: Blocks per stage (4 ints).
        embed_dims: Channels per stage (4 ints).
        num_heads: Heads per stage; the head dim is ``embed_dims[i] // num_heads[i]``.
        attention_heads: Per block (``sum(depths)`` ints): heads given to attention, ``0 < a < num_heads[stage]``.
            The remaining ``(num_heads - a) * head_dim`` channels form the high-frequency part (must be even).
        num_classes: Classifier outputs (0: no classifier).
        in_chans: Input channels.
        img_size: Native input size (int or (H, W)); sets the position-embedding grids. Other sizes interpolate
            the position embeddings bilinearly at forward time, as the official code does.
        mlp_ratio: MLP hidden width / channels.
        drop_rate: Dropout inside the MLPs (the official meaning of ``drop_rate``; there is no head dropout).
        drop_path_rate: Stochastic depth, linearly increasing over all blocks.
        layer_scale_init_value: LayerScale init in stages 3-4 (official: LayerScale only there); ``None`` disables.
        attn_drop_rate: Attention dropout.
        qkv_bias: Bias in the attention's qkv projection (official: True).
        global_pool: ``"avg"`` (mean over tokens after the final norm) or ``""`` (no pooling).
        output_stride: ``None`` or 32, the only stride of the last stage (timm's keyword for dilated backbones; the
            iFormer cannot dilate, so other values are refused).

    Shapes: input ``(B, in_chans, H, W)``; stage ``i`` works on ``(B, H_i, W_i, embed_dims[i])`` channels-last with
    ``H_1 = ceil(H / 4)`` and ``H_{i+1} = ceil(H_i / 2)``; ``forward_features`` returns ``(B, H_4, W_4, C)``
    (``output_fmt = "NHWC"``, as timm's channels-last models declare) and ``forward`` ``(B, num_classes)``.

    Example:
        >>> model = InceptionTransformer(depths=(1, 1, 1, 1), embed_dims=(32, 64, 96, 128), num_heads=(2, 4, 6, 8),
        ...                              attention_heads=(1, 2, 3, 4), num_classes=5, img_size=32)
        >>> model.forward_features(torch.randn(2, 3, 64, 32)).shape
        torch.Size([2, 2, 1, 128])
    """

    def __init__(
        self, depths: Sequence[int], embed_dims: Sequence[int], num_heads: Sequence[int],
        attention_heads: Sequence[int], num_classes: int = 1000, in_chans: int = 3,
        img_size: int | Sequence[int] = 224, mlp_ratio: float = 4.0, drop_rate: float = 0.0,
        drop_path_rate: float = 0.0, layer_scale_init_value: float | None = 1e-6, attn_drop_rate: float = 0.0,
        qkv_bias: bool = True, global_pool: str = "avg", output_stride: int | None = None, device=None, dtype=None,
    ):
        super().__init__()
        _check_output_stride(output_stride)
        dd = dict(device=device, dtype=dtype)
        depths, embed_dims, num_heads = _ints("depths", depths), _ints("embed_dims", embed_dims), _ints(
            "num_heads", num_heads)
        attention_heads = _ints("attention_heads", attention_heads)
        self._validate(depths, embed_dims, num_heads, attention_heads, global_pool)
        if _count(in_chans) is None or in_chans < 1:
            raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")
        in_chans, num_classes = int(in_chans), _check_num_classes(num_classes)
        _check_hyperparameters(
            dict(drop_rate=drop_rate, drop_path_rate=drop_path_rate, attn_drop_rate=attn_drop_rate), mlp_ratio,
            qkv_bias, layer_scale_init_value,
        )
        self.img_size = _check_img_size(img_size)
        pos_sizes = _stage_sizes(*self.img_size)
        self.num_classes, self.in_chans, self.global_pool = num_classes, in_chans, global_pool
        self.output_fmt = "NHWC"
        self.num_stages = _NUM_STAGES
        self.embed_dims = embed_dims
        self.num_features = self.head_hidden_size = embed_dims[-1]

        for i, (h, w) in enumerate(pos_sizes):
            self.register_parameter(f"pos_embed{i + 1}", nn.Parameter(torch.zeros(1, h, w, embed_dims[i], **dd)))
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.feature_info = []
        start = 0
        for i in range(_NUM_STAGES):
            if i == 0:
                self.patch_embed = Stem(in_chans, embed_dims[0], **dd)
            else:
                self.add_module(f"patch_embed{i + 1}", Downsample(embed_dims[i - 1], embed_dims[i], **dd))
            blocks = [
                Block(
                    embed_dims[i], num_heads[i], attention_heads[j], _POOL_SIZES[i], mlp_ratio, qkv_bias,
                    drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[j],
                    layer_scale_init_value=layer_scale_init_value if i >= 2 else None, **dd,
                )
                for j in range(start, start + depths[i])
            ]
            self.add_module(f"blocks{i + 1}", Blocks(*blocks))
            start += depths[i]
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=4 * 2**i, module=f"blocks{i + 1}"))
        self.norm = nn.LayerNorm(embed_dims[-1], eps=1e-6, **dd)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.init_weights()

    @staticmethod
    def _validate(depths, embed_dims, num_heads, attention_heads, global_pool) -> None:
        if not (len(depths) == len(embed_dims) == len(num_heads) == _NUM_STAGES) or min(depths) < 1:
            raise ValueError(
                f"depths, embed_dims and num_heads need {_NUM_STAGES} entries each with depths >= 1; got "
                f"depths={depths}, embed_dims={embed_dims}, num_heads={num_heads}"
            )
        if len(attention_heads) != sum(depths):
            raise ValueError(
                f"attention_heads lists one entry per block: need sum(depths)={sum(depths)}, got {len(attention_heads)}"
            )
        stage_of = [i for i, d in enumerate(depths) for _ in range(d)]
        for i, (dim, heads) in enumerate(zip(embed_dims, num_heads, strict=True)):
            if heads < 1 or dim % heads:
                raise ValueError(f"embed_dims[{i}]={dim} must be divisible by num_heads[{i}]={heads}")
        for j, (a, i) in enumerate(zip(attention_heads, stage_of, strict=True)):
            high_dim = (num_heads[i] - a) * (embed_dims[i] // num_heads[i])
            if not 0 < a < num_heads[i] or high_dim % 2:
                raise ValueError(
                    f"attention_heads[{j}]={a} (stage {i + 1}) must satisfy 0 < a < num_heads[{i}]={num_heads[i]} "
                    f"and leave an even number of high-frequency channels (got {high_dim})"
                )
        _check_global_pool(global_pool)

    def init_weights(self) -> None:
        """Official init: trunc-normal(0.02) position embeddings, Linear and Conv weights (head included); 0 biases."""
        for i in range(self.num_stages):
            trunc_normal_(getattr(self, f"pos_embed{i + 1}"), std=0.02)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"pos_embed{i + 1}" for i in range(self.num_stages)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        blocks = r"^blocks(\d+)" if coarse else r"^blocks(\d+)\.(\d+)"
        return dict(
            stem=r"^patch_embed\.|^pos_embed1$",
            blocks=[(blocks, None), (r"^(?:patch|pos)_embed(\d+)", (-1,)), (r"^norm", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in range(self.num_stages):
            getattr(self, f"blocks{stage + 1}").grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def set_input_size(self, img_size: int | Sequence[int] | None = None) -> None:
        """Make ``img_size`` (int or ``(H, W)``) the model's native input size, as timm's ``set_input_size``: the four
        position-embedding grids are resampled to the new stage sizes with the rule the forward pass applies to other
        sizes (bilinear, ``align_corners=False``, no antialias), so outputs at that size stay the same; a frozen grid
        stays frozen. ``None`` changes nothing.

        Example:
            >>> model = InceptionTransformer(depths=(1, 1, 1, 1), embed_dims=(32, 64, 96, 128), num_heads=(2, 4, 6, 8),
            ...                              attention_heads=(1, 2, 3, 4), num_classes=5, img_size=32)
            >>> model.set_input_size(64)
            >>> model.img_size, tuple(model.pos_embed1.shape)
            ((64, 64), (1, 16, 16, 32))
        """
        if img_size is None:
            return
        size = _check_img_size(img_size)
        for i, (h, w) in enumerate(_stage_sizes(*size)[: self.num_stages]):  # a pruned model keeps fewer grids
            old = getattr(self, f"pos_embed{i + 1}")
            with torch.no_grad():
                grid = resample_abs_pos_embed_nhwc(old, [h, w], interpolation="bilinear", antialias=False)
            setattr(self, f"pos_embed{i + 1}", nn.Parameter(grid, requires_grad=old.requires_grad))
        self.img_size = size

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head by a fresh ``Linear(num_features, num_classes)`` (``Identity`` for 0); ``global_pool``
        ``"avg"`` or ``""`` (``None`` keeps the current one)."""
        num_classes = _check_num_classes(num_classes)
        if global_pool is not None:
            _check_global_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = num_classes
        ref = self.pos_embed1
        self.head = (
            nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            if num_classes > 0 else nn.Identity()
        ).train(self.training)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """torch's loading, after refusing tensors of another shape with one error that names the differing
        ``img_size`` / ``num_classes`` / ``in_chans`` and the fix (:func:`check_state_dict_shapes`)."""
        check_state_dict_shapes(
            self, state_dict, prefix, classifier="head", first_conv="patch_embed.proj1", grid_hint=self._grid_hint
        )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _grid_hint(self, name: str, theirs: tuple[int, ...], mine: tuple[int, ...]) -> str | None:
        """Why ``pos_embed<k>`` has another shape: the ``img_size`` its grid was made for (``None`` if not a grid)."""
        if not name.startswith("pos_embed") or len(theirs) != 4 or theirs[-1] != mine[-1]:
            return None
        reduction = 4 * 2 ** (int(name.removeprefix("pos_embed")) - 1)
        h, w = theirs[1] * reduction, theirs[2] * reduction
        mine_size = self.img_size[0] if self.img_size[0] == self.img_size[1] else self.img_size
        return f"a position-embedding grid made for img_size={h if h == w else (h, w)}, the model's is {mine_size}"

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
        stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs for dense heads: ``(B, embed_dims[i], H / 2**(i+2), W / 2**(i+2))`` for ``i`` in ``indices``.

        Args:
            x: Images ``(B, in_chans, H, W)``.
            indices: Stages to return: ``None`` all, int ``n`` the last ``n``, or a list of stage indices (0-3).
            norm: Apply the final LayerNorm to the last stage's map when it is returned.
            stop_early: Skip the stages after the last requested one. As in timm, the result keeps its form: with
                ``intermediates_only=False`` it is still ``(features, maps)``, where ``features`` is the last stage
                run, ``(B, h, w, C)`` (final-normalised only when that is the last stage, as ``forward_features``).
            output_fmt: ``"NCHW"`` (default) or ``"NHWC"``.
            intermediates_only: Return only the list of maps; otherwise ``(forward_features(x), maps)``.

        The stages are written out as in :meth:`forward_features`, so TorchScript compiles this method too (timm's
        ``features_only`` wrapper calls it).
        """
        if output_fmt != "NCHW" and output_fmt != "NHWC":
            raise ValueError("output_fmt must be 'NCHW' or 'NHWC', got " + _describe_fmt(output_fmt))
        take, max_index = _take_indices(self.num_stages, indices)
        last = max_index if stop_early or intermediates_only else self.num_stages - 1
        x = check_input_size(x, self.in_chans, self.pos_embed1.dtype)
        intermediates: list[torch.Tensor] = []
        x = self.blocks1(add_pos_embed(self.patch_embed(x), self.pos_embed1))
        self._keep(x, 0, take, norm, output_fmt, intermediates)
        if last >= 1 and hasattr(self, "blocks2"):
            x = self.blocks2(add_pos_embed(self.patch_embed2(x), self.pos_embed2))
            self._keep(x, 1, take, norm, output_fmt, intermediates)
        if last >= 2 and hasattr(self, "blocks3"):
            x = self.blocks3(add_pos_embed(self.patch_embed3(x), self.pos_embed3))
            self._keep(x, 2, take, norm, output_fmt, intermediates)
        if last >= 3 and hasattr(self, "blocks4"):
            x = self.blocks4(add_pos_embed(self.patch_embed4(x), self.pos_embed4))
            self._keep(x, 3, take, norm, output_fmt, intermediates)
        if intermediates_only:
            return intermediates
        return (self.norm(x) if last == self.num_stages - 1 else x), intermediates

    def _keep(self, x: torch.Tensor, stage: int, take: list[int], norm: bool, output_fmt: str,
              intermediates: list[torch.Tensor]) -> None:
        """Append stage ``stage``'s map (``(B, H, W, C)``) to ``intermediates`` if asked for, normalised and laid out
        as asked."""
        if stage in take:
            y = self.norm(x) if norm and stage == self.num_stages - 1 else x
            intermediates.append(y.permute(0, 3, 1, 2) if output_fmt == "NCHW" else y)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Delete the stages after the last index in ``indices`` (and the norm/head if asked); return the indices."""
        take, max_index = _take_indices(self.num_stages, indices)
        for stage in range(max_index + 1, self.num_stages):
            for name in (f"patch_embed{stage + 1}", f"pos_embed{stage + 1}", f"blocks{stage + 1}"):
                delattr(self, name)
        pruned_end = max_index < self.num_stages - 1
        self.num_stages = max_index + 1
        self.feature_info = self.feature_info[: self.num_stages]
        if pruned_end:
            self.num_features = self.head_hidden_size = self.embed_dims[max_index]
        if prune_norm or pruned_end:
            self.norm = nn.Identity()
        if prune_head or pruned_end:
            self.reset_classifier(0)
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, in_chans, H, W)`` -> final-normalised, unpooled features ``(B, H/32, W/32, num_features)``.

        The stages are written out (not a loop over ``getattr``) so that TorchScript compiles this method; ``hasattr``
        is resolved at compile time, so a model pruned by :meth:`prune_intermediate_layers` scripts too.
        """
        x = check_input_size(x, self.in_chans, self.pos_embed1.dtype)
        x = self.blocks1(add_pos_embed(self.patch_embed(x), self.pos_embed1))
        if hasattr(self, "blocks2"):
            x = self.blocks2(add_pos_embed(self.patch_embed2(x), self.pos_embed2))
        if hasattr(self, "blocks3"):
            x = self.blocks3(add_pos_embed(self.patch_embed3(x), self.pos_embed3))
        if hasattr(self, "blocks4"):
            x = self.blocks4(add_pos_embed(self.patch_embed4(x), self.pos_embed4))
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, h, w, C)`` features -> logits ``(B, num_classes)``, or pooled features ``(B, C)`` if ``pre_logits``."""
        if self.global_pool == "avg":
            x = x.mean(dim=[1, 2])
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_inception_transformer(variant: str, pretrained: bool = False, **kwargs) -> InceptionTransformer:
    if kwargs.get("features_only") and "out_indices" in kwargs:
        check_increasing_indices(kwargs["out_indices"], _take_indices(_NUM_STAGES, kwargs["out_indices"])[0], "stage")
    with pretrained_file_errors(variant, pretrained, kwargs) as kwargs:
        return build_model_with_cfg(
            InceptionTransformer, variant, pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
            **kwargs,
        )


def _cfg(url: str = "", **kwargs) -> dict[str, Any]:
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.9,
        "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj1", "classifier": "head", "license": "apache-2.0",
        "paper_ids": "arXiv:2205.12956", "paper_name": "Inception Transformer",
        "origin_url": "https://github.com/sail-sg/iFormer", **kwargs,
    }


_URL = "https://huggingface.co/sail/dl2/resolve/main/iformer/"
_384 = dict(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0)
default_cfgs = generate_default_cfgs({
    "inception_transformer_small.sail_in1k": _cfg(url=_URL + "iformer_small.pth"),
    "inception_transformer_base.sail_in1k": _cfg(url=_URL + "iformer_base.pth"),
    "inception_transformer_large.sail_in1k": _cfg(url=_URL + "iformer_large.pth"),
    "inception_transformer_small_384.sail_in1k": _cfg(url=_URL + "iformer_small_384.pth", **_384),
    "inception_transformer_base_384.sail_in1k": _cfg(url=_URL + "iformer_base_384.pth", **_384),
    "inception_transformer_large_384.sail_in1k": _cfg(url=_URL + "iformer_large_384.pth", **_384),
    "inception_transformer_tiny": _cfg(num_classes=10, input_size=(3, 32, 32), pool_size=(1, 1), crop_pct=1.0),
})

# Official frequency ramps: attention heads per block (the rest of each stage's heads are high-frequency channels).
_SMALL = dict(
    depths=(3, 3, 9, 3), embed_dims=(96, 192, 320, 384), num_heads=(3, 6, 10, 12),
    attention_heads=(1,) * 3 + (3,) * 3 + (7,) * 4 + (9,) * 5 + (11,) * 3,
)
_BASE = dict(
    depths=(4, 6, 14, 6), embed_dims=(96, 192, 384, 512), num_heads=(3, 6, 12, 16),
    attention_heads=(1,) * 4 + (3,) * 6 + (8,) * 7 + (10,) * 7 + (15,) * 6,
)
_LARGE = dict(
    depths=(4, 6, 18, 8), embed_dims=(96, 192, 448, 640), num_heads=(3, 6, 14, 20),
    attention_heads=(1,) * 4 + (3,) * 6 + (10,) * 9 + (12,) * 9 + (19,) * 8,
)


@register_model
def inception_transformer_small(pretrained: bool = False, **kwargs) -> InceptionTransformer:
    """iFormer-S at 224 px: 19.866M params, 4.85 GFLOPs, 83.4% ImageNet top-1 (official)."""
    model_args = dict(_SMALL, img_size=224)
    return _create_inception_transformer("inception_transformer_small", pretrained, **dict(model_args, **kwargs))


@register_model
def inception_transformer_base(pretrained: bool = False, **kwargs) -> InceptionTransformer:
    """iFormer-B at 224 px: 47.866M params, 9.38 GFLOPs, 84.6% ImageNet top-1 (official)."""
    model_args = dict(_BASE, img_size=224)
    return _create_inception_transformer("inception_transformer_base", pretrained, **dict(model_args, **kwargs))


@register_model
def inception_transformer_large(pretrained: bool = False, **kwargs) -> InceptionTransformer:
    """iFormer-L at 224 px: 86.637M params, 14.05 GFLOPs, 84.8% ImageNet top-1 (official)."""
    model_args = dict(_LARGE, img_size=224)
    return _create_inception_transformer("inception_transformer_large", pretrained, **dict(model_args, **kwargs))


@register_model
def inception_transformer_small_384(pretrained: bool = False, **kwargs) -> InceptionTransformer:
    """iFormer-S fine-tuned at 384 px: 20.900M params, 16.1 GFLOPs, 84.6% top-1 (official)."""
    model_args = dict(_SMALL, img_size=384)
    return _create_inception_transformer("inception_transformer_small_384", pretrained, **dict(model_args, **kwargs))


@register_model
def inception_transformer_base_384(pretrained: bool = False, **kwargs) -> InceptionTransformer:
    """iFormer-B fine-tuned at 384 px: 48.936M params, 30.5 GFLOPs, 85.7% top-1 (official)."""
    model_args = dict(_BASE, img_size=384)
    return _create_inception_transformer("inception_transformer_base_384", pretrained, **dict(model_args, **kwargs))


@register_model
def inception_transformer_large_384(pretrained: bool = False, **kwargs) -> InceptionTransformer:
    """iFormer-L fine-tuned at 384 px: 87.744M params, 45.3 GFLOPs, 85.8% top-1 (official)."""
    model_args = dict(_LARGE, img_size=384)
    return _create_inception_transformer("inception_transformer_large_384", pretrained, **dict(model_args, **kwargs))


@register_model
def inception_transformer_tiny(pretrained: bool = False, **kwargs) -> InceptionTransformer:
    """A CPU-sized iFormer for 32-64 px inputs (no official weights), defaults: 32 px, 10 classes.

    Widths are half of iFormer-S (48/96/160/192) with head dim 16, so every stage keeps iFormer-S's head count
    (3/6/10/12) and its frequency ramp carries over unchanged in head units: 1 of 3 heads attend in stage 1 (2/3 of
    the channels high-frequency), 3 of 6 in stage 2, 7 then 9 of 10 in stage 3 (iFormer-S's two steps, one block
    each), 11 of 12 in stage 4. Depths (1, 1, 2, 1) keep it small enough to train on a CPU.
    """
    model_args = dict(
        depths=(1, 1, 2, 1), embed_dims=(48, 96, 160, 192), num_heads=(3, 6, 10, 12),
        attention_heads=(1, 3, 7, 9, 11), img_size=32,
    )
    return _create_inception_transformer("inception_transformer_tiny", pretrained, **dict(model_args, **kwargs))


# Leaves for every torch.fx tracer, not only timm's (torchvision's create_feature_extractor, torch.fx.symbolic_trace):
# these functions branch on sizes, dtypes or the kernel in use; torch.fx.wrap patches this module's globals in a trace.
for _leaf in ("check_input_size", "add_pos_embed", "linear", "gelu_mlp", "mlp_in_row_chunks"):
    torch.fx.wrap(_leaf)
