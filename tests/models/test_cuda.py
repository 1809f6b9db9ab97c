"""The models on a CUDA GPU: same numbers as on the CPU, bf16 autocast, channels-last, compile, the detection backbone.

Marked ``cuda`` (deselected by default): ``pytest -m cuda tests/models/test_cuda.py`` on a GPU machine, or
``VITLAB_TEST_CUDA_DEVICE=cpu pytest -m cuda ...`` to run the same code on the CPU.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torchvision.models.detection import FasterRCNN

from vitlab.models import iformer_fpn_backbone

from .conftest import small_model

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("exact_float32")]  # float32 compared to ~1e-5



def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float().cpu() - expected.float().cpu()).norm() / expected.float().cpu().norm()).item()


@pytest.mark.parametrize("name, size", [("inception_transformer_small", 224), ("vit_vitlab_tiny_patch8_32", 32)])
def test_registered_models_give_the_cpu_outputs_and_gradients_on_the_gpu(cuda_device, name, size):
    torch.manual_seed(0)
    cpu_model = timm.create_model(name, num_classes=7).eval()
    gpu_model = copy.deepcopy(cpu_model).to(cuda_device)
    x = torch.randn(2, 3, size, size)
    cpu_out = cpu_model(x)
    gpu_out = gpu_model(x.to(cuda_device))
    assert gpu_out.device.type == cuda_device.type and gpu_out.dtype == torch.float32
    assert torch.allclose(gpu_out.cpu(), cpu_out, atol=1e-4, rtol=1e-4)
    cpu_out.square().sum().backward()
    gpu_out.square().sum().backward()
    for (param_name, cpu_param), gpu_param in zip(cpu_model.named_parameters(), gpu_model.parameters(), strict=True):
        assert _relative_error(gpu_param.grad, cpu_param.grad) < 1e-3, param_name


def test_bf16_autocast_training_step_is_finite_and_close_to_float32(cuda_device):
    torch.manual_seed(0)
    model = small_model(drop_path_rate=0.0).to(cuda_device).train()
    x = torch.randn(4, 3, 32, 32, device=cuda_device)
    reference = model(x)
    with torch.autocast(cuda_device.type, dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    assert _relative_error(out, reference) < 0.05  # bf16 keeps 8 bits of mantissa
    out.float().logsumexp(-1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_channels_last_gives_the_same_outputs(cuda_device):
    torch.manual_seed(0)
    model = small_model().to(cuda_device).eval()
    x = torch.randn(3, 3, 32, 32, device=cuda_device)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    assert torch.allclose(model(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-5, rtol=1e-5)


def test_feature_maps_on_the_gpu_match_the_cpu(cuda_device):
    torch.manual_seed(0)
    cpu_model = timm.create_model("inception_transformer_tiny", features_only=True, img_size=64).eval()
    gpu_model = copy.deepcopy(cpu_model).to(cuda_device)
    x = torch.randn(1, 3, 64, 64)
    cpu_maps, gpu_maps = cpu_model(x), gpu_model(x.to(cuda_device))
    assert [m.shape for m in gpu_maps] == [m.shape for m in cpu_maps] == [
        (1, c, 64 // s, 64 // s) for c, s in zip(cpu_model.feature_info.channels(), (4, 8, 16, 32), strict=True)]
    for cpu_map, gpu_map in zip(cpu_maps, gpu_maps, strict=True):
        assert torch.allclose(gpu_map.cpu(), cpu_map, atol=1e-4, rtol=1e-4)


def test_torch_compile_on_the_device_gives_the_eager_outputs(cuda_device):
    torch.manual_seed(0)
    model = small_model().to(cuda_device).eval()
    x = torch.randn(2, 3, 32, 32, device=cuda_device)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model)(x)
    assert torch.allclose(compiled, expected, atol=1e-4, rtol=1e-4)


def test_faster_rcnn_on_the_fpn_backbone_trains_on_the_device(cuda_device):
    torch.manual_seed(0)
    backbone = iformer_fpn_backbone("inception_transformer_tiny", out_channels=32)
    model = FasterRCNN(backbone, num_classes=3, min_size=64, max_size=96, rpn_batch_size_per_image=32,
                       box_batch_size_per_image=32).to(cuda_device)
    images = [torch.rand(3, 64, 96, device=cuda_device) for _ in range(2)]
    boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 90.0, 60.0]], device=cuda_device)
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 2], device=cuda_device)} for _ in range(2)]
    with torch.autocast(cuda_device.type, dtype=torch.bfloat16):
        losses = model(images, targets)
    assert all(torch.isfinite(v) and v.device.type == cuda_device.type for v in losses.values())
    sum(losses.values()).backward()
    stem = backbone.body.model.patch_embed.proj1.weight.grad
    assert stem is not None and torch.isfinite(stem).all() and stem.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        predictions = model(images)
    assert len(predictions) == 2 and all(p["boxes"].device.type == cuda_device.type for p in predictions)
