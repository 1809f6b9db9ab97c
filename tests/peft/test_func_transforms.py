"""torch.func transforms (grad, vmap, jacrev, jvp over functional_call) through every vitlab peft method.

Unmerged KAdaptation and LoRA-QV layers run custom in-place autograd Functions in eager mode; under a ``torch.func``
transform they take their plain-ops path, whose numbers must equal eager autograd's. The eager reference here is
``torch.autograd.grad`` on the model itself (the fast Functions), so each comparison checks one path against the other.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jacrev, jvp, stack_module_state, vmap

from vitlab.models.cpu_linear import recording_or_transforming
from vitlab.peft import build_peft_transform

METHODS = {
    "kadaptation": {"n": 4},
    "kadaptation_dense": {"n": 4, "path": "dense"},
    "lora_qv": {"r": 2},
    "lora": {"r": 2},
    "lokr": {"r": 2},
    "adapter": {"bottleneck": 4},
    "linear": {},
    "full": {},
    "subspace": {"dim": 24},
    "subspace_dense": {"dim": 24, "projection": "dense"},
}


def _model(case: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.nn.Module:
    """A one-block ViT (width 16, 5 tokens) adapted by ``case``, trainable parameters moved off their zero init."""
    torch.manual_seed(seed)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                            num_classes=3)
    for module in vit.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False  # PyTorch's fused CPU attention has no forward-mode / second derivative
    model = build_peft_transform(case.removesuffix("_dense"), **METHODS[case])(vit.to(dtype)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen, dtype=dtype) * 0.3)
    return model


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def _data(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return torch.randn(3, 3, 16, 16, generator=gen, dtype=dtype), torch.tensor([0, 2, 1])


def _loss_fn(model: torch.nn.Module):
    buffers = dict(model.named_buffers())

    def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, (params, buffers), (x,)), y)

    return loss


def _eager_grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(named.values()))
    return dict(zip(named, grads, strict=True))


def _assert_close(actual: dict, expected: dict, atol: float) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=atol, rtol=atol, msg=name)


@pytest.mark.parametrize("case", list(METHODS))
def test_func_grad_equals_eager_autograd(case: str) -> None:
    model = _model(case)
    x, y = _data()
    expected = _eager_grads(model, x, y)
    assert any(g.abs().max() > 1e-4 for g in expected.values())  # a gradient worth comparing
    _assert_close(grad(_loss_fn(model))(_trainable(model), x, y), expected, atol=1e-10)


@pytest.mark.parametrize("case", ["kadaptation", "lora_qv"])
def test_func_grad_float32_within_1e5(case: str) -> None:
    model = _model(case, torch.float32)
    x, y = _data(torch.float32)
    _assert_close(grad(_loss_fn(model))(_trainable(model), x, y), _eager_grads(model, x, y), atol=1e-5)


@pytest.mark.parametrize("case", list(METHODS))
def test_vmap_per_sample_grads_equal_a_loop(case: str) -> None:
    model = _model(case)
    x, y = _data()
    loss = _loss_fn(model)
    per_sample = vmap(grad(lambda p, xi, yi: loss(p, xi[None], yi[None])), in_dims=(None, 0, 0))(
        _trainable(model), x, y)
    for i in range(len(x)):
        _assert_close({k: v[i] for k, v in per_sample.items()}, _eager_grads(model, x[i:i + 1], y[i:i + 1]),
                      atol=1e-10)


@pytest.mark.parametrize("case", ["kadaptation", "kadaptation_dense", "lora_qv", "lora", "subspace"])
def test_jvp_equals_jacrev_contraction(case: str) -> None:
    """Forward mode against reverse mode: ``J t`` from ``jvp`` equals ``Σ_p J_p t_p`` from ``jacrev``."""
    model = _model(case)
    x, _ = _data()
    buffers, params = dict(model.named_buffers()), _trainable(model)
    gen = torch.Generator().manual_seed(3)
    tangents = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}

    def logits(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, (p, buffers), (x,))

    out, forward = jvp(logits, (params,), (tangents,))
    jacobian = jacrev(logits)(params)
    reverse = sum((jacobian[k].flatten(2).double() @ tangents[k].flatten().double()) for k in params)
    tol = 1e-10 if all(p.dtype == torch.float64 for p in params.values()) else 1e-5  # subspace: θ_d is float32
    torch.testing.assert_close(out, model(x))
    torch.testing.assert_close(forward, reverse, atol=tol, rtol=tol)
    assert forward.abs().max() > 1e-4


@pytest.mark.parametrize("case", ["kadaptation", "lora_qv"])
def test_vmap_over_an_ensemble_equals_each_member(case: str) -> None:
    members = [_model(case, seed=s) for s in (0, 5)]
    params, buffers = stack_module_state(members)
    x, _ = _data()
    out = vmap(lambda p, b: functional_call(members[0], (p, b), (x,)))(params, buffers)
    for i, member in enumerate(members):
        torch.testing.assert_close(out[i], member(x), atol=1e-12, rtol=1e-12)
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("case", ["kadaptation", "lora_qv"])
def test_gradient_penalty_double_backward_equals_func(case: str) -> None:
    """``create_graph=True`` through the eager Functions (an input-gradient penalty) equals torch.func's plain path."""
    model = _model(case)
    x, y = _data()
    loss = _loss_fn(model)

    def penalty(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return grad(loss, argnums=1)(p, x, y).square().sum()

    expected = grad(penalty)(_trainable(model))
    xr = x.clone().requires_grad_(True)
    (input_grad,) = torch.autograd.grad(F.cross_entropy(model(xr), y), xr, create_graph=True)
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    actual = dict(zip(named, torch.autograd.grad(input_grad.square().sum(), list(named.values())), strict=True))
    _assert_close(actual, expected, atol=1e-10)
    assert any(g.abs().max() > 1e-6 for g in actual.values())


def test_eager_step_keeps_the_fast_functions() -> None:
    """The plain-ops path is for transforms only: eager KAdaptation / LoRA-QV still run their custom Functions."""
    x, _ = _data()
    assert not recording_or_transforming()
    assert type(_model("kadaptation").base_model.model.blocks[0].attn.qkv(torch.randn(2, 16, dtype=torch.float64))
                .grad_fn).__name__ == "_KroneckerLinearBackward"
    assert type(_model("lora_qv").base_model.model.blocks[0].attn.qkv(torch.randn(2, 16, dtype=torch.float64))
                .grad_fn).__name__ == "_AddToRowsBackward"
    assert vmap(lambda v: v * recording_or_transforming())(torch.ones(2)).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("case", ["kadaptation", "lora_qv"])
def test_parameter_gradient_penalty_equals_func(case: str) -> None:
    """``create_graph=True`` on the adapter parameters' own gradients (``Σ ‖∂loss/∂θ‖²``) equals torch.func's."""
    model = _model(case)
    x, y = _data()
    loss = _loss_fn(model)
    expected = grad(lambda p: sum(g.square().sum() for g in grad(loss)(p, x, y).values()))(_trainable(model))
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(named.values()), create_graph=True)
    actual = torch.autograd.grad(sum(g.square().sum() for g in grads), list(named.values()))
    _assert_close(dict(zip(named, actual, strict=True)), expected, atol=1e-10)


def test_fwht_under_vmap_avoids_the_cuda_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The optional CUDA Hadamard kernel has no vmap rule: under a transform ``fwht`` takes the exact butterfly."""
    from vitlab.peft.intrinsic import hadamard

    def kernel(x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the CUDA kernel ran under vmap")

    monkeypatch.setattr(hadamard, "_resolve_backend", lambda x, backend: "cuda")
    monkeypatch.setitem(hadamard._IMPLEMENTATIONS, "cuda", kernel)
    x = torch.randn(3, 8, dtype=torch.float64)
    expected = x @ hadamard._hadamard_matrix(8, torch.float64, x.device)
    torch.testing.assert_close(vmap(hadamard.fwht)(x), expected, atol=1e-12, rtol=0)
    with pytest.raises(AssertionError, match="CUDA kernel ran"):
        hadamard.fwht(x)  # outside a transform the (stubbed) kernel is used
