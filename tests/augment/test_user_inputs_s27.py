"""Inputs torchvision users hand the patch transforms: a raw grey batch (N, H, W) is refused instead of getting one
view shared by every image; one image and a (B, 1, H, W) batch still work."""

from __future__ import annotations

import pytest
import torch

from vitlab.augment import NegativeViews, PatchRotate, PatchShuffle


@pytest.mark.parametrize("make", [lambda: PatchShuffle(4), lambda: PatchRotate(4),
                                  lambda: NegativeViews(["shuffle", "rotate", "infill"], 4)])
def test_a_grey_batch_without_channel_axis_is_refused_naming_unsqueeze(make):
    # was: (8, 16, 16) read as one 8-channel image, so all 8 images got the same cell permutation
    transform = make()
    batch = torch.randint(0, 256, (8, 16, 16), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"looks like a batch of 8 grey images \(B, H, W\).*x\.unsqueeze\(1\)"):
        transform(batch)
    views = transform(batch.unsqueeze(1), generator=torch.Generator().manual_seed(0))
    assert views.shape == (8, 1, 16, 16)
    params = torch.cat([transform.last_params["source"], transform.last_params["rotation"]], dim=1)
    assert len({tuple(row.tolist()) for row in params}) > 1  # a view drawn per image


def test_single_images_and_many_channel_batches_still_work():
    shuffle = PatchShuffle(4)
    for image in (torch.rand(1, 16, 16), torch.rand(3, 16, 16), torch.rand(4, 16, 16)):
        out = shuffle(image)
        assert out.shape == image.shape and torch.equal(out.flatten().sort().values, image.flatten().sort().values)
    many = torch.rand(1, 8, 16, 16)  # one 8-channel image goes as a batch of one
    assert shuffle(many).shape == many.shape
