"""timm's model contract for every vitlab model: output_fmt, feature shapes, features_only, TorchScript, torch.fx.

timm's own tests/test_models.py checks the same on every registered model; these tests keep it from regressing here
(tiny variants run on the CPU, the full-size ones on the meta device).
"""

from __future__ import annotations

import math
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import get_channel_dim, get_spatial_dim
from timm.models import create_feature_extractor, get_graph_node_names, model_entrypoint

import vitlab  # noqa: F401  (registers the models)
from vitlab.models.cpu_linear import onednn_linear

VITLAB_MODELS = sorted(n for n in timm.list_models() if model_entrypoint(n).__module__.startswith("vitlab."))
RUNNABLE = ["inception_transformer_tiny", "vit_vitlab_tiny_patch8_32", "vit_vitlab_tiny_patch4_32"]


def test_registry_lists_every_model_and_names_tell_the_patch_size():
    assert set(RUNNABLE) <= set(VITLAB_MODELS) and len(VITLAB_MODELS) == 9
    for name, patch in [("vit_vitlab_tiny_patch8_32", 8), ("vit_vitlab_tiny_patch4_32", 4)]:
        with torch.device("meta"):
            assert timm.create_model(name).patch_embed.patch_size == (patch, patch)


@pytest.mark.parametrize("alias, name", [("vitlab_vit_tiny_patch8_32", "vit_vitlab_tiny_patch8_32"),
                                         ("vitlab_vit_tiny_patch4_32", "vit_vitlab_tiny_patch4_32")])
def test_vitlab_spelling_of_the_names_builds_the_same_model(alias, name):
    assert alias not in timm.list_models()  # one listed name per model
    with pytest.warns(UserWarning, match=f"deprecated model name {alias} to current {name}"), torch.device("meta"):
        model = timm.create_model(alias)
    assert model.patch_embed.patch_size == timm.create_model(name, pretrained=False).patch_embed.patch_size


def test_deprecated_alias_builds_what_it_built_before():
    assert "vitlab_vit_tiny_32" not in timm.list_models()  # hidden from listings, still creatable
    with pytest.warns(UserWarning, match="deprecated model name vitlab_vit_tiny_32 to current vit_vitlab_tiny_patch4"):
        old = timm.create_model("vitlab_vit_tiny_32", num_classes=10, in_chans=1)
    new = timm.create_model("vit_vitlab_tiny_patch4_32", num_classes=10, in_chans=1)
    assert old.patch_embed.patch_size == (4, 4)  # the old default: checkpoints saved under the old name load
    assert {k: v.shape for k, v in old.state_dict().items()} == {k: v.shape for k, v in new.state_dict().items()}
    new.load_state_dict(old.state_dict())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(new.eval()(x), old.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", VITLAB_MODELS)
def test_forward_features_follow_output_fmt_and_pool_size(name):
    with torch.device("meta"):
        model = timm.create_model(name).eval()
        cfg = model.pretrained_cfg
        feats = model.forward_features(torch.empty(1, *cfg["input_size"]))
    if name.startswith("vit_"):  # token output (B, N, C), no prefix tokens: timm's non-spatial group
        assert getattr(model, "output_fmt", "NLC") == "NLC" and feats.shape[-1] == model.num_features
        return
    assert model.output_fmt == "NHWC"
    spatial, channel = get_spatial_dim(model.output_fmt), get_channel_dim(model.output_fmt)
    assert tuple(feats.shape[i] for i in spatial) == tuple(cfg["pool_size"])
    assert feats.shape[channel] == model.num_features == model.head_hidden_size


@pytest.mark.parametrize("name", VITLAB_MODELS)
def test_features_only_matches_feature_info(name):
    with torch.device("meta"):
        model = timm.create_model(name, features_only=True).eval()
        h, w = (64, 96) if name.startswith("inception") else (32, 32)
        feats = model(torch.empty(2, 3, h, w))
    assert len(feats) == len(model.feature_info.channels()) == (3 if name.startswith("vit_") else 4)
    for f, c, r in zip(feats, model.feature_info.channels(), model.feature_info.reduction(), strict=True):
        assert tuple(f.shape) == (2, c, math.ceil(h / r), math.ceil(w / r))


@pytest.mark.parametrize("name", RUNNABLE)
def test_torchscript_matches_eager(name):
    model = timm.create_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's own deprecation notice
        scripted = torch.jit.script(model)
    with torch.no_grad():
        with onednn_linear(False):  # TorchScript keeps PyTorch's own matrix-product kernel: equal bit for bit
            torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=0)
        torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=1e-5)  # eager through oneDNN
    if name.startswith("inception"):
        with pytest.raises(torch.jit.Error, match="multiple of 16"):  # the input check survives scripting
            scripted(torch.randn(1, 3, 72, 72))


@pytest.mark.parametrize("out_indices", [None, (1, 2)])
def test_features_only_iformer_scripts_and_matches_eager(out_indices):
    # (timm's own VisionTransformer.forward_intermediates does not script, so neither do the vitlab ViTs' wrappers)
    kwargs = {} if out_indices is None else {"out_indices": out_indices}
    model = timm.create_model("inception_transformer_tiny", features_only=True, **kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(model)
    with torch.no_grad(), onednn_linear(False):
        eager, maps = model(x), scripted(x)
    assert [m.shape[1] for m in maps] == model.feature_info.channels()
    for a, b in zip(maps, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_forward_intermediates_refuses_indices_of_the_wrong_type():
    model = timm.create_model("inception_transformer_tiny").eval()
    for bad in (2.0, "1", True, [1, "a"]):
        with pytest.raises(ValueError, match="indices must be None, an int n"):
            model.forward_intermediates(torch.randn(1, 3, 32, 32), indices=bad)


def test_jit_trace_passes_its_own_check_in_grad_mode_and_matches_eager():
    model = timm.create_model("inception_transformer_tiny").eval()
    x = torch.randn(2, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, x)  # grad mode on: its check re-traces and compares the graphs
    other = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(traced(other), model(other), rtol=0, atol=1e-5)


def test_torchscript_after_pruning():
    model = timm.create_model("inception_transformer_tiny").eval()
    model.prune_intermediate_layers([1])
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(model)
    with torch.no_grad():
        assert scripted(x).shape == (2, 96)
        with onednn_linear(False):
            torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", RUNNABLE)
def test_fx_trace_gives_the_same_outputs_and_gradients(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7)
    _, eval_nodes = get_graph_node_names(model)
    traced = create_feature_extractor(model, return_nodes=[eval_nodes[-1]])
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 5])
    grads = []
    for module, out in ((model, lambda m: m(x)), (traced, lambda m: next(iter(m(x).values())))):
        module.train().zero_grad()
        torch.manual_seed(1)  # same dropout / drop-path draws
        logits = out(module)
        F.cross_entropy(logits, y).backward()
        grads.append({n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None})
        assert logits.shape == (2, 7)
    assert grads[1].keys() == grads[0].keys() == dict(model.named_parameters()).keys()  # every parameter learns
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=0, atol=0, msg=n)


def test_fx_graph_keeps_the_input_check_and_resizes_position_embeddings():
    model = timm.create_model("inception_transformer_tiny").eval()
    _, eval_nodes = get_graph_node_names(model)
    traced = create_feature_extractor(model, return_nodes=[eval_nodes[-1]])
    x = torch.randn(1, 3, 64, 48)  # not the native 32 px: the position embeddings are resized inside the leaf
    with torch.no_grad():
        torch.testing.assert_close(next(iter(traced(x).values())), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="multiple of 16"):
        traced(torch.randn(1, 3, 72, 72))
