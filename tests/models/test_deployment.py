"""Beyond the official release: ONNX export (dynamic batch, onnxruntime) and the FPN detection backbone."""

from __future__ import annotations

import onnx
import pytest
import timm
import torch
from torchvision.models.detection import FasterRCNN, MaskRCNN

from vitlab.models import export_onnx, iformer_fpn_backbone


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
