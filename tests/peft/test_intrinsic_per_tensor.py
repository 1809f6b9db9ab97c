"""Per-tensor projection normalisation (Aghajanyan et al.) vs the global form (Li et al.), which keeps its numbers."""

from __future__ import annotations

import math

import pytest
import scipy.linalg
import torch
from torch import nn

from vitlab.peft.intrinsic import (
    DenseProjection,
    FastfoodProjection,
    PerTensorFastfoodProjection,
    SubspaceConfig,
    wrap_in_subspace,
)


def _base() -> nn.Module:
    """3,987 parameters in 8 tensors, among them a 192-number bias (as in a ViT-Tiny)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 192), nn.Linear(192, 3))


def _explicit_blocks(sizes: list[int], dim: int, seed: int) -> torch.Tensor:
    """P [D, d] built independently: per block (H G Π H B)[:D_i, :d] / sqrt(D_i ΣG²), draws block after block."""
    gen, m, rows = torch.Generator().manual_seed(seed), 2 ** math.ceil(math.log2(dim)), []
    for size in sizes:
        padded = max(2 ** math.ceil(math.log2(size)), m)
        signs = (torch.randint(0, 2, (padded,), generator=gen, dtype=torch.int8) * 2 - 1).double()
        perm = torch.randperm(padded, generator=gen)
        gains = torch.randn(padded, generator=gen).double()
        h = torch.tensor(scipy.linalg.hadamard(padded), dtype=torch.float64)
        permutation = torch.zeros(padded, padded, dtype=torch.float64)
        permutation[torch.arange(padded), perm] = 1.0
        full = h @ torch.diag(gains) @ permutation @ h @ torch.diag(signs)
        rows.append(full[:size, :dim] / math.sqrt(size * gains.square().sum()))
    return torch.cat(rows)


def _materialise(projection: nn.Module, dim: int) -> torch.Tensor:
    return projection(torch.eye(dim, dtype=torch.float64)).T  # [D, d], batched input


@pytest.mark.parametrize(("sizes", "dim", "seed"), [([100, 37, 64], 13, 3), ([8, 300], 40, 0), ([5, 5, 5], 15, 2),
                                                    ([192], 1, 7)])
def test_per_tensor_fastfood_equals_its_explicit_block_matrix(sizes, dim, seed):
    proj = PerTensorFastfoodProjection(sizes, dim, seed).double()
    torch.testing.assert_close(_materialise(proj, dim), _explicit_blocks(sizes, dim, seed), rtol=1e-6, atol=1e-6)


def test_per_tensor_gradient_is_the_transpose():
    proj = PerTensorFastfoodProjection([300, 20, 64, 7], 24, seed=5).double()
    theta = torch.randn(24, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(391, dtype=torch.float64)
    (proj(theta) @ upstream).backward()
    torch.testing.assert_close(theta.grad, _materialise(proj, 24).T @ upstream)


@pytest.mark.parametrize("projection", ["fastfood", "dense"])
def test_every_tensor_gets_unit_norm_columns_including_a_192_number_bias(projection):
    model = wrap_in_subspace(_base(), SubspaceConfig(dim=32, projection=projection, seed=1))
    matrix = model.projection(torch.eye(32)).T  # [D, d]
    sizes = {s.name: s.numel for s in model.segments}
    assert sizes["2.bias"] == 192 and len(sizes) == 6
    for (name, size), block in zip(sizes.items(), matrix.split(list(sizes.values())), strict=True):
        norms = block.norm(dim=0)
        if projection == "dense":
            torch.testing.assert_close(norms, torch.ones(32))  # exact
        else:  # unit norm in expectation: the mean squared norm is 1, each column close to 1 unless the block is tiny
            assert norms.square().mean().item() == pytest.approx(1, abs=0.02), name
            if size >= 128:
                assert ((norms - 1).abs() < 0.1).all(), (name, norms)
            if size == 128:  # a power of two at least d: exactly 1
                torch.testing.assert_close(norms, torch.ones(32))
    # the global form: the bias's columns are tiny, about sqrt(192 / 3987) ≈ 0.22 (0.006 in a 5M-parameter ViT)
    global_model = wrap_in_subspace(_base(), SubspaceConfig(dim=32, projection=projection, projection_norm="global"))
    bias = dict(zip(sizes, global_model.projection(torch.eye(32)).T.split(list(sizes.values())), strict=True))["2.bias"]
    assert 0.1 < bias.norm(dim=0).mean().item() < 0.35


def test_fastfood_block_norms_concentrate_at_one_on_a_larger_layout():
    sizes = [192, 192 * 576, 576, 192 * 192, 192, 192 * 768, 768, 10 * 192, 10]
    proj = PerTensorFastfoodProjection(sizes, 64, seed=0)
    for size, block in zip(sizes, proj(torch.eye(64)).T.split(sizes), strict=True):
        norms = block.norm(dim=0)
        assert abs(norms.mean().item() - 1) < (0.2 if size < 100 else 0.06), (size, norms.mean())


# P·θ_d of the global form, recorded before projection_norm existed (SubspaceConfig(dim=20, seed=3) on _base()
# with θ_d = linspace(-1, 1, 20)): the global option must reproduce these numbers exactly
_GLOBAL = {
    "fastfood": ("9706afea91bd375ce1d213cbe9b749208457c89ea97cb509e8053c33f35373c5",
                 [-0.03742354363203049, -0.05297020450234413, -0.06476008147001266, 0.008124803192913532],
                 5.28920847887639),
    "dense": ("a06b79bc680d4da81dcaf6c6f7b929f895520d9aadd442138db5e9742345f42d",
              [-0.007099569775164127, 0.08820293098688126, 0.007166087161749601, -0.018284790217876434],
              1.1690702908672392),
}


@pytest.mark.parametrize("projection", ["fastfood", "dense"])
def test_global_option_reproduces_the_numbers_of_before(projection):
    checksum, values, total = _GLOBAL[projection]
    model = wrap_in_subspace(_base(), SubspaceConfig(dim=20, projection=projection, seed=3, projection_norm="global"))
    assert isinstance(model.projection, FastfoodProjection if projection == "fastfood" else DenseProjection)
    vector = model.projection(torch.linspace(-1, 1, 20))
    assert bytes(model.projection.checksum.tolist()).hex() == checksum
    assert vector[[0, 100, 2000, 3986]].tolist() == pytest.approx(values, rel=1e-6, abs=1e-9)
    assert vector.double().sum().item() == pytest.approx(total, rel=1e-5)
    per_tensor = wrap_in_subspace(_base(), SubspaceConfig(dim=20, projection=projection, seed=3))
    assert bytes(per_tensor.projection.checksum.tolist()).hex() != checksum  # another P, another checksum


def test_per_tensor_is_the_default_and_a_checkpoint_of_the_other_form_is_refused():
    assert SubspaceConfig(dim=4).projection_norm == "per_tensor"
    with pytest.raises(ValueError, match="projection_norm must be one of"):
        SubspaceConfig(dim=4, projection_norm="layer")
    old = wrap_in_subspace(_base(), SubspaceConfig(dim=20, projection_norm="global"))
    new = wrap_in_subspace(_base(), SubspaceConfig(dim=20))
    with pytest.raises(ValueError, match="projection_norm='global'"):
        new.load_state_dict(old.state_dict())


def test_per_tensor_model_starts_as_the_base_and_trains_theta_d_with_said():
    base = _base()
    x = torch.randn(5, 8)
    expected = base(x)
    model = wrap_in_subspace(base, SubspaceConfig(dim=30, said=True))
    torch.testing.assert_close(model(x), expected)
    model(x).square().sum().backward()
    assert model.theta_d.grad.abs().sum() > 0 and model.theta_d.numel() == 30 - len(model.segments)


def test_blocks_are_checked():
    with pytest.raises(ValueError, match="positive block sizes"):
        PerTensorFastfoodProjection([4, 0], 2)
    with pytest.raises(ValueError, match="add up to 9 numbers but D=10"):
        DenseProjection(10, 2, blocks=[4, 5])
    with pytest.raises(ValueError, match="exceeds the D=6"):
        PerTensorFastfoodProjection([3, 3], 7)


def test_a_per_tensor_fastfood_built_for_a_device_keeps_every_working_buffer_there():
    # the group index was made on the CPU, so a projection built on a GPU failed in its first forward
    proj = PerTensorFastfoodProjection([300, 20, 64, 7], 24, seed=5, device="meta")
    working = {name: buffer.device.type for name, buffer in proj.named_buffers() if name not in ("seed", "checksum")}
    assert any(name.endswith("member_index") for name in working)
    assert set(working.values()) == {"meta"}, working
