"""Parameter-efficient fine-tuning on a CUDA GPU: KAdaptation and LoRA-QV through peft, and subspace training.

Marked ``cuda`` (deselected by default): ``pytest -m cuda tests/peft/test_cuda.py`` on a GPU machine, or
``VITLAB_TEST_CUDA_DEVICE=cpu pytest -m cuda ...`` to run the same code on the CPU.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from peft import PeftModel, get_peft_model
from torch import nn

from vitlab.peft import KAdaptationConfig, LoraQVConfig, SubspaceConfig, merge_subspace, wrap_in_subspace
from vitlab.peft.intrinsic.hadamard import fwht

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("exact_float32")]  # float32 compared to ~1e-5

CONFIGS = {"kadaptation": lambda: KAdaptationConfig(n=8), "lora_qv": lambda: LoraQVConfig(r=2)}



def timm_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                             num_classes=5).eval()


def perturb_trainable(model: nn.Module, seed: int = 1) -> None:
    """Move every trainable tensor off its initial value (an adapter starts as the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=gen).to(p.device))


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_adapter_on_the_gpu_gives_the_cpu_outputs_saves_and_loads_on_the_cpu(cuda_device, method, tmp_path):
    cpu_model = get_peft_model(timm_vit(), CONFIGS[method]())
    perturb_trainable(cpu_model)
    gpu_model = copy.deepcopy(cpu_model).to(cuda_device)
    x = torch.randn(3, 3, 32, 32)
    expected = cpu_model(x)
    with torch.no_grad():
        gpu_out = gpu_model(x.to(cuda_device))
    assert gpu_out.device.type == cuda_device.type
    assert torch.allclose(gpu_out.cpu(), expected, atol=1e-5, rtol=1e-5)

    gpu_model.save_pretrained(str(tmp_path))  # saved from the GPU, loaded on a CPU-only base
    loaded = PeftModel.from_pretrained(timm_vit(), str(tmp_path)).eval()
    assert torch.allclose(loaded(x), expected, atol=1e-5, rtol=1e-5)

    with torch.no_grad():
        merged = gpu_model.merge_and_unload()(x.to(cuda_device))
    assert torch.allclose(merged.cpu(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_bf16_training_steps_on_the_gpu_train_only_the_adapter(cuda_device, method):
    model = get_peft_model(timm_vit(), CONFIGS[method]()).to(cuda_device).train()
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    trained = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randn(4, 3, 32, 32, device=cuda_device)
    y = torch.tensor([0, 1, 2, 3], device=cuda_device)
    for _ in range(3):
        with torch.autocast(cuda_device.type, dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[name], value) for name, value in frozen.items())
    assert all(params[name].dtype == torch.float32 for name in trained)
    moved = [name for name, value in trained.items() if not torch.equal(params[name], value)]
    assert sorted(moved) == sorted(trained)  # every factor trains, the head too


@pytest.mark.parametrize("projection", ["fastfood", "dense"])
@pytest.mark.parametrize("tf32", [False, True])
def test_subspace_on_the_gpu_regenerates_the_cpu_projection(cuda_device, projection, tf32):
    torch.backends.cuda.matmul.allow_tf32 = tf32  # with TF32 on, the Hadamard transform switches to add/subtract
    config = SubspaceConfig(dim=64, projection=projection, seed=3)
    cpu_wrapped = wrap_in_subspace(timm_vit(), config)
    gpu_wrapped = wrap_in_subspace(timm_vit().to(cuda_device), config)  # P built directly on the device
    assert torch.equal(gpu_wrapped.projection.checksum.cpu(), cpu_wrapped.projection.checksum)
    theta = torch.randn(cpu_wrapped.theta_d.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cpu_wrapped.theta_d.copy_(theta)
    gpu_wrapped.load_state_dict(cpu_wrapped.state_dict())  # a CPU run's state resumes on the GPU
    expected = cpu_wrapped.subspace_parameters()
    for name, value in gpu_wrapped.subspace_parameters().items():
        assert value.device.type == cuda_device.type
        assert torch.allclose(value.cpu(), expected[name], atol=1e-5, rtol=1e-5), name
    torch.backends.cuda.matmul.allow_tf32 = False  # the merged model's own products in full float32
    x = torch.randn(2, 3, 32, 32)
    merged = merge_subspace(gpu_wrapped)
    with torch.no_grad():
        assert torch.allclose(merged(x.to(cuda_device)).cpu(), cpu_wrapped(x), atol=1e-4, rtol=1e-4)


def test_subspace_gradients_on_the_gpu_match_the_cpu(cuda_device):
    config = SubspaceConfig(dim=32, seed=0)
    cpu_wrapped = wrap_in_subspace(timm_vit(), config)
    gpu_wrapped = copy.deepcopy(cpu_wrapped).to(cuda_device)
    x = torch.randn(2, 3, 32, 32)
    cpu_wrapped(x).square().sum().backward()
    gpu_wrapped(x.to(cuda_device)).square().sum().backward()
    assert torch.allclose(gpu_wrapped.theta_d.grad.cpu(), cpu_wrapped.theta_d.grad, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("backend", ["matmul", "butterfly", "auto"])
def test_hadamard_transform_on_the_gpu_matches_the_cpu(cuda_device, backend):
    x = torch.randn(3, 1 << 12)
    expected = fwht(x, "butterfly")
    got = fwht(x.to(cuda_device), backend)
    assert got.device.type == cuda_device.type
    assert torch.allclose(got.cpu(), expected, atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("projection", ["fastfood", "dense"])
@pytest.mark.parametrize("norm", ["per_tensor", "global"])
def test_a_subspace_wrapped_on_the_gpu_keeps_every_tensor_there(cuda_device, projection, norm):
    # the projection's seed and checksum buffers stayed on the CPU (plain DDP broadcasts them over NCCL)
    wrapped = wrap_in_subspace(timm_vit().to(cuda_device),
                               SubspaceConfig(dim=16, projection=projection, projection_norm=norm))
    devices = {name: t.device.type for name, t in [*wrapped.named_parameters(), *wrapped.named_buffers()]}
    assert set(devices.values()) == {cuda_device.type}, devices
    cpu = wrap_in_subspace(timm_vit(), SubspaceConfig(dim=16, projection=projection, projection_norm=norm))
    assert torch.equal(wrapped.projection.checksum.cpu(), cpu.projection.checksum)
    wrapped.load_state_dict(cpu.state_dict())  # the seed/checksum checks compare across devices


def test_fit_classifier_trains_a_gpu_model_on_data_in_cpu_memory(cuda_device):
    from vitlab.peft.intrinsic.mnist_fc import MnistFC
    from vitlab.peft.intrinsic.trainer import FitSettings, fit_classifier

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g)
    y = (x[:, 0] > 0).long()
    settings = FitSettings(epochs=2, batch_size=16, lr=1e-2)
    expected = fit_classifier(MnistFC(16, hidden=(8,), num_classes=2), (x, y), (x, y), settings)
    model = MnistFC(16, hidden=(8,), num_classes=2).to(cuda_device)
    result = fit_classifier(model, (x, y), (x, y), settings)  # the batches stayed on the CPU: a device error
    assert next(model.parameters()).device.type == cuda_device.type
    assert result.history == pytest.approx(expected.history, abs=2 / 64)  # at most 2 of 64 predictions differ
