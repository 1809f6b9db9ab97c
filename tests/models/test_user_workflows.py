"""What a timm user does with vitlab's models, and the mistakes they make: loading saved weights by every timm route
(at another img_size / num_classes / in_chans), feeding images of the wrong type, passing bad keyword values. Each
mistake must give one error that names the fix, never a raw size-mismatch or dtype traceback."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer
from torch.nn.utils import prune
from torchvision.models.feature_extraction import create_feature_extractor

import vitlab  # noqa: F401  (registers the models)
from vitlab.errors import WeightsError
from vitlab.models.state_dict_shapes import StateDictShapeError

MODELS = ["inception_transformer_tiny", "vit_vitlab_tiny_patch8_32"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, tuple[dict[str, torch.Tensor], str]]:
    """Each model's 32-px, 10-class, RGB state dict, and the safetensors file it is saved in."""
    out = {}
    for name in MODELS:
        torch.manual_seed(0)
        state = {k: v.contiguous() for k, v in timm.create_model(name).state_dict().items()}
        path = tmp_path_factory.mktemp("weights") / f"{name}.safetensors"
        save_file(state, str(path))
        out[name] = state, str(path)
    return out


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("kwargs, why, fix", [
    (dict(img_size=64), "img_size=32", "build the model with the checkpoint's img_size"),
    (dict(num_classes=5), "the checkpoint has 10 classes", "pass num_classes=10"),
    (dict(in_chans=1), "the checkpoint takes 3-channel images", "pass in_chans=3"),
])
def test_strict_loads_of_another_configuration_name_the_argument_and_the_pretrained_path(saved, name, kwargs, why,
                                                                                          fix):
    state, path = saved[name]
    loads = [
        lambda: timm.create_model(name, checkpoint_path=path, **kwargs),
        lambda: timm.models.load_checkpoint(timm.create_model(name, **kwargs), path),
        lambda: timm.create_model(name, **kwargs).load_state_dict(state, strict=False),
    ]
    for load in loads:
        with pytest.raises(StateDictShapeError, match=why) as info:
            load()
        message = str(info.value)
        assert fix in message and "pretrained=True, pretrained_cfg_overlay=dict(file=PATH)" in message
        assert isinstance(info.value, RuntimeError) and isinstance(info.value, WeightsError)  # torch's type kept


def test_a_checkpoint_of_another_variant_is_refused_as_one(saved):
    state, _ = saved["inception_transformer_tiny"]
    wider = timm.create_model("inception_transformer_tiny", embed_dims=(48, 96, 160, 256), num_heads=(3, 6, 10, 16),
                              attention_heads=(1, 3, 7, 9, 15))
    with pytest.raises(StateDictShapeError, match=r"\(25 tensor\(s\) of another shape\)") as info:
        wider.load_state_dict(state)
    assert "... and 13 more" in str(info.value) and "build the model variant" in str(info.value)


def test_the_pretrained_path_adapts_size_classes_and_channels_as_timm_does(saved):
    state, path = saved["inception_transformer_tiny"]
    overlay = dict(pretrained=True, pretrained_cfg_overlay=dict(file=path))
    native = timm.create_model("inception_transformer_tiny").eval()
    native.load_state_dict(state)
    # 64 px: resized position embeddings give what the 32-px model computes (it resizes them at forward time)
    big = timm.create_model("inception_transformer_tiny", img_size=64, **overlay).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(big(x), native(x), rtol=1e-5, atol=1e-5)
    # another class count: the body is loaded and a fresh head is made; 1 channel: timm sums the RGB filters
    five = timm.create_model("inception_transformer_tiny", num_classes=5, in_chans=1, **overlay)
    assert five.head.out_features == 5
    torch.testing.assert_close(five.blocks4[0].mlp.fc1.weight, state["blocks4.0.mlp.fc1.weight"])
    torch.testing.assert_close(five.patch_embed.proj1.weight, state["patch_embed.proj1.weight"].sum(1, keepdim=True))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("images, message", [
    (lambda: torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8), r"got torch.uint8: convert them, e.g. x.float"),
    (lambda: torch.zeros(2, 3, 32, 32, dtype=torch.int8), r"got torch.int8: convert them"),
    (lambda: np.zeros((2, 3, 32, 32), np.float32), r"torch.Tensor \(B, C, H, W\), got a ndarray"),
    (lambda: torch.zeros(2, 3, 32, 32, dtype=torch.float16), r"pass x.to\(torch.float32\)"),
    (lambda: torch.zeros(3, 32, 32), r"got shape \[3, 32, 32\]; pass images as a 4-D batch"),
    (lambda: torch.zeros(2, 1, 32, 32), r"expected input \(B, 3, H, W\)"),
])
def test_bad_images_are_refused_naming_the_conversion(name, images, message):
    model = timm.create_model(name).eval()
    with pytest.raises((TypeError, ValueError), match=message):
        model(images())


@pytest.mark.parametrize("name", MODELS)
def test_a_bfloat16_model_takes_float32_images_under_autocast_only(name):
    model = timm.create_model(name).eval().to(torch.bfloat16)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(TypeError, match=r"run it under torch.autocast"):
        model(x)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        assert model(x).dtype == torch.bfloat16


def test_the_vit_names_its_image_size_and_dynamic_img_size():
    model = timm.create_model("vit_vitlab_tiny_patch8_32").eval()
    with pytest.raises(ValueError, match=r"takes 32x32 images, got 32x48: .* img_size=\(32, 48\) or dynamic_img_size"):
        model(torch.zeros(1, 3, 32, 48))
    dynamic = timm.create_model("vit_vitlab_tiny_patch8_32", dynamic_img_size=True).eval()
    assert dynamic(torch.zeros(1, 3, 32, 48)).shape == (1, 10)
    with pytest.raises(ValueError, match=r"not a multiple of the patch size 8x8: .* dynamic_img_pad=True"):
        dynamic(torch.zeros(1, 3, 32, 44))


def test_the_vit_is_timms_vision_transformer_with_the_same_parameters_and_outputs():
    torch.manual_seed(0)
    ours = timm.create_model("vit_vitlab_tiny_patch8_32").eval()
    assert isinstance(ours, VisionTransformer)
    theirs = VisionTransformer(img_size=32, patch_size=8, embed_dim=128, depth=6, num_heads=4, mlp_ratio=3.0,
                               global_pool="avg", class_token=False, fc_norm=False, num_classes=10).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


@pytest.mark.parametrize("num_classes", [-1, "5", 2.0, True, None])
def test_reset_classifier_refuses_a_bad_class_count(num_classes):
    model = timm.create_model("inception_transformer_tiny")
    with pytest.raises(ValueError, match="num_classes must be an int >= 0"):
        model.reset_classifier(num_classes)
    assert model.head.out_features == 10  # unchanged


@pytest.mark.parametrize("global_pool", ["max", "avgmax", "token", 3])
def test_timm_pools_the_iformer_does_not_offer_are_refused_naming_the_alternative(global_pool):
    model = timm.create_model("inception_transformer_tiny")
    with pytest.raises(ValueError, match=r"global_pool must be 'avg'.*pool forward_features' \(B, H, W, C\) maps"):
        model.reset_classifier(5, global_pool)
    with pytest.raises(ValueError, match="global_pool must be 'avg'"):
        timm.create_model("inception_transformer_tiny", global_pool=global_pool)


@pytest.mark.parametrize("kwargs, message", [
    (dict(drop_path_rate=1.5), r"drop_path_rate must be a probability in \[0, 1\]"),
    (dict(drop_path_rate="0.1"), r"drop_path_rate must be a probability in \[0, 1\] .*, got '0.1'"),
    (dict(drop_rate=-1.0), r"drop_rate must be a probability in \[0, 1\]"),
    (dict(attn_drop_rate=2), r"attn_drop_rate must be a probability in \[0, 1\]"),
    (dict(mlp_ratio=0), "mlp_ratio must be a positive number"),
    (dict(mlp_ratio="4"), "mlp_ratio must be a positive number"),
    (dict(qkv_bias="no"), "qkv_bias must be True or False"),
    (dict(layer_scale_init_value="1e-6"), "layer_scale_init_value must be a number"),
])
def test_bad_hyperparameter_values_are_refused_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model("inception_transformer_tiny", **kwargs)


@pytest.mark.parametrize("name", MODELS)
def test_features_only_models_check_their_images_too(name):
    model = timm.create_model(name, features_only=True).eval()
    with pytest.raises(TypeError, match=r"got torch.uint8: convert them"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"got shape \[3, 32, 32\]; pass images as a 4-D batch"):
        model(torch.zeros(3, 32, 32))
    assert [f.shape[1] for f in model(torch.zeros(1, 3, 32, 32))] == model.feature_info.channels()


def test_a_training_batch_of_one_at_32_px_names_drop_last_and_larger_images():
    model = timm.create_model("inception_transformer_tiny").train()
    with pytest.raises(ValueError, match=r"batch of 1 image\(s\) leaves a 1x1 map .* drop_last=True.* model.eval\(\)"):
        model(torch.randn(1, 3, 32, 32))
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)  # a 2x2 map: BatchNorm has 4 values per channel
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_the_vit_checks_still_run_when_peft_wraps_its_patch_embedding():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(timm.create_model("vit_vitlab_tiny_patch8_32"),
                           LoraConfig(target_modules=["patch_embed.proj"], r=2))
    assert not hasattr(model.base_model.model.patch_embed.proj, "in_channels")  # a LoRA wrapper, not the Conv2d
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(TypeError, match="got torch.uint8: convert them"):
        model(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


@pytest.mark.parametrize("kwargs, message", [
    (dict(drop_path_rate=1.5), r"drop_path_rate must be a probability in \[0, 1\]"),
    (dict(drop_rate="0.1"), r"drop_rate must be a probability in \[0, 1\] .*, got '0.1'"),
    (dict(attn_drop_rate=-0.1), r"attn_drop_rate must be a probability in \[0, 1\]"),
])
def test_the_vit_refuses_rates_that_are_not_probabilities(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model("vit_vitlab_tiny_patch8_32", **kwargs)
    assert timm.create_model("vit_vitlab_tiny_patch8_32", drop_path_rate=0.5).blocks[-1].drop_path1.drop_prob == 0.5


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("features_only", [False, True])
def test_a_missing_pretrained_file_is_named(name, features_only, tmp_path):
    missing = tmp_path / "iformer_small.pth"
    with pytest.raises(FileNotFoundError, match=f"{name}: {missing} does not exist; pass the path of a local"):
        timm.create_model(name, pretrained=True, features_only=features_only,
                          pretrained_cfg_overlay=dict(file=str(missing)))


def test_the_vit_features_only_default_is_timms_last_three_blocks():
    model = timm.create_model("vit_vitlab_tiny_patch8_32", features_only=True).eval()
    reference = timm.create_model("vit_vitlab_tiny_patch8_32").eval()
    reference.load_state_dict(model.model.state_dict(), strict=False)  # the classifier is gone from the features
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        last_three = reference.forward_intermediates(x, indices=3, intermediates_only=True)
        feats = model(x)
    assert len(feats) == 3
    for f, ref in zip(feats, last_three, strict=True):
        torch.testing.assert_close(f, ref, rtol=0, atol=0)
    picked = timm.create_model("vit_vitlab_tiny_patch8_32", features_only=True, out_indices=(0, 5))
    assert picked.feature_info.out_indices == (0, 5)
    shallow = dict(depth=2, embed_dim=32, num_heads=2)  # fewer than 3 blocks: all of them
    assert len(timm.create_model("vit_vitlab_tiny_patch4_32", **shallow).blocks) == 2
    assert timm.create_model("vit_vitlab_tiny_patch4_32", features_only=True, **shallow).feature_info.out_indices \
        == (0, 1)


@pytest.mark.parametrize("out_indices", ["0", (), (0.5,), (6,), 7, True])
def test_the_vit_refuses_out_indices_that_name_no_blocks(out_indices):
    with pytest.raises(ValueError, match=r"out_indices must be an int n in 1..6 \(the last n blocks\) or a non-empty"):
        timm.create_model("vit_vitlab_tiny_patch8_32", features_only=True, out_indices=out_indices)
    last = timm.create_model("vit_vitlab_tiny_patch8_32", features_only=True, out_indices=(-1,))
    assert last.feature_info.channels() == [128]


@pytest.mark.parametrize("model", [
    lambda: timm.create_model("vit_vitlab_tiny_patch8_32"),
    lambda: timm.create_model("inception_transformer_tiny", features_only=True),
    lambda: "inception_transformer_tiny",
])
def test_load_official_checkpoint_refuses_other_kinds_of_model_naming_the_way(saved, model):
    from vitlab.models import load_official_checkpoint

    state, _ = saved["inception_transformer_tiny"]
    with pytest.raises(TypeError, match=r"loads into an InceptionTransformer, got a .* features_only=True, pretrained"):
        load_official_checkpoint(model(), state)


@pytest.mark.parametrize("name", MODELS)
def test_models_on_the_meta_device_name_a_dtype_mismatch(name):
    # torch.is_autocast_enabled("meta") raised a RuntimeError from inside the image check
    model = timm.create_model(name).to("meta").eval()
    with pytest.raises(TypeError, match=r"the images are torch.float16 but the model's weights are torch.float32"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.float16, device="meta"))
    assert model(torch.zeros(1, 3, 32, 32, device="meta")).device.type == "meta"


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("safe", [True, False])
def test_a_model_saved_for_the_hub_loads_from_its_local_folder(tmp_path, name, safe):
    # timm.create_model("local-dir:FOLDER") was refused: the pretrained-file check took the folder for a missing file
    model = timm.create_model(name, num_classes=7).eval()
    timm.models.save_for_hf(model, tmp_path, safe_serialization=safe)
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    x = torch.randn(2, *model.pretrained_cfg["input_size"])
    assert type(loaded) is type(model) and loaded.num_classes == 7
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_a_model_pushed_to_the_hub_loads_from_an_offline_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    model = timm.create_model("inception_transformer_tiny", num_classes=4).eval()
    snapshot = tmp_path / "cache" / "models--someone--iformer-tiny" / "snapshots" / ("0" * 40)
    timm.models.save_for_hf(model, snapshot)  # what timm.models.push_to_hf_hub uploads
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    loaded = timm.create_model("hf-hub:someone/iformer-tiny", pretrained=True).eval()
    x = torch.randn(1, *model.pretrained_cfg["input_size"])
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_a_local_dir_source_that_is_not_a_folder_is_named(tmp_path):
    cfg = {"source": "local-dir", "file": str(tmp_path / "missing")}
    with pytest.raises(FileNotFoundError, match=r"the folder .*missing does not exist; pass a folder written by "
                                                r"timm.models.save_for_hf"):
        timm.create_model("inception_transformer_tiny", pretrained=True, pretrained_cfg_overlay=cfg)


@pytest.mark.parametrize("name", MODELS)
def test_torchvisions_feature_extractor_and_plain_fx_trace_the_models(name):
    """torchvision's ``create_feature_extractor`` and ``torch.fx.symbolic_trace`` (not timm's tracer, which knows
    timm's leaf functions) traced timm's own models but stopped at vitlab's image checks with a misleading "got a
    Proxy" error. The graphs give the model's outputs and still check their images when run."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    extractor = create_feature_extractor(model, return_nodes={"norm": "features", "head": "logits"})
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        out, expected = extractor(x), model(x)
        torch.testing.assert_close(out["logits"], expected)
        torch.testing.assert_close(traced(x), expected)
        torch.testing.assert_close(out["features"], model.forward_features(x))
    with pytest.raises(TypeError, match="expected floating-point images"):
        extractor(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"expected input \(B, 3, H, W\)"):
        traced(torch.randn(2, 1, 32, 32))


def test_hooks_and_pruning_on_the_iformers_layers_take_effect():
    """The iFormer's fast paths read Linear / 1x1-conv / conv_fuse weights directly, so forward hooks on those layers
    (activation capture, per-sample-gradient tools) never fired and ``torch.nn.utils.prune`` (a pre-hook) was
    silently ignored. A hooked layer is now called; outputs are unchanged by a hook that returns None."""
    torch.manual_seed(0)
    model = timm.create_model("inception_transformer_tiny").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    seen: list[str] = []
    for name, layer in layers.items():
        layer.register_forward_hook(lambda module, args, out, name=name: seen.append(name))
    with torch.no_grad():
        hooked = model(x)
    assert sorted(set(seen)) == sorted(layers)  # 46 layers, conv_fuse, qkv and the MLPs included
    torch.testing.assert_close(hooked, reference, rtol=1e-5, atol=1e-5)

    pruned = timm.create_model("inception_transformer_tiny").eval()
    fc1 = pruned.blocks3[0].mlp.fc1
    prune.l1_unstructured(fc1, "weight", amount=0.5)
    with torch.no_grad():
        before = pruned(x)
        fc1.weight_orig.zero_()  # the pruned weight is recomputed from weight_orig before each forward
        after = pruned(x)
        fc1_out = []
        fc1.register_forward_hook(lambda module, args, out: fc1_out.append(out))
        pruned(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(fc1_out[0], fc1.bias.expand_as(fc1_out[0]))  # a zero weight leaves the bias


def test_a_peft_adapter_on_conv_fuse_takes_effect():
    """The folded residual conv read ``conv_fuse.weight`` (the base weight a peft LoRA layer exposes), so a LoRA
    adapter on ``conv_fuse`` changed nothing; the wrapped layer is now called."""
    torch.manual_seed(0)
    model = timm.create_model("inception_transformer_tiny").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        base = model(x)
    groups = model.blocks1[0].attn.conv_fuse.groups  # peft's LoRA on a depthwise conv needs r divisible by groups
    with pytest.warns(UserWarning, match="groups > 1"):
        wrapped = get_peft_model(model, LoraConfig(target_modules=["blocks1.0.attn.conv_fuse"], r=groups,
                                                   init_lora_weights=False))
    with torch.no_grad():
        adapted = wrapped(x)
        with wrapped.disable_adapter():
            disabled = wrapped(x)
    assert (adapted - base).abs().max() > 1e-3
    torch.testing.assert_close(disabled, base)
