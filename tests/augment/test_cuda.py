"""The patch transforms on a CUDA batch (``pytest -m cuda``): the same views as on the CPU, bit for bit.

On the GPU the transforms take other code paths than on the CPU: a full permutation is gathered instead of scattered,
runs of pixels are reinterpreted as wider elements of the device, and CUDA generators draw on the device. Each test
compares the GPU result with the CPU result of the same parameters (pixel moves are bit copies: exact equality).
``VITLAB_TEST_CUDA_DEVICE=cpu pytest -m cuda`` runs the same code on the CPU.
"""

import pytest
import torch

from vitlab.augment import KINDS, NegativeViews, PatchInfill, PatchRotate, PatchShuffle, remap_cells

pytestmark = pytest.mark.cuda

TRANSFORMS = {
    "shuffle": lambda **kw: PatchShuffle(4, **kw),
    "rotate": lambda **kw: PatchRotate(4, **kw),
    "infill": lambda **kw: PatchInfill(4, **kw),
    "views": lambda **kw: NegativeViews(KINDS, 4, **kw),
}


def _images(dtype, shape=(8, 3, 16, 16)):
    """Seeded CPU images of ``shape`` in ``dtype`` (uint8 in [0, 255], floats in [0, 1))."""
    g = torch.Generator().manual_seed(1)
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    return torch.rand(shape, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
@pytest.mark.parametrize("options", [{}, {"p": 0.5}, {"same_on_batch": True}])
@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_device_batch_gives_the_cpu_views_for_the_same_seed(cuda_device, name, options, dtype):
    x = _images(dtype)
    t = TRANSFORMS[name](**options)
    y = t(x.to(cuda_device), generator=torch.Generator().manual_seed(0))
    params = t.last_params
    expected = t(x, generator=torch.Generator().manual_seed(0))
    assert y.device.type == cuda_device.type and y.dtype == dtype and y.shape == x.shape
    for key, value in params.items():  # a CPU generator draws the same parameters whatever the images' device
        assert torch.equal(value.cpu(), t.last_params[key].cpu()), key
    assert torch.equal(y.cpu(), expected)
    reference = remap_cells(x.to(cuda_device), 4, params["source"], params["rotation"])  # the plain gather
    assert torch.equal(y, reference)
    changed = (y.cpu() != x).flatten(1).any(dim=1)
    assert torch.equal(changed, params["applied"].cpu())  # transformed samples change, the others pass unchanged


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_channels_last_device_batch_stays_channels_last(cuda_device, name, dtype):
    x = _images(dtype)
    t = TRANSFORMS[name]()
    y = t(x.to(cuda_device, memory_format=torch.channels_last), generator=torch.Generator().manual_seed(0))
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    assert y.device.type == cuda_device.type and y.dtype == dtype
    assert torch.equal(y.cpu(), t(x, params=t.last_params))
    assert not torch.equal(y.cpu(), x)


@pytest.mark.parametrize(("dtype", "patch_size"), [(torch.float32, 4), (torch.bfloat16, 8), (torch.uint8, 4)])
def test_unaligned_device_views_move_the_right_bytes(cuda_device, dtype, patch_size):
    """A slice of a larger batch starts off the wide elements' alignment: the fast path must fall back to narrower
    ones (16-byte runs would otherwise be read as misaligned complex128 on the GPU)."""
    storage = _images(dtype, (9, 2, 16, 16)).to(cuda_device)
    x = storage.flatten()[1 : 1 + 8 * 2 * 16 * 16].view(8, 2, 16, 16)  # storage offset of one element
    assert x.storage_offset() == 1
    t = PatchShuffle(patch_size)
    y = t(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, remap_cells(x, patch_size, t.last_params["source"]))
    assert torch.equal(y.cpu(), t(x.cpu(), params=t.last_params))


@pytest.mark.parametrize("name", ["shuffle", "rotate", "views"])
def test_device_generator_draws_on_the_device_and_replays_on_the_cpu(cuda_device, name):
    x = _images(torch.float32).to(cuda_device)
    t = TRANSFORMS[name]()
    y = t(x, generator=torch.Generator(device=cuda_device).manual_seed(0))
    params = t.last_params
    assert all(v.device.type == cuda_device.type for k, v in params.items() if k != "grid")
    assert torch.equal(t(x, generator=torch.Generator(device=cuda_device).manual_seed(0)), y)  # seeded: repeatable
    assert torch.equal(y.cpu(), t(x.cpu(), params=params))  # device params replay on a CPU batch
    if name == "views":
        assert sorted(params["kind"].unique().tolist()) == [0, 1, 2]  # 8 samples, seed 0: every kind drawn
    else:
        assert torch.equal(t.inverse(y, params=params), x)  # P-Shuffle / P-Rotate invert exactly on the device


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_gradient_through_device_views_equals_the_cpu_gradient(cuda_device, name):
    """With autograd recording, the views are the differentiable gather: the gradient routes each output pixel's
    weight back to its source pixel (P-Infill sums several copies of a border cell)."""
    x = _images(torch.float32)
    weight = torch.rand(x.shape, generator=torch.Generator().manual_seed(2))
    t = TRANSFORMS[name]()
    on_device = x.to(cuda_device, copy=True).requires_grad_(True)
    (t(on_device, generator=torch.Generator().manual_seed(0)) * weight.to(cuda_device)).sum().backward()
    on_cpu = x.clone().requires_grad_(True)
    (t(on_cpu, params=t.last_params) * weight).sum().backward()
    assert on_device.grad.device.type == cuda_device.type
    torch.testing.assert_close(on_device.grad.cpu(), on_cpu.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(on_cpu.grad.sum(), weight.sum())  # each output pixel has exactly one source
