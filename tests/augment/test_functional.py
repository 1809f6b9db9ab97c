"""Grid checks, the cell remap and the parameter generators."""

from __future__ import annotations

import pytest
import torch

from vitlab.augment import cell_grid, remap_cells, valid_patch_sizes
from vitlab.augment.functional import move_cells
from vitlab.augment.generators import (
    apply_probability,
    infill_layout,
    infill_sources,
    rotation_turns,
    shuffle_sources,
)
from vitlab.errors import ConfigError


def reference_remap(x: torch.Tensor, ps: int, source: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Loop over images and cells with torch.rot90: the obvious implementation."""
    out = torch.empty_like(x)
    cols = x.shape[-1] // ps
    for b in range(x.shape[0]):
        for n in range(source.shape[1]):
            r, c = divmod(n, cols)
            sr, sc = divmod(int(source[b, n]), cols)
            cell = x[b, :, sr * ps : (sr + 1) * ps, sc * ps : (sc + 1) * ps]
            out[b, :, r * ps : (r + 1) * ps, c * ps : (c + 1) * ps] = torch.rot90(cell, int(rotation[b, n]), (1, 2))
    return out


@pytest.mark.parametrize("shape,ps", [((3, 2, 12, 12), 4), ((2, 3, 8, 16), 4), ((1, 1, 6, 6), 3), ((2, 1, 5, 5), 5)])
def test_remap_matches_rot90_loop(shape, ps):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(shape, generator=g)
    cells = (shape[2] // ps) * (shape[3] // ps)
    source = torch.stack([torch.randperm(cells, generator=g) for _ in range(shape[0])])
    rotation = torch.randint(0, 4, (shape[0], cells), generator=g)
    assert torch.equal(remap_cells(x, ps, source, rotation), reference_remap(x, ps, source, rotation))
    assert torch.equal(remap_cells(x, ps, source), reference_remap(x, ps, source, torch.zeros_like(rotation)))


def test_remap_identity_and_dtypes():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    identity = torch.arange(4).repeat(2, 1)
    out = remap_cells(x, 4, identity, torch.zeros_like(identity))
    assert out.dtype == torch.uint8 and torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def random_images(shape: tuple[int, ...], dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """Random bytes viewed as ``dtype`` (float32: every bit pattern, NaN payloads included)."""
    size = torch.empty(0, dtype=dtype).element_size()
    return torch.randint(0, 256, (*shape[:-1], shape[-1] * size), dtype=torch.uint8, generator=g).view(dtype)


def fast_path_params(kind: str, batch: int, rows: int, cols: int, g: torch.Generator):
    """(source, rotation) of one kind of remap: each sends `move_cells` down another of its paths."""
    cells = rows * cols
    identity = torch.arange(cells).repeat(batch, 1)
    perm = torch.stack([torch.randperm(cells, generator=g) for _ in range(batch)])
    turns = torch.randint(0, 4, (batch, cells), generator=g)
    if kind == "shuffle":  # whole-grid permutation: wide scatter
        return perm, None
    if kind == "shuffle_zero_turns":
        return perm, torch.zeros_like(perm)
    if kind == "copies":  # not a permutation (duplicates) over the whole grid: wide gather
        return torch.randint(0, cells, (batch, cells), generator=g), None
    if kind == "infill":  # only an inner block changes: clone + gather of the block
        source = identity.view(batch, rows, cols).clone()
        source[:, 1:-1, 1:-1] = torch.randint(0, cells, (batch, rows - 2, cols - 2), generator=g)
        return source.view(batch, cells), None
    if kind == "rotate":  # turns in place: pixel gather from the turned-cell table
        return identity, turns
    if kind == "shuffle_rotate":  # moves and turns
        return perm, turns
    assert kind == "one_cell_turned"  # a one-cell box off the corner
    rotation = torch.zeros_like(identity)
    rotation[:, cols + 1] = 3
    return identity, rotation


FAST_KINDS = ["shuffle", "shuffle_zero_turns", "copies", "infill", "rotate", "shuffle_rotate", "one_cell_turned"]


@pytest.mark.parametrize("kind", FAST_KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.float64])
@pytest.mark.parametrize("shape,ps", [((3, 2, 12, 20), 4), ((2, 3, 24, 16), 8), ((2, 1, 9, 15), 3), ((2, 3, 8, 12), 1)])
def test_move_cells_equals_remap_cells_bit_for_bit(kind, dtype, shape, ps):
    g = torch.Generator().manual_seed(100 * FAST_KINDS.index(kind) + shape[2])
    x = random_images(shape, dtype, g)
    source, rotation = fast_path_params(kind, shape[0], shape[2] // ps, shape[3] // ps, g)
    before = x.clone()
    fast, reference = move_cells(x, ps, source, rotation), remap_cells(x, ps, source, rotation)
    assert fast.dtype == dtype and fast.shape == x.shape and fast.is_contiguous() and fast.data_ptr() != x.data_ptr()
    assert torch.equal(fast.view(torch.uint8), reference.view(torch.uint8))
    ints = {1: torch.uint8, 4: torch.int32, 8: torch.int64}[dtype.itemsize]  # integer copies: every bit, NaN payloads
    assert torch.equal(fast.view(torch.uint8), remap_cells(x.view(ints), ps, source, rotation).view(torch.uint8))
    assert torch.equal(x.view(torch.uint8), before.view(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_move_cells_half_precision(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 16, 24, generator=g).to(dtype)
    for kind in FAST_KINDS:
        source, rotation = fast_path_params(kind, 3, 4, 6, g)
        assert torch.equal(move_cells(x, 4, source, rotation), remap_cells(x, 4, source, rotation))


def test_move_cells_odd_layouts():
    g = torch.Generator().manual_seed(0)
    source = torch.stack([torch.randperm(12, generator=g) for _ in range(2)])
    rotation = torch.randint(0, 4, (2, 12), generator=g)
    base = torch.rand(3, 3, 16, 24, generator=g)
    misaligned = torch.rand(2 * 3 * 16 * 12 + 1, generator=g)[1:].view(2, 3, 16, 12)  # data_ptr % 16 != 0
    strided = base[1:, :, :, ::2]  # non-contiguous
    channels_last = base[:2, :, :, :12].contiguous(memory_format=torch.channels_last)
    for x in (misaligned, strided, channels_last):
        for rot in (None, rotation):
            assert torch.equal(move_cells(x, 4, source, rot), remap_cells(x, 4, source, rot))
    identity = torch.arange(12).repeat(2, 1)
    out = move_cells(misaligned, 4, identity, torch.zeros_like(identity))
    assert torch.equal(out, misaligned) and out.data_ptr() != misaligned.data_ptr()
    assert move_cells(torch.rand(0, 3, 16, 12), 4, identity[:0]).shape == (0, 3, 16, 12)


def test_move_cells_keeps_gradients():
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    source = torch.tensor([[1, 0, 2, 3], [3, 2, 1, 0]])
    weights = torch.rand(2, 1, 8, 8)
    (move_cells(x, 4, source) * weights).sum().backward()
    fast, x.grad = x.grad, None
    (remap_cells(x, 4, source) * weights).sum().backward()
    assert torch.equal(fast, x.grad)


def test_valid_patch_sizes():
    assert valid_patch_sizes(32, 32) == [2, 4, 8, 16, 32]
    assert valid_patch_sizes(384, 384, model_patch_size=16) == [16, 32, 48, 64, 96, 128, 192, 384]
    assert valid_patch_sizes(224, 224, model_patch_size=32) == [32, 224]
    assert valid_patch_sizes(16, 24, accept=lambda r, c: r * c >= 2) == [2, 4, 8]


def test_cell_grid_errors_list_sizes():
    assert cell_grid(16, 24, 8) == (2, 3)
    with pytest.raises(ValueError, match=r"does not divide the 32x32 input.*fit this 32x32 input: 2, 4, 8, 16, 32"):
        cell_grid(32, 32, 5)
    with pytest.raises(ValueError, match=r"not a multiple of model_patch_size=4.*: 4, 8, 16, 32"):
        cell_grid(32, 32, 2, model_patch_size=4)
    with pytest.raises(ValueError, match=r"1x1 cell grid: one cell.*: 2, 4, 8, 16$"):
        cell_grid(32, 32, 32, problem=lambda r, c: "one cell" if r * c < 2 else None)


@pytest.mark.parametrize(
    "grid,rate,expected",
    [((8, 8), 0.25, (4, 4)), ((8, 8), 0.375, (4, 6)), ((4, 4), 0.25, (2, 2)), ((4, 8), 0.25, (2, 4)),
     ((4, 8), 0.375, (2, 6)), ((6, 6), 1 / 9, (2, 2))],
)
def test_infill_layout_meets_rate_exactly(grid, rate, expected):
    block = infill_layout(*grid, rate, None)
    assert block == expected
    assert block[0] * block[1] == pytest.approx(rate * grid[0] * grid[1])


@pytest.mark.parametrize(
    "grid,rate,shape,reason",
    [((4, 4), 0.375, None, "no centred block"), ((8, 8), 0.3, None, "not a whole number"),
     ((8, 8), None, (7, 2), "border ring"), ((8, 8), None, (3, 4), "centred exactly"),
     ((8, 8), 0.25, (4, 6), "pass replace_rate=0.375")],
)
def test_infill_layout_reasons(grid, rate, shape, reason):
    assert reason in infill_layout(*grid, rate, shape)


def test_infill_sources_copy_border_into_centre():
    g = torch.Generator().manual_seed(0)
    for rule in ("random", "distinct"):
        src = infill_sources(500, 8, 8, (4, 6), rule, g).view(500, 8, 8)
        centre = torch.zeros(8, 8, dtype=torch.bool)
        centre[2:6, 1:7] = True
        border = torch.ones(8, 8, dtype=torch.bool)
        border[1:-1, 1:-1] = False
        grid = torch.arange(64).view(8, 8)
        assert torch.equal(src[:, ~centre], grid[~centre].expand(500, -1))
        picked = src[:, centre]
        assert bool(border.flatten()[picked].all())
        if rule == "distinct":
            assert all(len(set(row.tolist())) == 24 for row in picked)
        else:
            assert len(set(picked.flatten().tolist())) == 28  # every border cell gets used
    with pytest.raises(ValueError, match="needs 64 border cells"):
        infill_sources(1, 12, 12, (8, 8), "distinct")


def test_shuffle_sources_uniform_over_non_identity():
    g = torch.Generator().manual_seed(0)
    perms = shuffle_sources(6000, 3, g)
    keys = [tuple(p) for p in perms.tolist()]
    assert (0, 1, 2) not in keys
    counts = torch.tensor([keys.count(k) for k in set(keys)], dtype=torch.float)
    assert len(counts) == 5 and float(((counts - 1200) ** 2 / 1200).sum()) < 20.5  # chi2(4) p < 0.0004
    assert torch.equal(shuffle_sources(64, 2, g), torch.tensor([[1, 0]]).expand(64, 2))
    with pytest.raises(ValueError, match="at least 2 cells"):
        shuffle_sources(1, 1)


def test_rotation_turns_uniform_and_never_all_zero():
    g = torch.Generator().manual_seed(0)
    single = rotation_turns(4000, 1, g)
    assert bool((single > 0).all())
    freq = torch.bincount(rotation_turns(2000, 16, g).flatten(), minlength=4).float() / 32000
    assert torch.allclose(freq, torch.full((4,), 0.25), atol=0.01)


def test_apply_probability():
    g = torch.Generator().manual_seed(0)
    assert bool(apply_probability(5, 1.0, g).all()) and not bool(apply_probability(5, 0.0, g).any())
    assert 0.45 < float(apply_probability(4000, 0.5, g).float().mean()) < 0.55


def test_public_helpers_validate_their_arguments():
    with pytest.raises(ConfigError, match="patch_size must be an int >= 1, got -4"):
        cell_grid(32, 32, -4)
    with pytest.raises(ConfigError, match="patch_size must be an int >= 1, got 8.0"):
        cell_grid(32, 32, 8.0)
    with pytest.raises(ConfigError, match="patch_size must be an int >= 1, got 0"):
        cell_grid(32, 32, 0)
    with pytest.raises(ConfigError, match="model_patch_size must be an int >= 1, got 0"):
        valid_patch_sizes(32, 32, 0)
    with pytest.raises(ConfigError, match="height must be an int >= 1, got 32.0"):
        valid_patch_sizes(32.0, 32)
    x, src = torch.rand(4, 3, 32, 32), torch.arange(16).repeat(4, 1)
    with pytest.raises(ConfigError, match=r"x must be images \(B, C, H, W\).*unsqueeze"):
        remap_cells(x[0], 8, src[:1])
    with pytest.raises(ConfigError, match=r"source has shape \(2, 16\) but this batch needs \(4, 16\)"):
        remap_cells(x, 8, src[:2])
    with pytest.raises(ConfigError, match=r"does not divide the 32x32 input"):
        remap_cells(x, 3, src)
    with pytest.raises(ConfigError, match=r"rotation holds values in \[5, 5\].*0, 1, 2 or 3"):
        remap_cells(x, 8, src, torch.full((4, 16), 5))
