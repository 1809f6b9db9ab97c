"""Bad inputs a user of the patch transforms tries: each refused with a message naming the fix."""

from __future__ import annotations

import pytest
import torch

from vitlab.augment import PatchShuffle
from vitlab.augment.functional import move_cells, remap_cells
from vitlab.errors import ConfigError


@pytest.mark.parametrize(
    "source,rotation,match",
    [
        # was: turn 5 silently applied as turn 1 (index arithmetic mod 4)
        (torch.arange(16)[None], torch.tensor([[0, 0, 0, 5] + [0] * 12]), r"rotation holds values in \[0, 5\]"),
        # were: torch's "index -5 is out of bounds" / "index 40 is out of bounds" from deep inside the gather
        (torch.tensor([[0, 1, 2, 3, 4, -1] + list(range(6, 16))]), None, r"source holds values in \[-1, 15\]"),
        (torch.tensor([[0, 1, 2, 3, 4, 20] + list(range(6, 16))]), None, r"cell indices must be in \[0, 16\)"),
        (torch.arange(4)[None], None, r"source has shape \(1, 4\) but this batch needs \(1, 16\)"),
    ],
)
def test_move_cells_refuses_what_remap_cells_refuses(source, rotation, match):
    x = torch.arange(64.0).view(1, 1, 8, 8)
    for remap in (move_cells, remap_cells):
        with pytest.raises(ConfigError, match=match):
            remap(x, 2, source, rotation)


def test_move_cells_refuses_a_patch_size_that_does_not_divide_the_image():
    # was: "The size of tensor a (16) must match the size of tensor b (4)" from torch
    with pytest.raises(ConfigError, match=r"patch_size=3 does not divide the 8x8 input.*fit this 8x8 input: 2, 4, 8"):
        move_cells(torch.rand(1, 1, 8, 8), 3, torch.arange(16)[None])
    with pytest.raises(ConfigError, match=r"x must be images \(B, C, H, W\), got \(1, 8, 8\)"):
        move_cells(torch.rand(1, 8, 8), 2, torch.arange(16)[None])


def test_move_cells_still_moves_valid_cells():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = move_cells(x, 2, torch.tensor([[3, 2, 1, 0]]), torch.tensor([[0, 0, 0, 2]]))
    assert out[0, 0].tolist() == [[10, 11, 8, 9], [14, 15, 12, 13], [2, 3, 5, 4], [6, 7, 1, 0]]


@pytest.mark.parametrize("batch", [-1, 2.5, "4", None])
def test_generate_parameters_refuses_a_bad_batch_size(batch):
    # were: torch's "Trying to create tensor with negative dimension -1" / "ones(): argument 'size' ... not float"
    with pytest.raises(ConfigError, match=r"shape\[0\] \(batch size\) must be an int >= 0"):
        PatchShuffle(8).generate_parameters((batch, 3, 16, 16))


def test_generate_parameters_takes_a_torch_size_and_an_empty_batch():
    t = PatchShuffle(8)
    assert t.generate_parameters(torch.Size([3, 3, 16, 16]))["source"].shape == (3, 4)
    assert t.generate_parameters((0, 3, 16, 16))["source"].shape == (0, 4)
