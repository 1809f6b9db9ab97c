"""KAdaptation: structure, parameter accounting, init that trains, merge/unmerge/disable, targets and errors."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from vitlab.peft import (
    KAdaptationConfig,
    apply_kadaptation,
    count_parameters,
    disable_adapter,
    merge_kadaptation,
    unmerge_kadaptation,
)
from vitlab.peft.kadaptation import KAdaptationDelta, KroneckerRule, kadaptation_layers


def tiny_vit(dim: int = 64, depth: int = 2, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=dim, depth=depth,
                             num_heads=2, num_classes=5, **kwargs).eval()


def randomize(model: nn.Module) -> None:
    """Give every KAdaptation factor a non-zero value so ΔW != 0."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapters." in name or "adapter_bias" in name:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)


@pytest.mark.parametrize("path", ["factored", "dense"])
@pytest.mark.parametrize("a_rank,rank", [(1, 1), (None, 2), (2, 3)])
def test_delta_matches_explicit_kronecker_sum(a_rank, rank, path):
    n, out_f, in_f, scale = 4, 8, 12, 2.5
    rule = KroneckerRule(n, a_rank, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    delta = KAdaptationDelta(rule, out_f, in_f, rank, scale, path=path, own_rule=True, dtype=torch.float64)
    with torch.no_grad():
        delta.u.normal_()
    A, B = rule.matrices(), delta.u @ delta.v
    explicit = scale * sum(torch.kron(A[i], B[i]) for i in range(n))
    torch.testing.assert_close(delta.delta_weight(), explicit, rtol=0, atol=1e-12)
    x = torch.randn(3, 5, in_f, dtype=torch.float64)
    assert delta.factored == (path == "factored")
    torch.testing.assert_close(delta(x), x @ explicit.T, rtol=0, atol=1e-12)


def test_auto_path_avoids_dense_delta_for_vit_base_shapes():
    rule = KroneckerRule(32, 1)
    assert KAdaptationDelta(rule, 768, 768, rank=1, scale=1.0).factored  # ~25x fewer FLOPs per token than x @ ΔWᵀ
    assert not KAdaptationDelta(rule, 768, 768, rank=1, scale=1.0, dropout=0.1).factored  # dropout needs dense ΔW


def test_reference_parameter_count_vit_base_on_meta():
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", num_classes=10)
        apply_kadaptation(model, KAdaptationConfig())
    counts = count_parameters(model)
    assert counts["adaptation"] == 50_176  # PEViT reference accounting: 12 x 3,840 + 4 x 1,024
    assert counts["head"] == 768 * 10 + 10
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sum(n.startswith("kadaptation_rules.") for n in names) == 4  # shared A: left/right for q and for v


def test_identity_at_init_and_base_frozen():
    model = tiny_vit()
    x = torch.randn(2, 3, 16, 16)
    before = model(x)
    apply_kadaptation(model, KAdaptationConfig(n=8))
    assert torch.equal(model(x), before)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    allowed = (".adapters.", "adapter_bias")
    assert all(any(a in n for a in allowed) or n.startswith(("kadaptation_rules.", "head.")) for n in trainable)
    assert "blocks.0.attn.qkv.base_layer.weight" not in trainable and "head.weight" in trainable


def test_every_factor_trains():
    """The PEViT code zero-initialises both B factors (zero gradient forever); here every factor must move."""
    model = apply_kadaptation(tiny_vit(), KAdaptationConfig(n=8))
    model.train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head")}
    start = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.AdamW(params.values(), lr=1e-2, weight_decay=0.0)  # no decay: only gradients move params
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    unchanged = [n for n, p in params.items() if torch.equal(p, start[n])]
    assert not unchanged, f"factors without any update: {unchanged}"
    assert any(n.endswith(".u") for n in params) and any(n.endswith(".left") for n in params)


def test_merge_equivalence_float64_and_plain_model():
    base = tiny_vit().double()
    reference_keys = {k: v.shape for k, v in base.state_dict().items()}
    model = apply_kadaptation(copy.deepcopy(base), KAdaptationConfig(n=8))
    randomize(model)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    adapted = model(x)
    assert (adapted - base(x)).abs().max() > 1e-3  # the adaptation really changes the output
    merged = merge_kadaptation(model)
    assert (merged(x) - adapted).abs().max() <= 1e-10
    assert {k: v.shape for k, v in merged.state_dict().items()} == reference_keys
    assert all(type(m) in (nn.Linear,) for n, m in merged.named_modules() if n.endswith("qkv"))


def test_unmerge_and_disable_adapter():
    model = apply_kadaptation(tiny_vit().double(), KAdaptationConfig(n=8))
    base_weight = model.blocks[0].attn.qkv.base_layer.weight.detach().clone()
    randomize(model)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    adapted = model(x)
    with disable_adapter(model):
        plain = model(x)
    merge_kadaptation(model, unload=False)
    assert (model(x) - adapted).abs().max() <= 1e-10
    with disable_adapter(model):  # unmerges first, as peft does
        assert (model(x) - plain).abs().max() <= 1e-10
    merge_kadaptation(model, unload=False)
    unmerge_kadaptation(model)
    assert (model.blocks[0].attn.qkv.base_layer.weight - base_weight).abs().max() <= 1e-12
    assert (model(x) - adapted).abs().max() <= 1e-10


def test_dense_path_with_dropout_matches_factored_in_eval():
    base = tiny_vit().double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    outs = []
    for cfg in (KAdaptationConfig(n=8, path="factored"), KAdaptationConfig(n=8, dropout=0.5)):
        model = apply_kadaptation(copy.deepcopy(base), cfg)
        randomize(model)
        outs.append(model(x))
        assert all(a.factored == (cfg.dropout == 0) for _, layer in kadaptation_layers(model)
                   for a in layer.adapters.values())
    assert (outs[0] - outs[1]).abs().max() <= 1e-10  # eval mode: dropout off, same ΔW


def test_fused_qkv_only_q_and_v_rows_change():
    model = apply_kadaptation(tiny_vit(dim=32, depth=1).double(), KAdaptationConfig(n=4))
    randomize(model)
    layer = model.blocks[0].attn.qkv
    x = torch.randn(5, 32, dtype=torch.float64)
    diff = (layer(x) - layer.base_layer(x)).abs().amax(0)
    assert diff[:32].min() > 0 and diff[64:].min() > 0 and diff[32:64].max() == 0  # Q and V adapted, K untouched


def test_generic_linear_targets_by_regex_and_list():
    model = apply_kadaptation(tiny_vit(), KAdaptationConfig(n=8, target_modules=r"blocks\.\d+\.mlp\.fc1"))
    wrapped = [n for n, _ in kadaptation_layers(model)]
    assert wrapped == ["blocks.0.mlp.fc1", "blocks.1.mlp.fc1"]
    assert set(model.kadaptation_rules.keys()) == {"fc1"}  # A shared across layers by role
    model = apply_kadaptation(tiny_vit(), KAdaptationConfig(n=8, target_modules=["fc2"], share_a=False))
    assert [n for n, _ in kadaptation_layers(model)] == ["blocks.0.mlp.fc2", "blocks.1.mlp.fc2"]
    assert not hasattr(model, "kadaptation_rules") and model.blocks[0].mlp.fc2.adapters["all"].rule.n == 8


def test_errors_name_layer_and_valid_n():
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv \(q rows\): 64 x 64.*\[1, 2, 4, 8, 16, 32, 64\]"):
        apply_kadaptation(tiny_vit(), KAdaptationConfig(n=48))
    with pytest.raises(ValueError, match=r"matched no nn.Linear.*blocks\.0\.attn\.qkv"):
        apply_kadaptation(tiny_vit(), KAdaptationConfig(n=8, target_modules=["does_not_exist"]))
    with pytest.raises(ValueError, match=r"bias=False"):
        apply_kadaptation(tiny_vit(qkv_bias=False), KAdaptationConfig(n=8))
    assert apply_kadaptation(tiny_vit(qkv_bias=False), KAdaptationConfig(n=8, bias=False)) is not None
    with pytest.raises(ValueError, match="already adapted"):
        apply_kadaptation(apply_kadaptation(tiny_vit(), KAdaptationConfig(n=8)), KAdaptationConfig(n=8))
    with pytest.raises(ValueError, match="intrinsic_table"):
        KAdaptationConfig(target_modules="auto")


def test_auto_targets_follow_intrinsic_table(tmp_path):
    table = tmp_path / "per_module.csv"
    table.write_text("module,d90,reached\nattn.q,400,1\nmlp.fc1,90,1\nattn.v,120,1\nhigh_mixer,10,1\nattn.k,,0\n")
    model = apply_kadaptation(tiny_vit(), KAdaptationConfig(n=8, target_modules="auto", intrinsic_table=str(table)))
    layers = dict(kadaptation_layers(model))
    # lowest finite d90 among kinds this ViT has: mlp.fc1 (90), attn.v (120); high_mixer has no Linear here
    assert sorted(layers) == ["blocks.0.attn.qkv", "blocks.0.mlp.fc1", "blocks.1.attn.qkv", "blocks.1.mlp.fc1"]
    assert list(layers["blocks.0.attn.qkv"].adapters) == ["v"]
    table.write_text("module,d90\nattn.q,1\nbogus,2\n")
    with pytest.raises(ValueError, match="unknown module kind 'bogus'"):
        apply_kadaptation(tiny_vit(), KAdaptationConfig(n=8, target_modules="auto", intrinsic_table=str(table)))
