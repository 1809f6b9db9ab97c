"""Users' inputs to the vitlab models (round 2) that failed inside timm with a KeyError / bare AssertionError (which
``python -O`` skips), were taken silently, or were refused as an unexpected keyword."""

from __future__ import annotations

import pytest
import timm
import torch

import vitlab  # noqa: F401  (registers the models)

VIT = "vit_vitlab_tiny_patch8_32"
IFORMER = "inception_transformer_tiny"
_SMALL_VIT = dict(depth=2, embed_dim=32, num_heads=2)


@pytest.mark.parametrize("call", ["forward_intermediates", "prune_intermediate_layers"])
@pytest.mark.parametrize("indices", [10, 0, -1, [10], [-3], [], "1", 1.0, True])
def test_vit_intermediate_indices_out_of_range_name_the_range(call, indices):
    """timm asserted ("last-n (10) is out of range") or failed on the type; now a ValueError naming 1..depth."""
    model = timm.create_model(VIT, **_SMALL_VIT)
    args = (torch.zeros(1, 3, 32, 32),) if call == "forward_intermediates" else ()
    with pytest.raises(ValueError, match=r"an int n in 1\.\.2 \(the last n blocks\).*\[-2, 2\)"):
        getattr(model, call)(*args, indices=indices)
    assert len(model.blocks) == 2  # nothing pruned


def test_vit_intermediates_valid_indices_and_bad_output_fmt():
    model = timm.create_model(VIT, **_SMALL_VIT).eval()
    x = torch.randn(1, 3, 32, 32)
    maps = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
    tokens = model.forward_intermediates(x, 1, output_fmt="NLC", intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(1, 32, 4, 4), (1, 32, 4, 4)]
    torch.testing.assert_close(tokens[0], maps[1].flatten(2).transpose(1, 2))
    with pytest.raises(ValueError, match="output_fmt must be 'NCHW'.*'NLC'.*got 'NHWC'"):
        model.forward_intermediates(x, output_fmt="NHWC")
    assert model.prune_intermediate_layers([0]) == [0] and len(model.blocks) == 1


