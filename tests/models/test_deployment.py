"""Beyond the official release: ONNX export (dynamic batch, onnxruntime) and the FPN detection backbone."""

from __future__ import annotations

import onnx
import pytest
import timm
import torch
from torchvision.models.detection import FasterRCNN, MaskRCNN

from vitlab.models import IFormerFPN, export_onnx, iformer_fpn_backbone


def test_onnx_export_has_a_dynamic_batch_and_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("inception_transformer_tiny", num_classes=7).eval()
    path = export_onnx(model, tmp_path / "tiny.onnx", (3, 64, 64))  # 64 != img_size 32: resized position embeddings
    graph = onnx.load(str(path)).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert graph.input[0].name == "images" and graph.output[0].name == "logits"
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 64, 64]  # symbolic batch, fixed image size

    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = torch.randn(batch, 3, 64, 64)
        (out,) = session.run(["logits"], {"images": x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(out), model(x), rtol=0, atol=1e-4)


def test_onnx_export_rejects_training_mode_and_bad_sizes(tmp_path):
    model = timm.create_model("inception_transformer_tiny")
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        export_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        export_onnx(model.eval(), tmp_path / "m.onnx", (64, 64))
    with pytest.raises(FileNotFoundError, match="create it first"):
        export_onnx(model, tmp_path / "absent" / "m.onnx")


def test_fpn_backbone_maps_and_strides():
    backbone = iformer_fpn_backbone("inception_transformer_tiny", out_channels=32).eval()
    with torch.no_grad():
        maps = backbone(torch.randn(2, 3, 64, 96))
    assert backbone.out_channels == 32 and list(maps) == ["0", "1", "2", "3", "pool"]
    assert [tuple(m.shape) for m in maps.values()] == [
        (2, 32, 16, 24), (2, 32, 8, 12), (2, 32, 4, 6), (2, 32, 2, 3), (2, 32, 1, 2)
    ]
    with pytest.raises(ValueError, match="not an Inception Transformer"):
        iformer_fpn_backbone("resnet18")
    with pytest.raises(ValueError, match="features_only is set by"):
        iformer_fpn_backbone("inception_transformer_tiny", features_only=False)


def test_onnx_export_traces_the_model_channels_and_refuses_bad_targets_up_front(tmp_path):
    grey = timm.create_model("inception_transformer_tiny", in_chans=1).eval()
    graph = onnx.load(str(export_onnx(grey, tmp_path / "grey.onnx"))).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == [1, 32, 32]  # not cfg's 3
    model = timm.create_model("inception_transformer_tiny").eval()
    with pytest.raises(TypeError, match="needs an nn.Module"):
        export_onnx("model", tmp_path / "m.onnx")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        export_onnx(model, tmp_path)
    with pytest.raises(ValueError, match="cannot take a 72x72 input"):  # the model's own message, not the exporter's
        export_onnx(model, tmp_path / "m.onnx", (3, 72, 72))
    with pytest.raises(ValueError, match="positive int sizes"):
        export_onnx(model, tmp_path / "m.onnx", (3, 32.0, 32))
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"out_indices": (3, 1)}, r"distinct and increasing .* pass \[1, 3\]"),
    ({"out_indices": (1, 1)}, "distinct and increasing"),
    ({"out_indices": 3}, "non-empty sequence of stage indices"),
    ({"out_indices": (0, 4)}, "non-empty sequence of stage indices in 0..3"),
    ({"out_channels": "256"}, "out_channels must be a positive int"),
    ({"trainable_layers": 5}, "trainable_layers must be None"),
    ({"name": None}, "not an Inception Transformer"),
])
def test_fpn_backbone_refuses_bad_arguments_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        iformer_fpn_backbone(**{"name": "inception_transformer_tiny", **kwargs})


def test_fpn_backbone_trainable_layers_freezes_the_early_stages_as_torchvision_does():
    def trainable_parts(layers):
        backbone = iformer_fpn_backbone("inception_transformer_tiny", out_channels=16, trainable_layers=layers)
        return sorted({n.split(".")[2] for n, p in backbone.named_parameters() if p.requires_grad
                       and n.startswith("body.")}), all(p.requires_grad for p in backbone.fpn.parameters())

    assert trainable_parts(1) == (["blocks4", "patch_embed4", "pos_embed4"], True)
    assert trainable_parts(0) == ([], True)
    assert len(trainable_parts(4)[0]) == len(trainable_parts(None)[0]) == 12


def test_fpn_backbone_refuses_pretrained_weights_that_miss_tensors(tmp_path):
    full = timm.create_model("inception_transformer_tiny").state_dict()
    good, partial, unrelated = tmp_path / "good.pth", tmp_path / "partial.pth", tmp_path / "unrelated.pth"
    torch.save(full, good)
    torch.save({k: v for k, v in full.items() if not k.startswith("blocks4.")}, partial)
    torch.save({"foo.weight": torch.zeros(3)}, unrelated)

    def build(path):
        return iformer_fpn_backbone("inception_transformer_tiny", out_channels=16, pretrained=True,
                                    pretrained_cfg_overlay=dict(file=str(path)))

    backbone = build(good)
    torch.testing.assert_close(backbone.body.model.blocks4[0].norm1.weight, full["blocks4.0.norm1.weight"])
    with pytest.raises(ValueError, match=r"do not fit inception_transformer_tiny \(missing \(19\): blocks4\.0"):
        build(partial)
    with pytest.raises(ValueError, match=r"unexpected \(1\): foo.weight"):
        build(unrelated)
    with pytest.raises(ValueError, match="do not fit .*pretrained_cfg_overlay=dict\\(file=PATH\\)"):
        iformer_fpn_backbone("inception_transformer_tiny", pretrained=True)  # vitlab ships no weights


def _targets(masks: bool) -> list[dict[str, torch.Tensor]]:
    targets = []
    per_image = [([[4.0, 6.0, 40.0, 50.0]], [1]), ([[10.0, 8.0, 30.0, 60.0], [40.0, 20.0, 90.0, 56.0]], [2, 1])]
    for boxes, labels in per_image:
        target = {"boxes": torch.tensor(boxes), "labels": torch.tensor(labels)}
        if masks:
            target["masks"] = torch.zeros(len(labels), 64, 96, dtype=torch.uint8)
            for k, (x0, y0, x1, y1) in enumerate(boxes):
                target["masks"][k, int(y0):int(y1), int(x0):int(x1)] = 1
        targets.append(target)
    return targets


@pytest.mark.parametrize("detector, masks", [(FasterRCNN, False), (MaskRCNN, True)])
def test_torchvision_detectors_train_and_predict_on_the_backbone(detector, masks):
    torch.manual_seed(0)
    backbone = iformer_fpn_backbone("inception_transformer_tiny", out_channels=32)
    model = detector(backbone, num_classes=3, min_size=64, max_size=96, rpn_batch_size_per_image=32,
                     box_batch_size_per_image=32)
    images = [torch.rand(3, 64, 96), torch.rand(3, 64, 96)]
    losses = model(images, _targets(masks))
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} <= losses.keys()
    assert ("loss_mask" in losses) == masks
    sum(losses.values()).backward()
    stem = backbone.body.model.patch_embed.proj1.weight.grad  # the loss reaches the iFormer's first layer
    assert stem is not None and stem.abs().sum() > 0 and all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        predictions = model(images)
    assert len(predictions) == 2 and all(p["boxes"].shape[1:] == (4,) for p in predictions)


def test_a_detector_on_the_backbone_scripts_as_torchvisions_own_do():
    """torchvision's detectors are scriptable (``torch.jit.script(model)`` for deployment); the FPN backbone's
    forward was not (a string annotation and a generator expression), so the whole detector refused to script."""
    torch.manual_seed(0)
    backbone = iformer_fpn_backbone("inception_transformer_tiny", out_channels=32).eval()
    model = FasterRCNN(backbone, num_classes=3, min_size=64, max_size=96).eval()
    scripted = torch.jit.script(model)
    images = [torch.rand(3, 64, 96)]
    with torch.no_grad(), pytest.warns(UserWarning, match="always returns a"):
        _, scripted_predictions = scripted(images)
    with torch.no_grad():
        eager_predictions = model(images)
        maps, scripted_maps = backbone(images[0][None]), torch.jit.script(backbone)(images[0][None])
    assert list(scripted_maps) == list(maps) == ["0", "1", "2", "3", "pool"]
    for key in maps:
        torch.testing.assert_close(scripted_maps[key], maps[key], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scripted_predictions[0]["scores"], eager_predictions[0]["scores"], rtol=1e-4,
                               atol=1e-5)


def test_the_fpn_refuses_a_body_that_returns_a_dict():
    body = timm.create_model("inception_transformer_tiny", features_only=True, feature_cls="dict")
    with pytest.raises(TypeError, match="list of feature maps"):
        IFormerFPN(body, 16)(torch.randn(1, 3, 64, 64))
