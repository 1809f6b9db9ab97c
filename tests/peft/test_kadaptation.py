"""KAdaptation as an HF peft method: peft's own behaviours over a small case table (timm ViT, transformers ViT)."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from peft import PeftConfig, PeftModel, get_peft_model
from torch import nn

from vitlab.peft import KAdaptationConfig, count_parameters
from vitlab.peft.kadaptation import kadaptation_layers


def timm_vit(seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    options = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2, "num_classes": 10,
               **kwargs}
    return timm.create_model("vit_tiny_patch16_224", **options).eval()


def hf_vit(seed: int = 0) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=128, num_labels=10)
    return ViTForImageClassification(config).eval()


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from transformers import PreTrainedModel

    inner = model.get_base_model() if isinstance(model, PeftModel) else model
    return model(pixel_values=x).logits if isinstance(inner, PreTrainedModel) else model(x)


# (name, base builder, head name, adaptation parameters with n=8: per layer u+v of Q and V and the bias(es); shared A)
CASES = [
    ("timm", timm_vit, "head", 2 * (2 * 2 * 8 * 8 + 64) + 2 * 2 * 8 * 8),
    ("transformers", hf_vit, "classifier", 2 * (2 * 2 * 8 * 8 + 2 * 64) + 2 * 2 * 8 * 8),
]


def randomize_adapter(model: nn.Module, std: float = 0.05) -> None:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "kadaptation_" in name:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * std)


@pytest.mark.parametrize(("name", "build", "head", "adaptation"), CASES, ids=[c[0] for c in CASES])
def test_peft_behaviours(name, build, head, adaptation, tmp_path):
    x = torch.randn(2, 3, 32, 32)
    base_out = logits(build(), x)
    model = get_peft_model(build(), KAdaptationConfig(n=8))
    assert isinstance(model, PeftModel)
    torch.testing.assert_close(logits(model, x), base_out, rtol=0, atol=0)  # identity at initialisation
    counts = count_parameters(model)
    assert counts["adaptation"] == adaptation and counts["head"] == 64 * 10 + 10
    assert model.get_nb_trainable_parameters()[0] == adaptation + 650
    # training moves every factor (u, v, bias, the shared A) and the head, never the base weights
    frozen = {k: v.clone() for k, v in model.named_parameters() if not v.requires_grad}
    trained = {k: v.clone() for k, v in model.named_parameters() if v.requires_grad}
    assert {k.split(".default")[0].rsplit(".", 1)[-1] for k in trained} == {
        "kadaptation_u", "kadaptation_v", "kadaptation_bias", "kadaptation_A", "modules_to_save"}
    opt = torch.optim.AdamW(list(model.parameters()), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(logits(model.train(), x), torch.tensor([1, 2])).backward()
        opt.step()
    model.eval()
    params = dict(model.named_parameters())
    assert all(torch.equal(v, params[k]) for k, v in frozen.items())
    assert not [k for k, v in trained.items() if torch.equal(v, params[k])]
    adapted = logits(model, x)
    assert (adapted - base_out).abs().max() > 1e-4
    with model.disable_adapter():  # base weights and the original head
        torch.testing.assert_close(logits(model, x), base_out, rtol=0, atol=1e-6)
    # save / load round trip onto a fresh base (its head re-initialised differently): adapter and head restored
    model.save_pretrained(str(tmp_path))
    assert PeftConfig.from_pretrained(str(tmp_path)).peft_type == "KADAPTATION"
    assert type(PeftConfig.from_pretrained(str(tmp_path))) is KAdaptationConfig
    restored = PeftModel.from_pretrained(build(seed=0), str(tmp_path))
    torch.testing.assert_close(logits(restored, x), adapted, rtol=0, atol=0)
    assert (tmp_path / "adapter_model.safetensors").stat().st_size < 64 * 1024


@pytest.mark.parametrize(("name", "build"), [(c[0], c[1]) for c in CASES], ids=[c[0] for c in CASES])
def test_merge_and_unload_is_exact_in_float64(name, build):
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    model = get_peft_model(build().double(), KAdaptationConfig(n=8))
    randomize_adapter(model)
    adapted = logits(model, x)
    plain = model.merge_and_unload()
    assert type(plain) is type(build()) and not kadaptation_layers(plain)
    assert sorted(plain.state_dict()) == sorted(build().state_dict())
    torch.testing.assert_close(logits(plain, x), adapted, rtol=0, atol=1e-10)


def test_two_named_adapters_coexist_and_switch():
    x = torch.randn(2, 3, 32, 32)
    model = get_peft_model(timm_vit(), KAdaptationConfig(n=8, seed=0))
    model.add_adapter("other", KAdaptationConfig(n=4, seed=1))
    randomize_adapter(model)
    first = logits(model, x)
    model.set_adapter("other")
    second = logits(model, x)
    assert (first - second).abs().max() > 1e-4
    trainable = [k for k, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".other" in k for k in trainable)
    single = get_peft_model(timm_vit(), KAdaptationConfig(n=4, seed=1))
    single.load_state_dict({k.replace(".other", ".default"): v for k, v in model.state_dict().items()
                            if ".default" not in k}, strict=False)
    torch.testing.assert_close(logits(single, x), second, rtol=0, atol=1e-6)
    model.set_adapter("default")
    torch.testing.assert_close(logits(model, x), first, rtol=0, atol=0)


def test_vit_b16_count_on_the_meta_device():
    with torch.device("meta"):
        vit = timm.create_model("vit_base_patch16_224", num_classes=10)
    counts = count_parameters(get_peft_model(vit, KAdaptationConfig()))
    assert counts["adaptation"] == 50_176  # reference: 12 x (2 x 1,536 + 768) + 4 x 1,024


def reference_delta(layer, adapter: str = "default") -> torch.Tensor:
    """Σ_i A_i ⊗ (u_i v_iᵀ) per slice with torch.kron, written independently of the layer's einsums."""
    model_rules = layer.shared_rules[adapter]
    full = torch.zeros_like(layer.base_layer.weight)
    for key, (a, b) in layer.slice_rows[adapter].items():
        u, v = layer.kadaptation_u[adapter][key], layer.kadaptation_v[adapter][key]
        left, right = model_rules[f"{key}_left"], model_rules[f"{key}_right"]
        full[a:b] = sum(torch.kron(left[i] @ right[i], u[i] @ v[i]) for i in range(u.shape[0]))
    return full


def test_delta_is_the_sum_of_kronecker_products_and_the_forward_applies_it():
    model = get_peft_model(timm_vit().double(), KAdaptationConfig(n=8))
    randomize_adapter(model)
    name, layer = kadaptation_layers(model)[0]
    expected = reference_delta(layer)
    torch.testing.assert_close(layer.get_delta_weight("default"), expected, rtol=0, atol=1e-12)
    x = torch.randn(5, 64, dtype=torch.float64)
    bias = layer.base_layer.bias.clone()
    for a, b in layer.slice_rows["default"].values():
        bias[a:b] += layer.kadaptation_bias["default"]
    torch.testing.assert_close(layer(x), F.linear(x, layer.base_layer.weight + expected, bias), rtol=0, atol=1e-12)


def test_same_seed_gives_vitlab_01_numbers():
    """The initialisation of vitlab 0.1's apply_kadaptation, replayed: per slice the role's A (if new), then v."""
    model = get_peft_model(timm_vit(), KAdaptationConfig(n=8, seed=3))
    generator, n = torch.Generator().manual_seed(3), 8
    expected_rules, expected_v = {}, []
    for _ in range(2):  # blocks
        for role in ("q", "v"):
            if role not in expected_rules:
                expected_rules[role] = (torch.randn((n, n, 1), generator=generator) * n ** -0.5,
                                        torch.randn((n, 1, n), generator=generator) * n ** -0.5)
            expected_v.append((torch.rand((n, 1, 8), generator=generator) * 2 - 1) * (1 / math.sqrt(8)))
    rules = model.base_model.kadaptation_A["default"]
    for role, (left, right) in expected_rules.items():
        assert torch.equal(rules[f"{role}_left"], left) and torch.equal(rules[f"{role}_right"], right)
    got = [layer.kadaptation_v["default"][s] for _, layer in kadaptation_layers(model) for s in ("q", "v")]
    assert all(torch.equal(a, b) for a, b in zip(got, expected_v, strict=True))
    again = get_peft_model(timm_vit(), KAdaptationConfig(n=8, seed=3))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True))


def test_dense_path_equals_factored_path_and_full_a():
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    outputs = []
    for path in ("factored", "dense"):
        model = get_peft_model(timm_vit().double(), KAdaptationConfig(n=8, path=path, a_rank=None))
        randomize_adapter(model)
        assert all(layer.settings["default"]["factored"] == (path == "factored")
                   for _, layer in kadaptation_layers(model))
        outputs.append(logits(model, x))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-10)


def test_targets_and_errors():
    model = get_peft_model(timm_vit(), KAdaptationConfig(n=8, target_modules=["fc2"], share_a=False))
    assert [n for n, _ in kadaptation_layers(model)] == ["blocks.0.mlp.fc2", "blocks.1.mlp.fc2"]
    assert "kadaptation_A" in dict(kadaptation_layers(model)[0][1].named_children())
    with pytest.raises(ValueError, match=r"n=48 must divide.*Values of n valid for all"):
        get_peft_model(timm_vit(), KAdaptationConfig(n=48))
    with pytest.raises(ValueError, match=r"matched no nn.Linear.*blocks\.0\.attn\.qkv"):
        get_peft_model(timm_vit(), KAdaptationConfig(n=8, target_modules=["does_not_exist"]))
    with pytest.raises(ValueError, match="delta_bias=False"):
        get_peft_model(timm_vit(qkv_bias=False), KAdaptationConfig(n=8))
    assert get_peft_model(timm_vit(qkv_bias=False), KAdaptationConfig(n=8, delta_bias=False)) is not None
    with pytest.raises(ValueError, match="dropout on Delta W needs the dense"):
        KAdaptationConfig(path="factored", dropout=0.1)


def test_auto_targets_are_stored_explicitly(tmp_path):
    table = tmp_path / "d90.csv"
    table.write_text("module,d90\nattn.q,100\nmlp.fc1,50\nattn.v,400\n")
    model = get_peft_model(timm_vit(), KAdaptationConfig(n=8, target_modules="auto", intrinsic_table=str(table)))
    layers = dict(kadaptation_layers(model))
    assert sorted(layers) == ["blocks.0.attn.qkv", "blocks.0.mlp.fc1",
                                                              "blocks.1.attn.qkv", "blocks.1.mlp.fc1"]
    assert set(layers["blocks.0.attn.qkv"].slice_rows["default"]) == {"q"}
    model.save_pretrained(str(tmp_path / "adapter"))
    table.unlink()  # the saved config names the modules: the table is not needed to load
    restored = PeftModel.from_pretrained(timm_vit(), str(tmp_path / "adapter"))
    assert sorted(dict(kadaptation_layers(restored))) == sorted(layers)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(restored(x), copy.deepcopy(model)(x), rtol=0, atol=0)


def test_bfloat16_base_trains_float32_factors():
    model = get_peft_model(timm_vit().to(torch.bfloat16), KAdaptationConfig(n=8))
    dtypes = {k.split(".default")[0].rsplit(".", 1)[-1]: p.dtype
              for k, p in model.named_parameters() if p.requires_grad}
    assert {k: v for k, v in dtypes.items() if k != "modules_to_save"} == dict.fromkeys(
        ["kadaptation_u", "kadaptation_v", "kadaptation_bias", "kadaptation_A"], torch.float32)
    out = model(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_gradients_of_the_factored_path_equal_those_of_the_dense_reference():
    model = get_peft_model(timm_vit().double(), KAdaptationConfig(n=8))
    randomize_adapter(model)
    _, layer = kadaptation_layers(model)[0]
    params = [p for p in layer.parameters() if p.requires_grad] + list(layer.shared_rules["default"].parameters())
    x = torch.randn(3, 5, 64, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, 5, layer.out_features, dtype=torch.float64)

    def grads(output: torch.Tensor) -> list[torch.Tensor]:
        return torch.autograd.grad((output * weights).sum(), [x, *params])

    bias = layer.base_layer.bias + torch.cat([layer.kadaptation_bias["default"],
                                              torch.zeros(64, dtype=torch.float64), layer.kadaptation_bias["default"]])
    dense = F.linear(x, layer.base_layer.weight + reference_delta(layer), bias)
    for got, expected in zip(grads(layer(x)), grads(dense), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


class _OddShapes(nn.Module):
    """A fused ``qkv`` (12 -> 36) and a plain Linear of odd shape (15 -> 21)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.fc = nn.Linear(12, 36), nn.Linear(15, 21)


def dense_reference(layer, adapter: str = "default") -> tuple[torch.Tensor, torch.Tensor]:
    """``(W + ΔW, b + Δb)`` of one layer from torch.kron of the raw factors (shared or not, low-rank or full A)."""
    rules = layer.shared_rules[adapter] if adapter in layer.shared_rules else layer.kadaptation_A[adapter]
    weight, bias = layer.base_layer.weight.clone(), layer.base_layer.bias.clone()
    for key, (a, b) in layer.slice_rows[adapter].items():
        role = layer.settings[adapter]["roles"][key]
        u, v = layer.kadaptation_u[adapter][key], layer.kadaptation_v[adapter][key]
        a_full = rules[role] if role in rules else rules[f"{role}_left"] @ rules[f"{role}_right"]
        weight[a:b] += layer.settings[adapter]["scale"] * sum(torch.kron(a_full[i], u[i] @ v[i])
                                                              for i in range(u.shape[0]))
        if adapter in layer.kadaptation_bias:
            bias[a:b] += layer.kadaptation_bias[adapter]
    return weight, bias


# (target, fused_slices, n, rank, a_rank, share_a, delta_bias, scale, input shape)
FOLDED_CASES = [
    ("qkv", ("q", "v"), 3, 1, 1, True, True, 1.0, (2, 5, 12)),
    ("qkv", ("q", "k", "v"), 2, 3, 2, False, True, 0.5, (7, 12)),
    ("qkv", ("v",), 4, 2, None, True, False, 3.0, (1, 3, 2, 12)),
    ("qkv", ("k", "v"), 6, 1, 6, True, True, 1.0, (4, 12)),
    ("fc", ("q", "v"), 3, 2, 1, True, True, 2.0, (2, 5, 15)),
    ("fc", ("q", "v"), 1, 2, None, False, True, 1.0, (3, 15)),
]


@pytest.mark.parametrize(("target", "slices", "n", "rank", "a_rank", "share_a", "delta_bias", "scale", "shape"),
                         FOLDED_CASES)
def test_folded_path_equals_the_dense_kronecker_reference_in_float64(target, slices, n, rank, a_rank, share_a,
                                                                     delta_bias, scale, shape):
    torch.manual_seed(0)
    model = get_peft_model(_OddShapes().double(), KAdaptationConfig(
        n=n, rank=rank, a_rank=a_rank, share_a=share_a, delta_bias=delta_bias, scale=scale, target_modules=[target],
        fused_slices=slices, train_head=False, path="factored"))
    randomize_adapter(model, std=0.3)
    layer = dict(kadaptation_layers(model))[target]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert layer._folded_adapter(x) == "default"  # the path under test, not the per-token fallback
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    count = len(slices) if target == "qkv" else 1  # u, v and the A factors per slice, one bias per layer
    assert len(params) == count * (2 + (1 if a_rank is None else 2)) + delta_bias
    weights = torch.randn(*shape[:-1], layer.out_features, dtype=torch.float64)

    def value_and_grads(output: torch.Tensor) -> list[torch.Tensor]:
        return [output.detach(), *torch.autograd.grad((output * weights).sum(), [x, *params], allow_unused=True)]

    got = value_and_grads(layer(x))
    expected = value_and_grads(F.linear(x, *dense_reference(layer)))
    assert all(g is not None for g in got)  # every trainable factor (and x) gets a gradient
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_folded_path_matches_the_per_token_path_in_float32():
    from vitlab.peft.slice_tuner import RowSliceLayer

    model = get_peft_model(timm_vit(), KAdaptationConfig(n=8))
    randomize_adapter(model)
    _, layer = kadaptation_layers(model)[0]
    params = [p for p in layer.parameters() if p.requires_grad] + list(layer.shared_rules["default"].parameters())
    x = torch.randn(4, 17, 64, requires_grad=True)
    weights = torch.randn(4, 17, layer.out_features)
    results = []
    for forward in (layer.forward, lambda t: RowSliceLayer.forward(layer, t)):
        out = forward(x)
        results.append([out.detach(), *torch.autograd.grad((out * weights).sum(), [x, *params])])
    assert layer._folded_adapter(x) == "default"
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_folded_path_is_used_only_for_one_active_factored_adapter_in_the_input_dtype():
    model = get_peft_model(timm_vit(), KAdaptationConfig(n=8))
    _, layer = kadaptation_layers(model)[0]
    x = torch.randn(2, 64)
    assert layer._folded_adapter(x) == "default"
    assert layer._folded_adapter(x.double()) is None  # dtype mismatch: RowSliceLayer's path (which then casts)
    with model.disable_adapter():
        assert layer._folded_adapter(x) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):  # RowSliceLayer's path, which autocast already handled
        assert layer._folded_adapter(x) is None
        randomize_adapter(model)
        out = model(torch.randn(2, 3, 32, 32))
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and all(p.grad is not None for p in model.parameters() if p.requires_grad)
    dense = get_peft_model(timm_vit(), KAdaptationConfig(n=8, dropout=0.1))
    assert kadaptation_layers(dense)[0][1]._folded_adapter(x) is None


def test_vit_b16_adaptation_counts_as_documented():
    """README / KAdaptationConfig.delta_bias: one delta bias per adapted Linear, so transformers' ViT-B/16 (separate
    q/v projections) counts 50,176 + 12 x 768 = 59,392 against timm's 50,176 (fused qkv, one bias for Q and V)."""
    from transformers import ViTConfig, ViTForImageClassification

    with torch.device("meta"):  # shapes only: nothing allocated
        hf = ViTForImageClassification(ViTConfig(num_labels=10))
        vit = timm.create_model("vit_base_patch16_224", num_classes=10)
    assert count_parameters(get_peft_model(vit, KAdaptationConfig()))["adaptation"] == 50_176
    assert count_parameters(get_peft_model(hf, KAdaptationConfig()))["adaptation"] == 59_392 == 50_176 + 12 * 768


def test_merge_kadaptation_returns_the_plain_base_model_in_float64():
    """The issue's `merge_kadaptation(model)`: the base model's exact parameter names, outputs unchanged."""
    from vitlab.peft import apply_kadaptation, merge_kadaptation

    model = apply_kadaptation(timm_vit(dtype=torch.float64), KAdaptationConfig(n=8))
    randomize_adapter(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    adapted = model(x)
    plain = merge_kadaptation(model)
    assert type(plain) is type(timm_vit()) and sorted(plain.state_dict()) == sorted(timm_vit().state_dict())
    torch.testing.assert_close(plain(x), adapted, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="no KAdaptation layers"):
        merge_kadaptation(plain)


def test_disable_adapter_on_the_model_adapted_in_place():
    """`vitlab.peft.disable_adapter(m)` on the model handed to apply_kadaptation (adapted in place) failed with
    "'KAdaptationLayer' object has no attribute 'disabled'"; it now runs the base model (base weights, original head)
    and restores the adapter and its trainable parameters afterwards, as peft's PeftModel.disable_adapter does."""
    from vitlab.peft import apply_kadaptation, disable_adapter

    x = torch.randn(2, 3, 32, 32)
    base = timm_vit()(x)
    inner = timm_vit()
    model = apply_kadaptation(inner, KAdaptationConfig(n=8))
    randomize_adapter(model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    adapted = inner(x)
    assert not torch.allclose(adapted, base)
    with disable_adapter(inner):
        torch.testing.assert_close(inner(x), base, rtol=0, atol=0)
    torch.testing.assert_close(inner(x), adapted, rtol=0, atol=0)
    assert {name for name, p in model.named_parameters() if p.requires_grad} == trainable
