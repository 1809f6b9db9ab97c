"""Round-4 users' inputs to the subspace API: tied weights, empty parameters, a config given as a dict."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vitlab.peft.intrinsic import SubspaceConfig, subspace_size, wrap_in_subspace


def test_subspace_size_refuses_a_dict_config_and_a_non_module() -> None:
    model = nn.Linear(4, 3)
    with pytest.raises(TypeError, match=r"SubspaceConfig\(dim=\.\.\.\)"):
        subspace_size(model, {"dim": 5})
    with pytest.raises(TypeError, match="needs an nn.Module"):
        subspace_size("vit_tiny_patch16_224", SubspaceConfig(dim=5))
    assert subspace_size(model, SubspaceConfig(dim=5)) == 15
    assert subspace_size(model, SubspaceConfig(dim=2, target_modules=["bias"])) == 3


class _TiedLM(nn.Module):
    """Embedding → Linear → output layer sharing the embedding's weight (weight tying)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.mid = nn.Linear(4, 4)
        self.out = nn.Linear(4, 10, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.mid(self.emb(x)))


def test_tied_weight_is_selected_through_its_second_name_and_moves_everywhere() -> None:
    torch.manual_seed(0)
    base = _TiedLM()
    model = wrap_in_subspace(base, SubspaceConfig(dim=3, target_modules=["out"]))  # was: "matched no parameter"
    assert [s.name for s in model.segments] == ["emb.weight"] and model.num_params == 40
    with torch.no_grad():
        model.theta_d.copy_(torch.tensor([0.5, -1.0, 2.0]))
    moved = model.subspace_parameters()["emb.weight"]
    x = torch.tensor([1, 2, 3])
    expected = (base.mid(moved[x])) @ moved.T  # the shared tensor moved in both places
    torch.testing.assert_close(model(x), expected)
    assert not torch.equal(moved, base.emb.weight)


def test_tied_head_trained_directly_is_found_under_its_head_name() -> None:
    base = _TiedLM()
    model = wrap_in_subspace(base, SubspaceConfig(dim=3, train_head=True, head_modules=["out"]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["theta_d", "base.emb.weight"]  # was: only theta_d, the head silently in the subspace
    assert "emb.weight" not in [s.name for s in model.segments]
    assert subspace_size(base, SubspaceConfig(dim=3, train_head=True, head_modules=["out"])) == 4 * 4 + 4


class _WithEmptyParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.reg_tokens = nn.Parameter(torch.zeros(1, 0, 3))  # e.g. zero register tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + self.reg_tokens.sum()


@pytest.mark.parametrize("options", [{}, {"said": True, "dim": 4}, {"projection": "dense"}])
def test_an_empty_parameter_is_left_out_of_the_subspace(options: dict) -> None:
    base = _WithEmptyParameter()
    x = torch.randn(2, 3)
    model = wrap_in_subspace(base, SubspaceConfig(**{"dim": 3, **options}))  # was: "blocks must be ... positive"
    assert [s.name for s in model.segments] == ["lin.weight", "lin.bias"] and model.num_params == 12
    assert torch.equal(model(x), base(x))
    if model.said_scales is not None:
        assert model.said_scales.numel() == 2 and model.theta_d.numel() == 2
    with pytest.raises(ValueError, match="no parameter of _WithEmptyParameter is left"):
        wrap_in_subspace(_WithEmptyParameter(), SubspaceConfig(dim=1, target_modules=["reg_tokens"]))


@pytest.mark.parametrize("options", [{}, {"projection_norm": "global"}, {"projection": "dense"}])
@pytest.mark.parametrize("cast", ["bfloat16", "half"])
def test_a_low_precision_cast_keeps_the_float32_projection(options: dict, cast: str) -> None:
    torch.manual_seed(0)
    model = wrap_in_subspace(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3)), SubspaceConfig(dim=5, **options))
    theta = torch.tensor([0.3, -0.2, 0.1, 0.5, -0.4])
    expected = model.projection(theta)
    getattr(model, cast)()  # e.g. Lightning precision="bf16-true" casts the whole module
    assert all(b.dtype == torch.float32 for b in model.projection.buffers() if b.is_floating_point())
    with torch.no_grad():
        model.theta_d.copy_(theta)
    low = model.theta_d.dtype
    assert model.subspace_parameters()["0.weight"].dtype == low and model(torch.randn(2, 4, dtype=low)).dtype == low
    model.float()
    assert torch.equal(model.projection(theta), expected)  # was: P rounded to bf16/fp16 for good (1e-3 off)
    fresh = wrap_in_subspace(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3)), SubspaceConfig(dim=5, **options))
    assert torch.equal(fresh.projection(theta), expected)


def test_grad_checkpointing_inside_the_base_is_refused_and_whole_model_checkpointing_works() -> None:
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=24, depth=1, num_heads=2,
                            num_classes=3)
    model = wrap_in_subspace(vit, SubspaceConfig(dim=20))
    with torch.no_grad():
        model.theta_d.normal_(0, 0.1)
    x = torch.randn(2, 3, 16, 16)
    model(x).sum().backward()
    plain = model.theta_d.grad.clone()
    vit.set_grad_checkpointing(True)  # was: torch's CheckpointError in backward (recomputed with θ₀)
    with pytest.raises(ValueError, match=r"set_grad_checkpointing\(False\)"):
        model(x)
    with torch.no_grad():
        assert model(x).shape == (2, 3)  # inference does not recompute anything
    vit.set_grad_checkpointing(False)
    model.theta_d.grad = None
    checkpoint(model, x, use_reentrant=False).sum().backward()
    torch.testing.assert_close(model.theta_d.grad, plain)
