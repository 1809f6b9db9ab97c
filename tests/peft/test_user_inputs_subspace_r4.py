"""Round-4 users' inputs to the subspace API: tied weights, empty parameters, a config given as a dict."""

from __future__ import annotations

import pytest
from torch import nn

from vitlab.peft.intrinsic import SubspaceConfig, subspace_size


def test_subspace_size_refuses_a_dict_config_and_a_non_module() -> None:
    model = nn.Linear(4, 3)
    with pytest.raises(TypeError, match=r"SubspaceConfig\(dim=\.\.\.\)"):
        subspace_size(model, {"dim": 5})
    with pytest.raises(TypeError, match="needs an nn.Module"):
        subspace_size("vit_tiny_patch16_224", SubspaceConfig(dim=5))
    assert subspace_size(model, SubspaceConfig(dim=5)) == 15
    assert subspace_size(model, SubspaceConfig(dim=2, target_modules=["bias"])) == 3
