"""Users' inputs to the vitlab models (round 2) that failed inside timm with a KeyError / bare AssertionError (which
``python -O`` skips), were taken silently, or were refused as an unexpected keyword."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import timm
import torch

import vitlab  # noqa: F401  (registers the models)
from vitlab.errors import ConfigError

VIT = "vit_vitlab_tiny_patch8_32"
IFORMER = "inception_transformer_tiny"
_SMALL_VIT = dict(depth=2, embed_dim=32, num_heads=2)


@pytest.mark.parametrize("call", ["forward_intermediates", "prune_intermediate_layers"])
@pytest.mark.parametrize("indices", [10, 0, -1, [10], [-3], [], "1", 1.0, True])
def test_vit_intermediate_indices_out_of_range_name_the_range(call, indices):
    """timm asserted ("last-n (10) is out of range") or failed on the type; now a ValueError naming 1..depth."""
    model = timm.create_model(VIT, **_SMALL_VIT)
    args = (torch.zeros(1, 3, 32, 32),) if call == "forward_intermediates" else ()
    with pytest.raises(ValueError, match=r"an int n in 1\.\.2 \(the last n blocks\).*\[-2, 2\)"):
        getattr(model, call)(*args, indices=indices)
    assert len(model.blocks) == 2  # nothing pruned


def test_vit_intermediates_valid_indices_and_bad_output_fmt():
    model = timm.create_model(VIT, **_SMALL_VIT).eval()
    x = torch.randn(1, 3, 32, 32)
    maps = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
    tokens = model.forward_intermediates(x, 1, output_fmt="NLC", intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(1, 32, 4, 4), (1, 32, 4, 4)]
    torch.testing.assert_close(tokens[0], maps[1].flatten(2).transpose(1, 2))
    with pytest.raises(ValueError, match="output_fmt must be 'NCHW'.*'NLC'.*got 'NHWC'"):
        model.forward_intermediates(x, output_fmt="NHWC")
    assert model.prune_intermediate_layers([0]) == [0] and len(model.blocks) == 1


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(act_layer="bogus"), "act_layer must be a timm activation name"),
    (dict(act_layer=3), "act_layer must be"),
    (dict(norm_layer="bogus"), "norm_layer must be a timm norm name"),
    (dict(embed_norm_layer="bogus"), "embed_norm_layer must be"),
    (dict(weight_init="bogus"), "weight_init must be one of .*'jax'"),
    (dict(pos_embed="bogus"), "pos_embed must be one of 'learn'"),
    (dict(reg_tokens=-1), "reg_tokens must be an int >= 0"),
    (dict(reg_tokens="2"), "reg_tokens must be an int >= 0"),
    (dict(class_token="no"), "class_token must be True or False"),
    (dict(no_embed_class="yes"), "no_embed_class must be True or False"),
    (dict(dynamic_img_size="yes"), "dynamic_img_size must be True or False"),
    (dict(fc_norm="no"), "fc_norm must be True or False"),
    (dict(init_values="a"), "init_values must be a finite number"),
    (dict(attn_layer="bogus"), "attn_layer must be one of"),
    (dict(block_fn="Block"), "block_fn must be a module class"),
])
def test_vit_refuses_bad_keywords_naming_them(kwargs, match):
    """timm raised KeyError('bogus'), a bare AssertionError, a negative-dimension RuntimeError, or (class_token='no')
    silently built a class token."""
    with pytest.raises(ConfigError, match=match):
        timm.create_model(VIT, **_SMALL_VIT, **kwargs)


@pytest.mark.parametrize(("kwargs", "check"), [
    (dict(act_layer="relu"), lambda m: isinstance(m.blocks[0].mlp.act, torch.nn.ReLU)),
    (dict(act_layer=torch.nn.SiLU), lambda m: isinstance(m.blocks[0].mlp.act, torch.nn.SiLU)),
    (dict(norm_layer="rmsnorm"), lambda m: type(m.blocks[0].norm1).__name__ == "RmsNorm"),
    (dict(norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-3)), lambda m: m.blocks[0].norm1.eps == 1e-3),
    (dict(weight_init="jax", pos_embed="none"), lambda m: m.pos_embed is None),
    (dict(reg_tokens=2, class_token=True, global_pool="token"), lambda m: m.num_prefix_tokens == 3),
    (dict(fc_norm=None, init_values=1e-5), lambda m: m.blocks[0].ls1.gamma[0].item() == pytest.approx(1e-5)),
])
def test_vit_keeps_accepting_timm_values(kwargs, check):
    model = timm.create_model(VIT, **_SMALL_VIT, **kwargs)
    assert check(model)


def test_output_stride_refused_where_the_model_cannot_dilate():
    """timm said "unexpected keyword argument 'output_stride'" even for the model's own stride."""
    with pytest.raises(ValueError, match="output_stride=16 is not possible.*4, 8, 16 and 32"):
        timm.create_model(IFORMER, features_only=True, output_stride=16)
    with pytest.raises(ValueError, match="output_stride=True is not possible"):
        timm.create_model(IFORMER, output_stride=True)
    with pytest.raises(ConfigError, match=r"output_stride=32 is not possible.*8x8 patch \(stride 8\)"):
        timm.create_model(VIT, **_SMALL_VIT, features_only=True, output_stride=32)


def test_output_stride_of_the_model_itself_is_accepted():
    backbone = timm.create_model(IFORMER, features_only=True, output_stride=32)
    assert backbone.feature_info.reduction() == [4, 8, 16, 32]
    assert [f.shape[-1] for f in backbone(torch.zeros(2, 3, 32, 32))] == [8, 4, 2, 1]
    vit = timm.create_model(VIT, **_SMALL_VIT, features_only=True, output_stride=8)
    assert vit.feature_info.reduction() == [8, 8]


def test_vit_takes_numpy_int_sizes_as_its_checks_promise():
    """The ViT's checks accepted np.int64 sizes, then timm failed on them ('numpy.int64' object is not iterable,
    'truth value of an array is ambiguous')."""
    model = timm.create_model(VIT, **_SMALL_VIT, img_size=np.int64(48), patch_size=np.int64(16))
    assert model.patch_embed.img_size == (48, 48) and model.patch_embed.patch_size == (16, 16)
    model.set_input_size(img_size=(np.int64(64), np.int64(32)))
    assert model.patch_embed.grid_size == (4, 2) and model.pos_embed.shape[1] == 8
    assert model(torch.zeros(1, 3, 64, 32)).shape == (1, 10)


def test_vit_refuses_a_native_size_of_partial_patches_it_would_refuse_as_input():
    """img_size=36 with 8-px patches built a model whose forward then refused every 36x36 image."""
    with pytest.raises(ConfigError, match=r"img_size=36 is not a multiple of patch_size=8.*pass img_size=32"):
        timm.create_model(VIT, **_SMALL_VIT, img_size=36)
    model = timm.create_model(VIT, **_SMALL_VIT)
    with pytest.raises(ConfigError, match=r"img_size=\(40, 36\) is not a multiple.*img_size=\(40, 32\)"):
        model.set_input_size(img_size=(40, 36))
    assert model.patch_embed.img_size == (32, 32)  # untouched
    with pytest.raises(ConfigError, match="dynamic_img_pad=True with dynamic_img_size=True"):
        timm.create_model(VIT, **_SMALL_VIT, img_size=36, dynamic_img_pad=True)  # timm: a token-count mismatch
    padded = timm.create_model(VIT, **_SMALL_VIT, img_size=36, dynamic_img_pad=True, dynamic_img_size=True)
    assert padded(torch.zeros(1, 3, 36, 36)).shape == (1, 10)


def test_iformer_takes_numpy_int_class_and_channel_counts_as_timm_models_do():
    """num_classes=labels.max() + 1 (np.int64) was refused as 'not an int' by the iFormer (timm's models take it)."""
    model = timm.create_model(IFORMER, num_classes=np.int64(5), in_chans=np.int64(1)).eval()
    assert type(model.num_classes) is int and type(model.in_chans) is int
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 5)
    model.reset_classifier(np.int32(3))
    assert model.head.out_features == 3 and type(model.num_classes) is int
    with pytest.raises(ValueError, match="num_classes must be an int >= 0"):
        model.reset_classifier(np.float64(3))
    with pytest.raises(ValueError, match="in_chans must be an int >= 1"):
        timm.create_model(IFORMER, in_chans=np.bool_(True))


def test_vit_takes_numpy_int_depth_and_refuses_intermediates_without_blocks():
    """depth=np.int64(2) passed the checks and failed in timm's drop-path schedule ('numpy.int64' object is not
    iterable); depth=0 asserted in timm's forward_intermediates ('last-n (0) is out of range (1 to 0)')."""
    model = timm.create_model(VIT, depth=np.int64(2), embed_dim=np.int64(32), num_heads=np.int64(2), features_only=True)
    assert [f.shape for f in model(torch.zeros(1, 3, 32, 32))] == [(1, 32, 4, 4)] * 2
    empty = timm.create_model(VIT, depth=0)
    with pytest.raises(ValueError, match=r"no blocks \(depth=0\).*depth >= 1"):
        empty.forward_intermediates(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"has none \(depth=0\): build it with depth >= 1"):
        timm.create_model(VIT, depth=0, features_only=True)
