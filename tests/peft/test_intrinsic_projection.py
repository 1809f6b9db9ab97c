"""Walsh–Hadamard transform and the seeded dense / Fastfood projections of vitlab.peft.intrinsic."""

import math

import pytest
import scipy.linalg
import torch

from vitlab.peft.intrinsic import (
    DenseProjection,
    FastfoodProjection,
    PerTensorFastfoodProjection,
    SubspaceConfig,
    fwht,
    wrap_in_subspace,
)


@pytest.mark.parametrize("backend", ["matmul", "butterfly"])
@pytest.mark.parametrize("n", [1, 2, 8, 64, 256])
def test_fwht_matches_scipy_hadamard(backend, n):
    x = torch.randn(3, n, dtype=torch.float64)
    expected = x @ torch.tensor(scipy.linalg.hadamard(n), dtype=torch.float64)
    torch.testing.assert_close(fwht(x, backend=backend), expected)


@pytest.mark.parametrize("n", [2**10, 2**15])  # two and three matmul blocks (the batched middle block)
def test_fwht_is_its_own_inverse_up_to_scale(n):
    x = torch.randn(2, n, dtype=torch.float64)
    torch.testing.assert_close(fwht(fwht(x)), n * x)
    torch.testing.assert_close(fwht(x, "matmul"), fwht(x, "butterfly"))


def test_fwht_gradient_is_the_transform_of_the_gradient():
    x = torch.randn(2, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fwht, (x,))


@pytest.mark.parametrize(("x", "backend", "error", "match"), [
    (torch.randn(6), "auto", ValueError, "power of two"),
    (torch.arange(4), "auto", TypeError, "floating"),
    (torch.randn(4), "fft", ValueError, "backend must be one of"),
    (torch.randn(4), "cuda", (ImportError, ValueError), "cuda"),
])
def test_fwht_rejects_bad_input(x, backend, error, match):
    with pytest.raises(error, match=match):
        fwht(x, backend)


def _explicit_fastfood(num_params, dim, seed):
    """The Fastfood matrix built independently: (H G Π H B)[:D, :d] / sqrt(D ΣG²), draws in the documented order."""
    padded = 2 ** math.ceil(math.log2(num_params))
    gen = torch.Generator().manual_seed(seed)
    signs = (torch.randint(0, 2, (padded,), generator=gen, dtype=torch.int8) * 2 - 1).double()
    perm = torch.randperm(padded, generator=gen)
    gains = torch.randn(padded, generator=gen).double()
    h = torch.tensor(scipy.linalg.hadamard(padded), dtype=torch.float64)
    permutation = torch.zeros(padded, padded, dtype=torch.float64)
    permutation[torch.arange(padded), perm] = 1.0  # (Π v)[i] = v[perm[i]]
    full = h @ torch.diag(gains) @ permutation @ h @ torch.diag(signs)
    return full[:num_params, :dim] / math.sqrt(num_params * gains.square().sum())


@pytest.mark.parametrize(("num_params", "dim", "seed"), [(100, 13, 3), (64, 64, 0), (37, 1, 7), (200, 100, 1)])
def test_fastfood_equals_its_explicit_matrix_column_by_column(num_params, dim, seed):
    proj = FastfoodProjection(num_params, dim, seed).double()
    columns = torch.stack([proj(e) for e in torch.eye(dim, dtype=torch.float64)], dim=1)  # materialise P [D, d]
    torch.testing.assert_close(columns, _explicit_fastfood(num_params, dim, seed), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(proj(torch.eye(dim, dtype=torch.float64)).T, columns)  # batched input


def test_fastfood_gradient_is_the_transpose():
    proj = FastfoodProjection(300, 20, seed=5).double()
    theta = torch.randn(20, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(300, dtype=torch.float64)
    (proj(theta) @ upstream).backward()
    matrix = proj(torch.eye(20, dtype=torch.float64)).T
    torch.testing.assert_close(theta.grad, matrix.T @ upstream)


def test_column_norms_are_one():
    fastfood = FastfoodProjection(5000, 64, seed=0)
    norms = fastfood(torch.eye(64)).norm(dim=1)
    assert abs(norms.mean().item() - 1.0) < 0.02 and norms.std().item() < 0.05
    dense = DenseProjection(500, 16, seed=0)
    torch.testing.assert_close(dense.matrix.norm(dim=0), torch.ones(16))


@pytest.mark.parametrize("cls", [FastfoodProjection, DenseProjection])
def test_same_seed_same_projection(cls):
    theta = torch.randn(10)
    a, b, c = cls(300, 10, seed=1), cls(300, 10, seed=1), cls(300, 10, seed=2)
    assert torch.equal(a(theta), b(theta)) and torch.equal(a.checksum, b.checksum)
    assert not torch.allclose(a(theta), c(theta)) and not torch.equal(a.checksum, c.checksum)
    assert int(a.seed) == 1 and a.checksum.dtype == torch.uint8 and a.checksum.any()


def test_dense_refuses_when_it_would_not_fit():
    with pytest.raises(MemoryError, match=r"needs 0\.75 GiB.*projection='fastfood'"):
        DenseProjection(200_000, 1000, max_bytes=2**20)


def test_dim_larger_than_the_subspace_is_refused():
    with pytest.raises(ValueError, match="exceeds the D=10"):
        FastfoodProjection(10, 11)


PROJECTIONS = {
    "dense": lambda **kw: DenseProjection(300, 10, seed=4, **kw),
    "dense_per_tensor": lambda **kw: DenseProjection(300, 10, seed=4, blocks=[200, 100], **kw),
    "fastfood": lambda **kw: FastfoodProjection(300, 10, seed=4, **kw),
    "fastfood_per_tensor": lambda **kw: PerTensorFastfoodProjection([200, 64, 36], 10, seed=4, **kw),
}


@pytest.mark.filterwarnings("ignore:for (seed|checksum). copying from a non-meta")
@pytest.mark.parametrize("kind", sorted(PROJECTIONS))
def test_a_projection_built_for_a_device_keeps_seed_and_checksum_there_too(kind):
    # seed and checksum stayed on the CPU: a projection built on a GPU had CPU buffers in its state dict (plain DDP
    # broadcasts every buffer over NCCL, which refuses CPU tensors)
    cpu, meta = PROJECTIONS[kind](), PROJECTIONS[kind](device="meta")
    devices = {name: t.device.type for name, t in meta.named_buffers()}
    assert devices == {name: "meta" for name, _ in cpu.named_buffers()}
    assert repr(meta) == repr(cpu) and "seed=4" in repr(meta)  # read without touching the meta buffers
    meta.load_state_dict(cpu.state_dict())  # the seed and checksum checks still compare real values
    other = PROJECTIONS[kind]()
    other.seed.fill_(5)
    with pytest.raises(ValueError, match=r"seed mismatch.*SubspaceConfig\(seed=5\)"):
        meta.load_state_dict(other.state_dict())
    other = PROJECTIONS[kind]()
    other.checksum[0] ^= 1
    with pytest.raises(ValueError, match="checksum of the regenerated projection mismatch"):
        meta.load_state_dict(other.state_dict())


def test_a_model_wrapped_on_the_meta_device_has_every_tensor_there():
    import timm

    with torch.device("meta"):
        base = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2,
                                 num_heads=2, num_classes=10)
    wrapped = wrap_in_subspace(base, SubspaceConfig(dim=16))
    off = [name for name, t in [*wrapped.named_parameters(), *wrapped.named_buffers()] if not t.is_meta]
    assert off == []
