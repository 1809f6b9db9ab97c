"""wrap_in_subspace: identity at init, trainable counts, gradients, selection, state dict and its checks."""

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from vitlab.peft.intrinsic import SubspaceConfig, merge_subspace, subspace_size, wrap_in_subspace


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2,
                             num_classes=10).eval()


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


CASES = [
    dict(dim=50),
    dict(dim=50, projection="dense"),
    dict(dim=200, said=True),
    dict(dim=30, target_modules=["qkv@q", "qkv@v"], train_head=True),
    dict(dim=30, target_modules=r"blocks\.1\.mlp\.fc[12]"),
]


@pytest.mark.parametrize("kwargs", CASES)
def test_zero_theta_gives_the_base_model(kwargs, images):
    base = tiny_vit()
    expected = base(images)
    model = wrap_in_subspace(base, SubspaceConfig(**kwargs))
    assert torch.equal(model(images), expected)


def test_default_has_exactly_dim_trainable_numbers_and_said_counts_inside():
    assert trainable(wrap_in_subspace(tiny_vit(), SubspaceConfig(dim=123))) == 123
    said = wrap_in_subspace(tiny_vit(), SubspaceConfig(dim=200, said=True))
    assert trainable(said) == 200
    assert said.said_scales.numel() == len(said.segments) == len(list(tiny_vit().parameters()))
    assert said.theta_d.numel() == 200 - len(said.segments)
    head = wrap_in_subspace(tiny_vit(), SubspaceConfig(dim=40, train_head=True))
    assert trainable(head) == 40 + 48 * 10 + 10
    assert {n for n, p in head.named_parameters() if p.requires_grad} == {"theta_d", "base.head.weight",
                                                                          "base.head.bias"}


def test_gradients_reach_only_theta_and_said_scales(images):
    model = wrap_in_subspace(tiny_vit(), SubspaceConfig(dim=200, said=True))
    with torch.no_grad():
        model.theta_d.normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
    model(images).square().sum().backward()
    assert model.theta_d.grad.abs().sum() > 0 and model.said_scales.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.base.parameters())


@pytest.mark.parametrize("projection", ["fastfood", "dense"])
def test_theta_gradient_is_projected_parameter_gradient(projection, images):
    """d loss / d θ_d = Pᵀ · (d loss / d θ) at the current point: the whole chain through functional_call."""
    model = wrap_in_subspace(tiny_vit(), SubspaceConfig(dim=8, projection=projection, seed=3))
    with torch.no_grad():
        model.theta_d.copy_(torch.linspace(-1, 1, 8))
    F.cross_entropy(model(images), torch.tensor([1, 2])).backward()
    merged = merge_subspace(model)
    F.cross_entropy(merged(images), torch.tensor([1, 2])).backward()
    flat_grad = torch.cat([p.grad.flatten() for p in merged.parameters()])
    matrix = model.projection(torch.eye(8)).T  # [D, d], segments cover every parameter in order
    torch.testing.assert_close(model.theta_d.grad, matrix.T @ flat_grad, rtol=1e-4, atol=1e-5)


def test_row_slices_touch_only_the_selected_rows():
    model = wrap_in_subspace(tiny_vit(), SubspaceConfig(dim=20, target_modules=["qkv@v"]))
    assert subspace_size(tiny_vit(), model.config) == 2 * (48 * 48 + 48) == model.num_params
    with torch.no_grad():
        model.theta_d.fill_(1.0)
    merged, base = merge_subspace(model).state_dict(), model.base.state_dict()
    changed = {k for k in base if not torch.equal(merged[k], base[k])}
    assert changed == {f"blocks.{i}.attn.qkv.{p}" for i in (0, 1) for p in ("weight", "bias")}
    diff = (merged["blocks.0.attn.qkv.weight"] - base["blocks.0.attn.qkv.weight"]).abs().sum(1)
    assert diff[:96].sum() == 0 and (diff[96:] > 0).all()


def test_state_dict_is_small_and_round_trips(images):
    cfg = SubspaceConfig(dim=64, said=True, target_modules=["qkv", "head"])
    model = wrap_in_subspace(tiny_vit(), cfg)
    with torch.no_grad():
        model.theta_d.normal_(generator=torch.Generator().manual_seed(0))
        model.said_scales.mul_(1.5)
    state = model.state_dict()
    assert sorted(state) == ["projection.checksum", "projection.seed", "said_scales", "theta_d"]
    fresh = wrap_in_subspace(tiny_vit(), cfg)
    fresh.load_state_dict(state)
    assert torch.equal(fresh(images), model(images))
    holder = nn.ModuleDict({"model": wrap_in_subspace(tiny_vit(), cfg)})  # nested, as inside a LightningModule
    holder.load_state_dict({f"model.{k}": v for k, v in state.items()})
    assert torch.equal(holder["model"](images), model(images))


def test_load_refuses_other_seed_checksum_or_dim():
    state = wrap_in_subspace(tiny_vit(), SubspaceConfig(dim=16, seed=1)).state_dict()
    with pytest.raises(ValueError, match=r"seed mismatch.*SubspaceConfig\(seed=1\)"):
        wrap_in_subspace(tiny_vit(), SubspaceConfig(dim=16, seed=2)).load_state_dict(state)
    tampered = dict(state, **{"projection.checksum": state["projection.checksum"] ^ 1})
    with pytest.raises(ValueError, match="checksum of the regenerated projection"):
        wrap_in_subspace(tiny_vit(), SubspaceConfig(dim=16, seed=1)).load_state_dict(tampered)
    with pytest.raises(ValueError, match="theta_d has 16 entries but this subspace has 17"):
        wrap_in_subspace(tiny_vit(), SubspaceConfig(dim=17, seed=1)).load_state_dict(state)


def test_merge_matches_the_wrapped_model(images):
    model = wrap_in_subspace(tiny_vit(), SubspaceConfig(dim=32, target_modules=["fc1@0:50", "fc1@100:150"]))
    with torch.no_grad():
        model.theta_d.normal_(generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(merge_subspace(model)(images), model(images))
    assert [s.rows for s in model.segments[:3]] == [(0, 50), (100, 150), (0, 50)]


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    (dict(dim=5, target_modules=["nothing_here"]), ValueError, "matched no parameter"),
    (dict(dim=5, target_modules=["head@k"]), ValueError, "divisible by 3"),
    (dict(dim=5, target_modules=["fc1@0:999"]), ValueError, "no cropping"),
    (dict(dim=5, said=True), ValueError, "said=True needs dim >"),
    (dict(dim=10**7), ValueError, "exceeds the D="),
    (dict(dim=5, projection="dense", max_dense_bytes=100), MemoryError, "projection='fastfood'"),
])
def test_bad_configs_fail_with_a_fix(kwargs, error, match):
    with pytest.raises(error, match=match):
        wrap_in_subspace(tiny_vit(), SubspaceConfig(**kwargs))


def test_config_validation_and_round_trip():
    cfg = SubspaceConfig(dim=10, target_modules=("qkv@q",), said=True)
    assert SubspaceConfig.from_dict(cfg.to_dict()) == cfg and cfg.target_modules == ["qkv@q"]
    for bad in (dict(dim=0), dict(dim=3, projection="sparse"), dict(dim=3, target_modules=["qkv@x"]),
                dict(dim=3, seed=-1)):
        with pytest.raises(ValueError):
            SubspaceConfig(**bad)
    with pytest.raises(ValueError, match="unknown SubspaceConfig keys"):
        SubspaceConfig.from_dict({"dim": 3, "rank": 4})
    with pytest.raises(ValueError, match="head_modules"):
        wrap_in_subspace(nn.Sequential(nn.Linear(2, 2)), SubspaceConfig(dim=2, train_head=True))


def test_head_modules_as_one_name_and_max_dense_bytes_refuses_a_bool():
    # a string was split into its letters (['h', 'e', 'a', 'd']), each then 'not a module'
    assert SubspaceConfig(dim=3, head_modules="head").head_modules == ["head"]
    model = wrap_in_subspace(tiny_vit(), SubspaceConfig(dim=3, train_head=True, head_modules="head"))
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == [
        "base.head.bias", "base.head.weight", "theta_d"]
    for bad in ([], [""], [3]):
        with pytest.raises(ValueError, match="head_modules must be None"):
            SubspaceConfig(dim=3, head_modules=bad)
    with pytest.raises(ValueError, match="max_dense_bytes must be a positive int"):
        SubspaceConfig(dim=3, max_dense_bytes=True)  # True == 1 byte: every dense P was refused as too large


def test_parameters_frozen_before_wrapping_are_named_when_the_subspace_moves_them():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    with pytest.warns(UserWarning, match=r"1 parameter\(s\) of Sequential were frozen .* \['0.weight'\]"):
        wrapped = wrap_in_subspace(model, SubspaceConfig(dim=5))
    assert wrapped.num_params == 30  # all of them, as documented (Li et al.)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert wrap_in_subspace(model, SubspaceConfig(dim=5, target_modules=["1"])).num_params == 10  # no warning
        base = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        for dim in (5, 10):  # one base wrapped once per d: its parameters were frozen by the previous wrap
            assert wrap_in_subspace(base, SubspaceConfig(dim=dim, train_head=True, head_modules="1")).num_params == 20


def test_a_base_state_dict_loaded_into_the_wrapper_says_where_it_goes():
    base = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    wrapped = wrap_in_subspace(base, SubspaceConfig(dim=5))
    other = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"state dict of the base model .* model\.base\.load_state_dict"):
        wrapped.load_state_dict(other.state_dict())  # was torch's list of missing and unexpected keys
    wrapped.base.load_state_dict(other.state_dict())  # the fix the message names: θ₀ is the new weights
    x = torch.randn(3, 4)
    assert torch.equal(wrapped(x), other(x))


def test_a_lazy_model_is_wrapped_after_its_first_forward():
    model = nn.Sequential(nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(ValueError, match=r"uninitialised lazy parameters \['1.weight', '1.bias'\].*forward pass"):
        wrap_in_subspace(model, SubspaceConfig(dim=3))  # was torch's RuntimeError about the shape
    model(torch.randn(1, 5))
    assert wrap_in_subspace(model, SubspaceConfig(dim=3)).num_params == 12


@pytest.mark.parametrize("projection", ["fastfood", "dense"])
def test_a_model_wrapped_on_the_meta_device_regenerates_p_after_to_empty(projection):
    real = tiny_vit()
    config = SubspaceConfig(dim=40, projection=projection, said=True)
    reference = wrap_in_subspace(tiny_vit(), config)
    with torch.no_grad():
        reference.theta_d.normal_(generator=torch.Generator().manual_seed(3))
    with torch.device("meta"):  # sizes D without memory for the base (the wrap failed here: .item() on meta)
        lazy = wrap_in_subspace(tiny_vit(), config)
    assert lazy.num_params == reference.num_params and lazy.theta_d.is_meta
    lazy.to_empty(device="cpu")
    lazy.base.load_state_dict(real.state_dict())
    x = torch.randn(2, 3, 32, 32)
    # P was the uninitialised memory of to_empty: silently another projection
    assert torch.equal(lazy.eval()(x), real.eval()(x))  # fresh: θ_d = 0, scales 1
    assert torch.equal(lazy.projection.checksum, reference.projection.checksum)
    lazy.load_state_dict(reference.state_dict())
    assert torch.equal(lazy.eval()(x), reference.eval()(x))


def test_theta_d_is_zero_right_after_to_empty_of_a_meta_wrap():
    with torch.device("meta"):
        lazy = wrap_in_subspace(tiny_vit(), SubspaceConfig(dim=40, said=True))
    assert lazy.to_empty(device="cpu") is lazy
    # before: theta_d and state_dict() held to_empty's uninitialised memory until the first forward
    assert torch.equal(lazy.state_dict()["theta_d"], torch.zeros(40 - lazy.said_scales.numel()))
    assert torch.equal(lazy.said_scales, torch.ones_like(lazy.said_scales))
