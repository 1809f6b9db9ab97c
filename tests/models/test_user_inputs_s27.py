"""Users' inputs to the vitlab models that used to fail deep inside timm / torch or do the wrong thing silently."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import vitlab  # noqa: F401  (registers the models)
from vitlab.checkpoint import MissingWeightsError, load_pretrained, save_checkpoint
from vitlab.errors import ConfigError
from vitlab.models import export_onnx, iformer_fpn_backbone
from vitlab.models.flops import count_flops

VIT = "vit_vitlab_tiny_patch8_32"


@pytest.mark.parametrize(("kwargs", "named"), [
    (dict(img_size=32.0), "img_size"),
    (dict(img_size=(32,)), "img_size"),
    (dict(img_size=-32), "img_size"),
    (dict(depth="6"), "depth"),
    (dict(num_heads=0), "num_heads"),
    (dict(num_heads=3), "divisible by num_heads=3"),
    (dict(mlp_ratio=-1.0), "mlp_ratio"),
    (dict(mlp_ratio=0), "mlp_ratio"),
    (dict(global_pool="bogus"), "global_pool must be one of"),
    (dict(global_pool="token"), "class_token=True"),
])
def test_vit_refuses_bad_sizes_naming_the_keyword(kwargs, named):
    """timm failed with TypeError / IndexError / ZeroDivisionError / AssertionError deep inside its constructor."""
    with pytest.raises(ConfigError, match=named):
        timm.create_model(VIT, **kwargs)


def test_vit_accepts_valid_sizes_and_token_pool_with_class_token():
    model = timm.create_model(VIT, img_size=(32, 48), class_token=True, global_pool="token", num_heads=8).eval()
    assert model(torch.zeros(2, 3, 32, 48)).shape == (2, 10)
    assert model.blocks[0].attn.num_heads == 8


@pytest.mark.parametrize(("global_pool", "match"), [
    ("token", "class_token=True"), ("catavgmax", "global_pool must be one of"), ("map", "build a new model"),
])
def test_vit_reset_classifier_refuses_pools_it_cannot_build(global_pool, match):
    model = timm.create_model(VIT)
    with pytest.raises(ValueError, match=match):
        model.reset_classifier(3, global_pool=global_pool)
    assert model.global_pool == "avg" and model.num_classes == 10  # untouched


def test_vit_reset_classifier_can_drop_attention_pooling_as_timm_does():
    model = timm.create_model(VIT, global_pool="map").eval()
    model.reset_classifier(3, global_pool="max")
    assert model.attn_pool is None and model.global_pool == "max"
    features = model.forward_features(torch.zeros(1, 3, 32, 32))
    assert torch.equal(model(torch.zeros(1, 3, 32, 32)), model.head(model.fc_norm(features.amax(dim=1))))


def test_fpn_backbone_takes_torchvisions_returned_layers():
    """torchvision's resnet_fpn_backbone keyword reached InceptionTransformer.__init__ as an unexpected keyword."""
    backbone = iformer_fpn_backbone("inception_transformer_tiny", returned_layers=[2, 3, 4], out_channels=16)
    assert backbone.body.feature_info.reduction() == [8, 16, 32]
    maps = backbone(torch.zeros(1, 3, 64, 64))
    assert [tuple(v.shape[-2:]) for v in maps.values()] == [(8, 8), (4, 4), (2, 2), (1, 1)]  # + the "pool" map


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(returned_layers=[0, 1]), "stage numbers in 1..4"),
    (dict(returned_layers=[]), "non-empty"),
    (dict(returned_layers=4), "sequence"),
    (dict(returned_layers=[2, 3], out_indices=(1, 2)), "not both"),
])
def test_fpn_backbone_refuses_bad_returned_layers(kwargs, match):
    with pytest.raises(ValueError, match=match):
        iformer_fpn_backbone("inception_transformer_tiny", **kwargs)


def test_the_fix_the_image_errors_name_feeds_a_one_channel_model_of_another_size():
    """The messages named create_transform(**resolve_model_data_config(model)), which makes the registered 3-channel
    32-px images (the source weights' pretrained_cfg, which timm never changes); resolve_input_data_config makes the
    model's own size and channels."""
    model = timm.create_model(VIT, img_size=64, in_chans=1).eval()
    with pytest.raises(ValueError, match="takes 64x64 images") as size_error:
        model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(TypeError, match="x.float") as dtype_error:
        model(torch.zeros(1, 1, 64, 64, dtype=torch.uint8))
    for error in (size_error, dtype_error):
        assert "resolve_input_data_config(model)" in str(error.value)
    transform = timm.data.create_transform(**timm.data.resolve_input_data_config(model))
    image = Image.fromarray(np.arange(80 * 100, dtype=np.uint8).reshape(80, 100))
    assert model(transform(image).unsqueeze(0)).shape == (1, 10)
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)  # the source metadata stays


def test_rgb_weights_still_load_into_a_one_channel_model(tmp_path):
    """timm's loader checks the first conv against pretrained_cfg['input_size'][0]: it must stay the weights'."""
    source = timm.create_model(VIT)
    path = save_checkpoint(tmp_path / "rgb.safetensors", source.state_dict(), kind="model", model_name=VIT,
                           model_kwargs={})
    model = load_pretrained(timm.create_model(VIT, in_chans=1), str(path))
    expected = source.patch_embed.proj.weight.sum(dim=1, keepdim=True)  # timm's adapt_input_conv for 1 channel
    assert torch.allclose(model.patch_embed.proj.weight, expected)


@pytest.mark.parametrize("feature_cls", ["dict", "hook"])
def test_other_feature_classes_still_build(feature_cls):
    features = timm.create_model("inception_transformer_tiny", features_only=True, feature_cls=feature_cls)
    assert features.feature_info.reduction() == [4, 8, 16, 32]


@pytest.mark.parametrize(("name", "kwargs", "traced"), [
    (VIT, dict(img_size=48, in_chans=1), (2, 1, 48, 48)),  # refused: the model's size error for 32-px input
    ("inception_transformer_tiny", dict(img_size=64), (2, 3, 64, 64)),  # silently traced at the registered 32 px
])
def test_export_onnx_traces_the_size_the_model_was_built_for(monkeypatch, tmp_path, name, kwargs, traced):
    shapes = []
    monkeypatch.setattr(torch.onnx, "export", lambda model, args, *rest, **options: shapes.append(args[0].shape))
    export_onnx(timm.create_model(name, **kwargs).eval(), tmp_path / "model.onnx", check=False)
    assert shapes == [traced]


@pytest.mark.parametrize(("name", "input_size", "message"), [
    (VIT, (1, 32, 32), "got shape [1, 1, 32, 32];"),
    ("inception_transformer_tiny", (3, 33, 33), "cannot take a 33x33 input: the stage-1 and stage-2 maps (9, 9)"),
])
def test_count_flops_reports_the_models_refusal_with_plain_sizes(name, input_size, message):
    """Under fvcore's trace the sizes printed as tensors: 'got shape [tensor(1), tensor(1), ...]'."""
    with pytest.raises(ValueError) as error:
        count_flops(timm.create_model(name), input_size)
    assert message in str(error.value) and "tensor(" not in str(error.value)


def test_pretrained_true_without_network_names_the_local_file_route(monkeypatch):
    """timm.create_model('inception_transformer_small', pretrained=True) offline ended in urllib's URLError."""
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", offline)
    with torch.device("meta"), pytest.raises(MissingWeightsError, match="pretrained_cfg_overlay=dict") as error:
        timm.create_model("inception_transformer_small", pretrained=True)
    assert "iformer_small.pth" in str(error.value) and isinstance(error.value, FileNotFoundError)


def test_fpn_frozen_stages_keep_their_batch_norm_statistics():
    """trainable_layers froze the weights, but in train mode the frozen stages' BatchNorms still normalised with
    batch statistics and updated their running ones (torchvision's frozen backbones use FrozenBatchNorm2d)."""
    backbone = iformer_fpn_backbone("inception_transformer_tiny", trainable_layers=2, out_channels=16)
    model = torch.nn.Sequential(backbone).train()  # a detector's train() reaches the backbone the same way
    frozen, trainable = backbone.body.model.patch_embed.norm1, backbone.body.model.patch_embed4.norm
    before = frozen.running_mean.clone(), trainable.running_mean.clone()
    backbone(torch.randn(2, 3, 64, 64))
    assert not frozen.training and torch.equal(frozen.running_mean, before[0])
    assert trainable.training and not torch.equal(trainable.running_mean, before[1])
    assert backbone.training and backbone.fpn.training
    model.eval()
    assert not trainable.training


def test_vit_set_input_size_checks_its_sizes():
    """set_input_size(img_size='64') failed with "unsupported operand type(s) for //: 'str' and 'int'"."""
    model = timm.create_model(VIT).eval()
    for bad, named in (("64", "img_size"), ((64, 0), "img_size"), (64.0, "img_size")):
        with pytest.raises(ConfigError, match=named):
            model.set_input_size(img_size=bad)
    with pytest.raises(ConfigError, match="patch_size"):
        model.set_input_size(patch_size=-8)
    assert model.patch_embed.img_size == (32, 32)  # untouched
    model.set_input_size(img_size=(64, 48))
    assert model(torch.zeros(1, 3, 64, 48)).shape == (1, 10) and model.pos_embed.shape[1] == 8 * 6
