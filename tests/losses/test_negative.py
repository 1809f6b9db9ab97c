"""The three negative losses: values on hand-computed cases, bounds, masks, gradients and DDP gathering."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitlab.errors import ConfigError
from vitlab.losses import IGNORE_INDEX, ContrastiveNegativeLoss, L2NegativeLoss, UniformNegativeLoss, supcon_masks


@pytest.mark.parametrize("classes,expected", [(10, 2.3026), (100, 4.6052), (1000, 6.9078)])
def test_uniform_is_ln_k_at_equal_logits(classes, expected):
    logits = torch.full((3, classes), 1.7)
    assert UniformNegativeLoss()(logits).item() == pytest.approx(expected, abs=1e-4)


def test_uniform_equals_cross_entropy_to_uniform_target_and_gradient():
    logits = torch.randn(5, 7, requires_grad=True)
    loss = UniformNegativeLoss()(logits)
    target = torch.full((5, 7), 1 / 7)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, target).item(), abs=1e-6)
    assert loss.item() > math.log(7)
    loss.backward()
    assert torch.allclose(logits.grad, (logits.detach().softmax(1) - 1 / 7) / 5, atol=1e-6)


def test_l2_bounds_and_values():
    loss = L2NegativeLoss()
    assert loss(torch.tensor([[30.0, 0.0]]), torch.tensor([[0.0, 30.0]])).item() == pytest.approx(-math.sqrt(2), 1e-6)
    one_hot_vs_uniform = loss(torch.tensor([[50.0, 0.0, 0.0, 0.0]]), torch.zeros(1, 4)).item()
    assert one_hot_vs_uniform == pytest.approx(-math.sqrt(1 - 1 / 4), 1e-6)  # sqrt((3/4)^2 + 3 (1/4)^2)
    values = loss(torch.randn(200, 10) * 5, torch.randn(200, 10) * 5)
    assert -math.sqrt(2) <= values.item() <= 0
    pair = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    manual = -(pair[0].softmax(0) - pair[1].softmax(0)).norm()
    assert loss(pair[:1], pair[1:]).item() == pytest.approx(manual.item(), abs=1e-7)


def test_l2_gradients_and_detach_clean():
    clean, negative = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True)
    L2NegativeLoss()(clean, negative).backward()
    assert clean.grad.abs().sum() > 0 and negative.grad.abs().sum() > 0
    clean.grad = negative.grad = None
    L2NegativeLoss(detach_clean=True)(clean, negative).backward()
    assert clean.grad is None and negative.grad.abs().sum() > 0
    same = torch.zeros(2, 3, requires_grad=True)
    L2NegativeLoss()(same, same.detach().clone().requires_grad_()).backward()
    assert torch.isfinite(same.grad).all()  # zero distance: finite subgradient, no NaN
    with pytest.raises(ValueError, match="one negative per clean image"):
        L2NegativeLoss()(torch.zeros(2, 3), torch.zeros(3, 3))


def reference_supcon(clean, negatives, labels, temperature, anchors=None):
    """Per-anchor loop over Eq. 4 with the global batch; anchors default to all clean images."""
    clean, negatives = F.normalize(clean, dim=1), F.normalize(negatives, dim=1)
    everything = torch.cat([clean, negatives])
    losses = []
    for i in anchors if anchors is not None else range(clean.shape[0]):
        positives = [j for j in range(clean.shape[0]) if j != i and labels[j] == labels[i]]
        if not positives:
            continue
        candidates = [q for q in range(everything.shape[0]) if q != i]
        denominator = torch.logsumexp(torch.stack([clean[i] @ everything[q] / temperature for q in candidates]), 0)
        losses.append(-torch.stack([clean[i] @ clean[p] / temperature - denominator for p in positives]).mean())
    return torch.stack(losses).mean()


def test_supcon_masks_count_negatives():
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    positives, candidates = supcon_masks(labels, num_negatives=6)
    negatives_per_anchor = candidates.sum(1) - positives.sum(1)
    assert negatives_per_anchor.tolist() == [2 * 6 - p - 1 for p in (2, 2, 2, 0, 1, 1)]
    assert not bool(positives[:, 6:].any()) and not bool(candidates[torch.arange(6), torch.arange(6)].any())


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_contrastive_matches_reference_and_masks_anchors_without_positives(temperature):
    g = torch.Generator().manual_seed(0)
    clean, negatives = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])  # anchor 5 has no positive
    value = ContrastiveNegativeLoss(temperature)(clean, negatives, labels)
    assert value.item() == pytest.approx(reference_supcon(clean, negatives, labels, temperature).item(), abs=1e-5)


def test_contrastive_hand_computed_value():
    # two same-class anchors with identical features, negatives orthogonal: s_ip = 1, s_iq = 0 for the 2 negatives.
    clean = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    negatives = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    value = ContrastiveNegativeLoss(temperature=1.0)(clean, negatives, torch.tensor([3, 3]))
    # candidates Q_i = {other clean (s=1), 2 negatives (s=0, s=0)}: -log(e / (e + 2))
    assert value.item() == pytest.approx(-math.log(math.e / (math.e + 2)), abs=1e-6)


def test_contrastive_gradients_and_edge_cases():
    clean = torch.randn(4, 6, requires_grad=True)
    negatives = torch.randn(4, 6, requires_grad=True)
    ContrastiveNegativeLoss()(clean, negatives, torch.tensor([0, 0, 1, 1])).backward()
    assert clean.grad.abs().sum() > 0 and negatives.grad.abs().sum() > 0
    none = ContrastiveNegativeLoss()(clean, negatives, torch.tensor([0, 1, 2, 3]))
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="argmax"):
        ContrastiveNegativeLoss()(clean, negatives, torch.rand(4, 3))
    with pytest.raises(ValueError, match="temperature"):
        ContrastiveNegativeLoss(temperature=0)


def _ddp_worker(rank: int, world: int, folder: str, payload: dict) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        rows = payload["splits"][rank]
        clean = payload["clean"][rows].clone().requires_grad_()
        loss = ContrastiveNegativeLoss(payload["temperature"])
        value = loss(clean, payload["negatives"][rows], payload["labels"][rows])
        value.backward()
        torch.save({"value": value.detach(), "grad": clean.grad}, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_contrastive_gathers_the_global_batch_under_ddp(tmp_path):
    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(0)
    payload = {
        "clean": torch.randn(7, 5, generator=g), "negatives": torch.randn(7, 5, generator=g),
        "labels": torch.tensor([0, 1, 0, 1, 2, 2, 0]), "temperature": 0.2,
        "splits": [slice(0, 4), slice(4, 7)],  # uneven local batches
    }
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path), payload), nprocs=2, start_method="fork")
    for rank, rows in enumerate(payload["splits"]):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        local = payload["clean"][rows].clone().requires_grad_()
        clean = torch.cat([payload["clean"][: rows.start], local, payload["clean"][rows.stop :]])  # others: no grad
        expected = reference_supcon(clean, payload["negatives"], payload["labels"], 0.2, range(rows.start, rows.stop))
        expected.backward()
        assert result["value"].item() == pytest.approx(expected.item(), abs=1e-5)
        assert torch.allclose(result["grad"], local.grad, atol=1e-5)  # gradient through the local part only


@pytest.mark.parametrize("call", [
    lambda: UniformNegativeLoss()(torch.zeros(0, 10)),
    lambda: L2NegativeLoss()(torch.zeros(0, 10), torch.zeros(0, 10)),
    lambda: ContrastiveNegativeLoss()(torch.zeros(0, 8), torch.zeros(0, 8), torch.zeros(0, dtype=torch.long)),
    lambda: ContrastiveNegativeLoss()(torch.randn(4, 8), torch.zeros(0, 8), torch.tensor([0, 0, 1, 1])),
])
def test_empty_batch_is_refused_not_nan(call):
    with pytest.raises(ConfigError, match="empty batch"):
        call()


def test_contrastive_labels_must_be_an_int_tensor():
    f = torch.randn(4, 8)
    for labels in ([0, 0, 1, 1], None):
        with pytest.raises(TypeError, match=r"labels must be a torch.Tensor of int class indices \(4,\)"):
            ContrastiveNegativeLoss()(f, f, labels)
    with pytest.raises(ConfigError, match="got torch.bool; convert with labels.long()"):
        ContrastiveNegativeLoss()(f, f, torch.tensor([True, True, False, False]))


def test_supcon_masks_validates_its_arguments():
    with pytest.raises(TypeError, match="labels must be a torch.Tensor"):
        supcon_masks([0, 1], 2)
    with pytest.raises(ConfigError, match=r"num_negatives must be an int >= 0 .*got -1"):
        supcon_masks(torch.tensor([0, 1]), -1)
    with pytest.raises(ConfigError, match="num_negatives must be an int >= 0"):
        supcon_masks(torch.tensor([0, 1]), 2.0)
    with pytest.raises(ConfigError, match=r"labels must be int class indices"):
        supcon_masks(torch.eye(2), 2)


@pytest.mark.parametrize("make", [lambda f, n, y: ContrastiveNegativeLoss()(f, n, y),
                                  lambda f, n, y: UniformNegativeLoss()(n),
                                  lambda f, n, y: L2NegativeLoss()(f, n)])
def test_losses_are_float32_under_bfloat16_autocast(make):
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(12, 10)
    x, xn, labels = torch.randn(6, 12, generator=g), torch.randn(6, 12, generator=g), torch.tensor([0, 0, 1, 1, 2, 2])
    with torch.autocast("cpu", torch.bfloat16):
        features, negatives = layer(x), layer(xn)  # bfloat16 activations, as a mixed-precision model gives them
        loss = make(features, negatives, labels)
    assert features.dtype == torch.bfloat16
    reference = make(features.float(), negatives.float(), labels)  # the same inputs, no autocast
    assert loss.dtype == torch.float32 and torch.equal(loss, reference)


def test_contrastive_batch_without_any_positive_warns_that_it_is_zero():
    clean, negatives = torch.randn(1, 6, requires_grad=True), torch.randn(1, 6)
    with pytest.warns(UserWarning, match=r"no anchor of this batch of 1 has a same-label positive, so the contrastive"):
        loss = ContrastiveNegativeLoss()(clean, negatives, torch.tensor([3]))
    assert loss.item() == 0.0 and loss.requires_grad


def test_contrastive_leaves_out_unlabelled_images_as_cross_entropy_does():
    """Labels of -100 (F.cross_entropy's ignore_index) were a class of their own: unlabelled images became each
    other's positives. The loss now equals the loss without those clean images (their negative views kept)."""
    g = torch.Generator().manual_seed(3)
    clean, negatives = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    labels = torch.tensor([0, -100, 0, 1, -100, 1])
    kept = labels != IGNORE_INDEX
    value = ContrastiveNegativeLoss(0.5)(clean, negatives, labels)
    expected = ContrastiveNegativeLoss(0.5)(clean[kept], negatives, labels[kept])
    assert value.item() == pytest.approx(expected.item(), abs=1e-6)
    assert value.item() != pytest.approx(ContrastiveNegativeLoss(0.5)(clean, negatives, labels.clamp(min=2)).item())
    positives, candidates = supcon_masks(labels, num_negatives=6)
    assert positives[1].sum() == 0 and not bool(candidates[:, [1, 4]].any()) and bool(candidates[:, 6:].all())
    with pytest.raises(ValueError, match=r"class indices >= 0 or -100.*got \[-1\]"):
        ContrastiveNegativeLoss()(clean, negatives, torch.tensor([0, -1, 0, 1, 1, 1]))
