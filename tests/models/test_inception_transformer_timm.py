"""Inception Transformer: timm registry and model interface, dense features, compile/export, and a training run."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import set_fused_attn, use_fused_attn
from timm.models import get_pretrained_cfg, is_model_in_modules
from timm.optim import create_optimizer_v2

from tests.models.conftest import small_model
from vitlab.models.inception_transformer import LowMixer

VARIANTS = ["small", "base", "large"]


def test_registry_names_and_no_iformer_prefix():
    ours = {f"inception_transformer_{v}{r}" for v in VARIANTS for r in ("", "_384")} | {"inception_transformer_tiny"}
    assert set(timm.list_models("inception_transformer_*")) == ours
    assert all(is_model_in_modules(name, ["inception_transformer"]) for name in ours)
    # timm's own, unrelated iformer_* (mobile iFormer) must stay timm's
    assert not any(is_model_in_modules(name, ["inception_transformer"]) for name in timm.list_models("iformer*"))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("res", [224, 384])
def test_pretrained_cfg(variant, res):
    suffix = "_384" if res == 384 else ""
    cfg = get_pretrained_cfg(f"inception_transformer_{variant}{suffix}")
    assert cfg.url == f"https://huggingface.co/sail/dl2/resolve/main/iformer/iformer_{variant}{suffix}.pth"
    assert (cfg.input_size, cfg.crop_pct, cfg.interpolation) == ((3, res, res), 0.9 if res == 224 else 1.0, "bicubic")
    assert (cfg.mean, cfg.std, cfg.num_classes) == (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 1000)
    assert (cfg.first_conv, cfg.classifier, cfg.pool_size) == ("patch_embed.proj1", "head", (res // 32, res // 32))


def test_tiny_variant_size_and_grayscale_input():
    model = timm.create_model("inception_transformer_tiny", in_chans=1, num_classes=10)
    assert 1.0e6 < sum(p.numel() for p in model.parameters()) < 2.0e6
    assert model.patch_embed.proj1.in_channels == 1 and model.pos_embed1.shape == (1, 8, 8, 48)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_forward_features_head_and_reset_classifier():
    model = small_model().eval()
    x = torch.randn(2, 3, 32, 64)  # non-square
    feats = model.forward_features(x)
    assert feats.shape == (2, 1, 2, 128)
    pooled = model.forward_head(feats, pre_logits=True)
    torch.testing.assert_close(pooled, feats.mean(dim=(1, 2)))
    torch.testing.assert_close(model(x), model.get_classifier()(pooled))
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model(x).shape == (2, 3) and model.num_classes == 3
    model.reset_classifier(0)
    torch.testing.assert_close(model(x), pooled)
    model.reset_classifier(0, global_pool="")
    assert model(x).shape == (2, 1, 2, 128)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(0, global_pool="max")


def test_no_weight_decay_names_the_position_embeddings():
    model = small_model()
    names = model.no_weight_decay()
    assert names == {f"pos_embed{i}" for i in range(1, 5)} and names <= dict(model.named_parameters()).keys()
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)  # asks model.no_weight_decay()
    no_decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert all(id(getattr(model, name)) in no_decay for name in names)


def test_features_only_strides_and_shapes():
    model = timm.create_model("inception_transformer_tiny", features_only=True)
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == [48, 96, 160, 192]
    feats = model(torch.randn(2, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(2, c, 64 // r, 96 // r) for c, r in zip(
        [48, 96, 160, 192], [4, 8, 16, 32], strict=True)]


def test_forward_intermediates_and_pruning():
    model = small_model().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert [m.shape[1:] for m in maps] == [(32, 16, 16), (64, 8, 8), (96, 4, 4), (128, 2, 2)]
        last_two = model.forward_intermediates(x, indices=2, norm=True, intermediates_only=True)
        torch.testing.assert_close(last_two[1], final.permute(0, 3, 1, 2))
        torch.testing.assert_close(last_two[0], maps[2])
        nhwc = model.forward_intermediates(x, indices=[0], output_fmt="NHWC", intermediates_only=True)
        torch.testing.assert_close(nhwc[0], maps[0].permute(0, 2, 3, 1))
        assert model.prune_intermediate_layers([0, 1]) == [0, 1]
        pruned = model.forward_intermediates(x, intermediates_only=True)
    assert not any(k.startswith(("blocks3", "pos_embed4")) for k in model.state_dict())
    torch.testing.assert_close(pruned[1], maps[1])
    with pytest.raises(ValueError, match="indices"):
        model.forward_intermediates(x, indices=[5])


def test_stop_early_keeps_timms_result_form_features_then_maps():
    """timm's ``forward_intermediates(..., stop_early=True)`` still returns ``(features, maps)`` unless
    ``intermediates_only``: code written for timm's models unpacks it. A bare list would unpack silently wrong (the
    first map taken for the features, the second for the list)."""
    model = small_model().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        last_two_final, last_two = model.forward_intermediates(x, indices=2, stop_early=True)
        early, first_two = model.forward_intermediates(x, indices=[0, 1], stop_early=True)
        only = model.forward_intermediates(x, indices=[0, 1], stop_early=True, intermediates_only=True)
    torch.testing.assert_close(last_two_final, final)
    assert len(last_two) == 2
    torch.testing.assert_close(last_two[1], maps[3])
    assert isinstance(first_two, list) and len(first_two) == 2
    torch.testing.assert_close(early, maps[1].permute(0, 2, 3, 1))  # the last stage run, before any final norm
    assert isinstance(only, list) and len(only) == 2
    torch.testing.assert_close(only[1], maps[1])


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = small_model(layer_scale_init_value=0.5)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 3])
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        F.cross_entropy(model(x), y).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys() == dict(model.named_parameters()).keys()  # every parameter learns
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_unsupported_sizes_raise_one_clear_error():
    model = small_model()
    for bad in [(72, 72), (64, 40)]:  # ceil(72/8) = 9 and ceil(40/8) = 5 are odd
        with pytest.raises(ValueError, match="multiple of 16"):
            model(torch.randn(1, 3, *bad))
    with pytest.raises(ValueError, match="multiple of 16"):
        small_model(img_size=72)
    with pytest.raises(ValueError, match=r"expected input \(B, 3, H, W\)"):
        model(torch.randn(1, 1, 32, 32))
    assert model(torch.randn(1, 3, 16, 80)).shape == (1, 5)  # smallest height; odd stage-3/4 maps are fine


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(attention_heads=(1, 2, 3)), "one entry per block"),
        (dict(attention_heads=(2, 2, 3, 4)), r"attention_heads\[0\]=2"),
        (dict(num_heads=(3, 4, 6, 8)), "divisible"),
        (dict(depths=(1, 1, 1)), "4 entries"),
    ],
)
def test_invalid_configs_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_model(**kwargs)


def test_torch_compile_fullgraph_matches_eager():
    model = small_model().eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=1e-5)


def test_torch_export_matches_eager():
    model = small_model().eval()
    x = torch.randn(2, 3, 32, 48)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), rtol=0, atol=1e-5)


def test_short_training_run_learns():
    from sklearn import datasets
    digits = datasets.load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8)
    images = F.interpolate(images, scale_factor=2, mode="nearest")  # 16 x 16, the smallest size iFormer takes
    labels = torch.tensor(digits.target)
    torch.manual_seed(0)
    model = timm.create_model("inception_transformer_tiny", in_chans=1, num_classes=10, img_size=16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        idx = torch.randint(0, len(images), (32,), generator=generator)
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = losses[0], sum(losses[-5:]) / 5
    assert first > 2.0 and last < 0.5, losses  # from chance (ln 10 = 2.3) to clearly learned


@pytest.mark.parametrize("size", [64, (64, 96)])
def test_set_input_size_resamples_the_grids_as_the_forward_pass_does(size):
    model = small_model().eval()
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        before = model(x)  # the 32-px grids, resized at forward time
        model.set_input_size(img_size=size)
        after = model(x)  # the resampled grids, used as they are
    assert model.img_size == (h, w) and tuple(model.pos_embed1.shape[1:3]) == (h // 4, w // 4)
    assert torch.allclose(after, before, atol=1e-6)


def test_set_input_size_works_on_a_pruned_model_as_timms_features_only_wrapper_holds_it():
    """``features_only=True, out_indices=(0, 1)`` prunes stages 3-4 (their grids are gone): resizing the rest must
    not look for them."""
    torch.manual_seed(0)
    features = timm.create_model("inception_transformer_tiny", features_only=True, out_indices=(0, 1)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = features(x)
        features.model.set_input_size(64)
        after = features(x)
    assert not hasattr(features.model, "pos_embed3")
    assert tuple(features.model.pos_embed2.shape[1:3]) == (8, 8) and features.model.img_size == (64, 64)
    for a, b in zip(after, before, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_set_input_size_keeps_frozen_grids_frozen_and_refuses_sizes_the_model_cannot_take():
    model = small_model()
    model.requires_grad_(False)
    model.set_input_size(img_size=64)
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="cannot take a 72x72 input"):
        model.set_input_size(img_size=72)
    with pytest.raises(ValueError, match="img_size must be an int or"):
        model.set_input_size(img_size="64")
    assert model.img_size == (64, 64)  # unchanged by the refused calls
    model.set_input_size(None)
    assert model.img_size == (64, 64)


def test_timms_fused_attention_switch_gives_plain_attention_with_second_derivatives():
    """timm's ``set_fused_attn(False)`` (or ``TIMM_FUSED_ATTN=0``) is how timm users get attention without PyTorch's
    fused kernel, whose CPU version has no second derivative (gradient penalties, input-gradient regularisers). The
    iFormer ignored it; built under the switch it now uses plain ops with the same outputs."""
    torch.manual_seed(0)
    fused = small_model().eval()
    previous = use_fused_attn()
    set_fused_attn(False)
    try:
        plain = small_model().eval()
    finally:
        set_fused_attn(previous)
    plain.load_state_dict(fused.state_dict())
    mixers = [m for m in plain.modules() if isinstance(m, LowMixer)]
    assert len(mixers) == 4 and not any(getattr(m, "fused_attn", True) for m in mixers)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    torch.testing.assert_close(plain(x), fused(x), rtol=1e-5, atol=1e-5)
    (grad,) = torch.autograd.grad(plain(x).logsumexp(-1).sum(), x, create_graph=True)
    grad.square().sum().backward()  # the fused CPU kernel raises here
    assert x.grad is not None and x.grad.abs().sum() > 0
