"""The negative losses on CUDA tensors (``pytest -m cuda``): float32 results equal to the CPU's, also under bf16
autocast, finite gradients, and the loss term's CPU generator drawing the same views whatever the batch's device.

``VITLAB_TEST_CUDA_DEVICE=cpu pytest -m cuda`` runs the same code on the CPU (CPU compared with itself).
"""

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from vitlab.losses import ContrastiveNegativeLoss, L2NegativeLoss, NegativeAugmentationLoss, UniformNegativeLoss

pytestmark = pytest.mark.cuda

BF16_RTOL = 2e-2  # bf16 keeps 8 significant bits: a 2-layer product of rounded inputs stays within ~1 %



def _call(name, loss, clean, negative, labels):
    if name == "uniform":
        return loss(negative)
    if name == "l2":
        return loss(clean, negative)
    return loss(clean, negative, labels)


LOSSES = {"uniform": UniformNegativeLoss, "l2": L2NegativeLoss, "contrastive": ContrastiveNegativeLoss}


def _inputs(device):
    """A linear layer and its input (clean rows, then as many negative rows), labels with repeated classes."""
    g = torch.Generator().manual_seed(0)
    layer = nn.Linear(16, 10)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(10, 16, generator=g))
        layer.bias.copy_(torch.randn(10, generator=g))
    x = torch.randn(16, 16, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    return layer.to(device), x.to(device), labels.to(device)


def _loss_and_grad(name, device, autocast):
    """The loss (and the layer's weight gradient) of rows = layer(x) split into clean and negative halves."""
    layer, x, labels = _inputs(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        rows = layer(x)
        value = _call(name, LOSSES[name](), rows[:8], rows[8:], labels)
    value.backward()
    return rows, value, layer.weight.grad


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_float32_loss_on_device_equals_the_cpu_loss(cuda_device, exact_float32, name):
    rows, value, grad = _loss_and_grad(name, cuda_device, autocast=False)
    _, expected, expected_grad = _loss_and_grad(name, torch.device("cpu"), autocast=False)
    assert value.device.type == cuda_device.type and value.dtype == torch.float32 and value.ndim == 0
    torch.testing.assert_close(value.cpu(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.cpu(), expected_grad, rtol=1e-4, atol=1e-5)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bf16_autocast_loss_is_float32_finite_and_close(cuda_device, exact_float32, name):
    rows, value, grad = _loss_and_grad(name, cuda_device, autocast=True)
    assert rows.dtype == torch.bfloat16  # autocast really ran the layer in bf16
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert grad.dtype == torch.float32 and bool(torch.isfinite(grad).all()) and grad.abs().sum() > 0
    # the loss itself is float32 math: on the same bf16 rows, the CPU gives the same value
    layer, _, labels = _inputs("cpu")
    rows_cpu = rows.detach().cpu()
    same_rows = _call(name, LOSSES[name](), rows_cpu[:8], rows_cpu[8:], labels)
    torch.testing.assert_close(value.detach().cpu(), same_rows, rtol=1e-5, atol=1e-5)
    _, reference, reference_grad = _loss_and_grad(name, torch.device("cpu"), autocast=False)
    torch.testing.assert_close(value.detach().cpu(), reference, rtol=BF16_RTOL, atol=1e-3)
    cosine = nn.functional.cosine_similarity(grad.cpu().flatten(), reference_grad.flatten(), dim=0)
    assert cosine > 0.99, f"bf16 gradient points elsewhere than the float32 one (cosine {cosine:.4f})"


def _term_run(name, device, tiny_vit, autocast):
    """Two training-step calls of a seed-7 term on ``device``: the losses, the views' parameters, the term."""
    model = copy.deepcopy(tiny_vit).to(device).train()
    term = NegativeAugmentationLoss(["shuffle", "rotate", "infill"], patch_size=8, loss=name, seed=7)
    g = torch.Generator().manual_seed(3)
    values, params = [], []
    for _ in range(2):
        images = torch.rand(6, 1, 32, 32, generator=g).to(device)
        labels = torch.tensor([0, 0, 1, 1, 2, 2]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            value = term(SimpleNamespace(model=model), (images, labels), {"logits": model(images)})["loss"]
        value.backward()
        values.append(value)
        params.append({k: v.cpu() for k, v in term.views.last_params.items()})
    return values, params, term, model


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_term_on_device_draws_the_cpu_views_and_gives_the_cpu_loss(cuda_device, exact_float32, tiny_vit, name):
    values, params, term, model = _term_run(name, cuda_device, tiny_vit, autocast=False)
    expected, expected_params, cpu_term, cpu_model = _term_run(name, torch.device("cpu"), tiny_vit, autocast=False)
    assert term.generator.device.type == "cpu"  # documented: the term's own CPU generator draws the views
    assert torch.equal(term.generator.get_state(), cpu_term.generator.get_state())
    for drawn, reference in zip(params, expected_params, strict=True):
        assert drawn.keys() == reference.keys()
        assert all(torch.equal(drawn[k], reference[k]) for k in drawn)
    for value, reference in zip(values, expected, strict=True):
        assert value.device.type == cuda_device.type and value.dtype == torch.float32
        torch.testing.assert_close(value.detach().cpu(), reference.detach(), rtol=1e-4, atol=1e-5)
    assert term.last_metrics["neg_acc"].device.type == cuda_device.type
    torch.testing.assert_close(term.last_metrics["neg_confidence"].cpu(), cpu_term.last_metrics["neg_confidence"],
                               rtol=1e-4, atol=1e-5)
    for (key, p), q in zip(model.named_parameters(), cpu_model.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), key  # contrastive: the head gets no gradient on either
        if q.grad is not None:
            torch.testing.assert_close(p.grad.cpu(), q.grad, rtol=1e-3, atol=1e-5, msg=key)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_term_under_bf16_autocast_gives_a_finite_float32_loss_near_float32(cuda_device, exact_float32, tiny_vit,
                                                                           name):
    values, params, _, model = _term_run(name, cuda_device, tiny_vit, autocast=True)
    reference, expected_params, _, _ = _term_run(name, torch.device("cpu"), tiny_vit, autocast=False)
    for drawn, expected in zip(params, expected_params, strict=True):
        assert all(torch.equal(drawn[k], expected[k]) for k in drawn)  # autocast does not change the views
    for value, expected in zip(values, reference, strict=True):
        assert value.dtype == torch.float32 and torch.isfinite(value)
        torch.testing.assert_close(value.detach().cpu(), expected.detach(), rtol=BF16_RTOL, atol=2e-3)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
