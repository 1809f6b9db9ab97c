"""``vitlab.models.cpu_linear``: oneDNN matrix products equal ``F.linear`` (values and gradients), the switch, the
fallbacks, and that the iFormer really takes the path."""

from copy import deepcopy

import pytest
import timm
import torch
import torch.nn.functional as F

import vitlab.models.cpu_linear as cpu_linear
from vitlab.models.cpu_linear import (
    linear,
    linear_gelu,
    onednn_linear,
    onednn_linear_available,
    set_onednn_linear,
    uses_onednn,
)


def _operands(shape, out_features=24, bias=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator)
    weight = torch.randn(out_features, shape[-1], generator=generator) / shape[-1] ** 0.5
    return x, weight, torch.randn(out_features, generator=generator) if bias else None


@pytest.fixture
def recorded(monkeypatch):
    """Every call of the oneDNN op, as (input, weight) strides and shapes."""
    calls = []
    real = cpu_linear._POINTWISE

    def spy(a, b, *rest):
        calls.append((tuple(a.shape), a.stride(), tuple(b.shape), b.stride()))
        return real(a, b, *rest)

    monkeypatch.setattr(cpu_linear, "_POINTWISE", spy)
    return calls


def test_this_build_has_the_fast_path():
    assert onednn_linear_available()
    assert uses_onednn(torch.randn(2, 3), torch.randn(4, 3))


@pytest.mark.parametrize("shape", [(7, 16), (2, 5, 3, 16), (0, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_equals_f_linear(shape, bias, recorded):
    x, weight, b = _operands(shape, bias=bias)
    out = linear(x, weight, b)
    assert out.shape == shape[:-1] + (24,)
    torch.testing.assert_close(out, F.linear(x, weight, b), rtol=1e-5, atol=1e-5)
    assert recorded, "the oneDNN op was not called"


def test_gradients_equal_f_linear_on_a_channel_slice(recorded):
    """A channel slice of a wider NHWC map (the iFormer's branches): rows 40 floats apart, 16 wide."""
    wide = torch.randn(2, 3, 5, 40, generator=torch.Generator().manual_seed(2)).requires_grad_()
    _, weight, bias = _operands((1, 16))
    weight, bias = weight.requires_grad_(), bias.requires_grad_()
    upstream = torch.randn(2, 3, 5, 24, generator=torch.Generator().manual_seed(1))
    grads = []
    for fn in (linear, F.linear):
        out = fn(wide[..., 8:24], weight, bias)
        grads.append(torch.autograd.grad(out, (wide, weight, bias), upstream))
    for fast, reference in zip(*grads, strict=True):
        torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    # every operand handed to oneDNN is dense (or the transpose of a dense matrix): other strides take its ~100x
    # slower reference kernel
    for a_shape, a_stride, b_shape, b_stride in recorded:
        for shape, stride in ((a_shape, a_stride), (b_shape, b_stride)):
            if len(shape) == 2:
                assert stride in ((shape[1], 1), (1, shape[0])), (shape, stride)
            else:
                assert stride[-1] == 1


def test_second_derivatives_equal_f_linear():
    """A backward pass with ``create_graph=True`` (gradient penalties, meta-learning) gives differentiable gradients."""
    x, weight, bias = _operands((5, 16))
    results = []
    for fn in (linear, F.linear):
        xs, ws = x.clone().requires_grad_(), weight.clone().requires_grad_()
        (grad_x,) = torch.autograd.grad(fn(xs, ws, bias).tanh().sum(), xs, create_graph=True)
        results.append(torch.autograd.grad(grad_x.square().sum(), (xs, ws)))
    for fast, reference in zip(*results, strict=True):
        torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)


def test_torch_func_transforms_take_f_linear(recorded):
    """Under ``torch.func`` (``grad`` over ``functional_call`` for MAML-style inner loops, ``vmap``, ``jvp``) the
    oneDNN op steps aside (it has no batching rule and no forward-mode rule): F.linear's numbers, for the op and a
    whole iFormer."""
    x, weight, bias = _operands((5, 16))
    grads = [torch.func.grad(lambda w, f=fn: f(x, w, bias).tanh().sum())(weight) for fn in (linear, F.linear)]
    batched = torch.func.vmap(lambda row: linear(row, weight, bias))(x)
    _, tangent = torch.func.jvp(lambda w: linear(x, w, bias), (weight,), (torch.ones_like(weight),))
    assert not recorded  # the oneDNN op did not run under a transform
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tangent, x.sum(1, keepdim=True).expand(-1, weight.shape[0]), rtol=1e-5, atol=1e-5)
    linear(x, weight, bias)
    assert recorded  # and eager calls still take it

    torch.manual_seed(0)
    model = timm.create_model("inception_transformer_tiny").eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])

    def loss(p):
        return F.cross_entropy(torch.func.functional_call(model, p, (images,)), labels)

    functional = torch.func.grad(loss)(params)
    F.cross_entropy(model(images), labels).backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(functional[name], param.grad, rtol=1e-4, atol=1e-6)


def test_strided_operands_are_made_dense(recorded):
    """A weight that is every other column of a wider one, and an input whose features are not adjacent."""
    x, wide, bias = _operands((6, 32))
    weight, inputs = wide[:, ::2], x[:, ::2]
    torch.testing.assert_close(linear(inputs, weight, bias), F.linear(inputs, weight, bias), rtol=1e-5, atol=1e-5)
    ((_, a_stride, b_shape, b_stride),) = recorded
    assert a_stride[-1] == 1 and b_stride in ((b_shape[1], 1), (1, b_shape[0]))


def test_linear_gelu_fuses_without_autograd_and_matches(recorded):
    x, weight, bias = _operands((9, 16))
    for approximate in ("none", "tanh"):
        with torch.no_grad():
            fused = linear_gelu(x, weight, bias, approximate)
        torch.testing.assert_close(fused, F.gelu(F.linear(x, weight, bias), approximate=approximate),
                                   rtol=1e-5, atol=1e-5)
    assert any(True for _ in recorded)
    x.requires_grad_()
    out = linear_gelu(x, weight, bias)
    (grad,) = torch.autograd.grad(out.sum(), x)
    x_ref = x.detach().requires_grad_()
    (grad_ref,) = torch.autograd.grad(F.gelu(F.linear(x_ref, weight, bias)).sum(), x_ref)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="approximate"):
        linear_gelu(x, weight, bias, "erf")


def test_switch_off_gives_f_linear_bit_for_bit_and_is_restored(recorded):
    x, weight, bias = _operands((6, 16))
    with onednn_linear(False):
        assert not uses_onednn(x, weight)
        assert torch.equal(linear(x, weight, bias), F.linear(x, weight, bias))
    assert not recorded
    with pytest.raises(RuntimeError), onednn_linear(False):
        raise RuntimeError("inside")
    assert uses_onednn(x, weight)
    with pytest.raises(TypeError, match="True or False"):
        with onednn_linear("no"):
            pass
    assert set_onednn_linear(False) is True and not uses_onednn(x, weight)
    assert set_onednn_linear(True) is False and uses_onednn(x, weight)


def test_fallbacks_float64_autocast_and_tracing(recorded):
    x, weight, bias = _operands((6, 16))
    assert torch.equal(linear(x.double(), weight.double(), bias.double()),
                       F.linear(x.double(), weight.double(), bias.double()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not uses_onednn(x, weight)
        assert linear(x, weight, bias).dtype == torch.bfloat16
    traced = torch.jit.trace(lambda t: linear(t, weight, bias), (x,), check_trace=False)
    assert "linear" in str(traced.graph) and "mkldnn" not in str(traced.graph)
    assert not recorded


def test_a_mismatched_bias_gets_f_linears_error():
    x, weight, bias = _operands((4, 16))
    with pytest.raises(RuntimeError) as ours:
        linear(x, weight, bias.double())
    with pytest.raises(RuntimeError) as theirs:
        F.linear(x, weight, bias.double())
    assert str(ours.value) == str(theirs.value)


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"x \[6, 15\] and weight \[24, 16\]"):
        linear(torch.randn(6, 15), torch.randn(24, 16))
    with pytest.raises(ValueError, match=r"bias must have shape \(24,\)"):
        linear(torch.randn(6, 16), torch.randn(24, 16), torch.randn(23))


def _train_step(model, x):
    out = model.train()(x)
    out.square().mean().backward()
    return out, torch.cat([p.grad.flatten() for p in model.parameters()])


def test_iformer_takes_the_path_and_is_as_accurate_as_pytorch_kernels(recorded):
    """Float32 outputs and gradients through oneDNN are as close to the float64 model's as with PyTorch's default
    kernels (a float64 run never takes the oneDNN path; the gradient error is relative to the largest gradient),
    and the outputs within 1e-5 of the default kernels'."""
    model = timm.create_model("inception_transformer_tiny", num_classes=10)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    exact_out, exact_grad = _train_step(deepcopy(model).double(), x.double())
    assert not recorded
    errors, outputs = {}, {}
    for enabled in (True, False):
        copy = deepcopy(model)  # training updates BatchNorm statistics: each run starts from the same state
        with onednn_linear(enabled):
            with torch.no_grad():
                outputs[enabled] = copy.eval()(x)
            out, grad = _train_step(copy, x)
        errors[enabled] = ((out.double() - exact_out).abs().max().item(),
                           ((grad.double() - exact_grad).abs().max() / exact_grad.abs().max()).item())
        if enabled:
            assert len(recorded) > 20  # qkv, mixer and MLP products, forward and backward
    torch.testing.assert_close(outputs[True], outputs[False], rtol=0, atol=1e-5)
    (out_fast, grad_fast), (out_default, grad_default) = errors[True], errors[False]
    assert out_fast < 1e-5 and grad_fast < 1e-3, errors  # float32 gradients: ~1e-4 of their largest entry
    assert out_fast < 4 * out_default and grad_fast < 4 * grad_default, (errors, "less accurate than PyTorch's")


def test_a_build_whose_op_fails_falls_back(monkeypatch):
    def broken(*args):
        raise RuntimeError("mkldnn: unsupported on this CPU")

    monkeypatch.setattr(cpu_linear, "_POINTWISE", broken)
    assert not cpu_linear._probe()
    monkeypatch.setattr(cpu_linear, "_AVAILABLE", cpu_linear._probe())
    x, weight, bias = _operands((4, 16))
    assert not uses_onednn(x, weight) and torch.equal(linear(x, weight, bias), F.linear(x, weight, bias))
