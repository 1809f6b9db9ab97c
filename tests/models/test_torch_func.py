"""``torch.func`` over whole vitlab models: model ensembles with ``vmap``, per-sample gradients, forward-mode ``jvp``.

The models' CPU fast paths (oneDNN products, channels-last copies) step aside under a transform
(:func:`vitlab.models.cpu_linear.capturing_or_transforming`); these tests compare every transform with the same
computation done one model / one sample at a time in eager mode.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, stack_module_state, vmap

from tests.models.conftest import small_model
from vitlab.models.cpu_linear import capturing_or_transforming, in_torch_func_transform


def _models(name: str) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    if name == "iformer":
        return [small_model().eval() for _ in range(3)]
    return [timm.create_model("vit_vitlab_tiny_patch8_32", num_classes=5).eval() for _ in range(3)]


def test_the_switch_sees_every_transform():
    seen = []

    def probe(x):
        seen.append((in_torch_func_transform(), capturing_or_transforming()))
        return x.sin().sum()

    x = torch.zeros(3)
    probe(x)
    vmap(probe)(x)
    grad(probe)(x)
    jvp(probe, (x,), (x,))
    assert seen == [(False, False)] + [(True, True)] * 3


@pytest.mark.parametrize("name", ["iformer", "vit"])
def test_vmap_over_an_ensemble_equals_each_model(name):
    """PyTorch's model-ensembling recipe: ``stack_module_state`` + ``vmap(functional_call)`` (failed on the iFormer:
    "NYI: Tensor.clone(memory_format) inside vmap", then oneDNN's missing batching rule)."""
    models = _models(name)
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = vmap(lambda p, b: functional_call(base, (p, b), (images,)))(params, buffers)
        expected = torch.stack([model(images) for model in models])
    assert out.shape == (3, 2, 5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected[0], expected[1])  # the members differ, so a broadcast copy would fail


@pytest.mark.parametrize("name", ["iformer", "vit"])
def test_per_sample_gradients_equal_one_sample_at_a_time(name):
    """``vmap(grad(loss))`` (per-sample gradients, as Opacus / influence functions use) against a loop of eager
    backward passes on one image each."""
    model = _models(name)[0]
    params = {k: v.detach() for k, v in model.named_parameters()}
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 3, 4])

    def loss(p, image, label):
        return F.cross_entropy(functional_call(model, p, (image[None],)), label[None])

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, images, labels)
    for index in range(3):
        model.zero_grad()
        F.cross_entropy(model(images[index:index + 1]), labels[index:index + 1]).backward()
        for key, param in model.named_parameters():
            torch.testing.assert_close(per_sample[key][index], param.grad, rtol=1e-4, atol=1e-6)


def test_forward_mode_jvp_equals_a_finite_difference():
    """``torch.func.jvp`` through the iFormer (float64) against a central difference of its outputs."""
    model = _models("iformer")[0].double()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    direction = torch.randn(images.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        _, tangent = jvp(model, (images,), (direction,))
        step = 1e-5
        difference = (model(images + step * direction) - model(images - step * direction)) / (2 * step)
    torch.testing.assert_close(tangent, difference, rtol=1e-5, atol=1e-7)
