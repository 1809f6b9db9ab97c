"""NegativeAugmentationLoss(negative_loss, weight): the issue's call form builds the same term as the config's form."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import timm
import torch

from vitlab.errors import ConfigError
from vitlab.losses import ContrastiveNegativeLoss, L2NegativeLoss, NegativeAugmentationLoss, UniformNegativeLoss


def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2,
                             num_classes=5)


def _term_value(term: NegativeAugmentationLoss) -> torch.Tensor:
    model = tiny_vit()
    g = torch.Generator().manual_seed(1)
    images, labels = torch.rand(8, 3, 16, 16, generator=g), torch.arange(8) % 5
    return term(SimpleNamespace(model=model), (images, labels), {"logits": model(images)})["loss"]


@pytest.mark.parametrize(
    "new,old",
    [
        (lambda: NegativeAugmentationLoss(UniformNegativeLoss(), 0.5),
         lambda: NegativeAugmentationLoss(["shuffle"], 8, "uniform", 0.5)),
        (lambda: NegativeAugmentationLoss(negative_loss=UniformNegativeLoss(), weight=0.5),
         lambda: NegativeAugmentationLoss(["shuffle"], 8, "uniform", 0.5)),
        (lambda: NegativeAugmentationLoss("l2", 1.5, kinds=["rotate", "shuffle"], patch_size=4, seed=3),
         lambda: NegativeAugmentationLoss(["rotate", "shuffle"], 4, "l2", 1.5, seed=3)),
        (lambda: NegativeAugmentationLoss(negative_loss="contrastive", weight=2.0, patch_size=4, temperature=0.3),
         lambda: NegativeAugmentationLoss(["shuffle"], 4, ContrastiveNegativeLoss(temperature=0.3), 2.0)),
        (lambda: NegativeAugmentationLoss(L2NegativeLoss(detach_clean=True), kinds=["infill"], patch_size=4),
         lambda: NegativeAugmentationLoss(kinds=["infill"], patch_size=4, loss="l2", detach_clean=True)),
    ],
)
def test_issue_form_equals_config_form(new, old):
    a, b = new(), old()
    assert (a.weight, type(a.loss), a.views.kinds, a.views.patch_size) == (b.weight, type(b.loss), b.views.kinds,
                                                                            b.views.patch_size)
    value_a, value_b = _term_value(a), _term_value(b)
    assert torch.equal(value_a, value_b) and value_a.item() != 0.0


def test_issue_form_defaults_and_the_given_loss_object():
    loss = UniformNegativeLoss()
    term = NegativeAugmentationLoss(loss, 0.5)
    assert term.loss is loss and term.weight == 0.5
    assert (term.views.kinds, term.views.patch_size) == (["shuffle"], 8)  # the config section's defaults


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: NegativeAugmentationLoss(loss="uniform", negative_loss="l2"), ConfigError, "same argument"),
        (lambda: NegativeAugmentationLoss(UniformNegativeLoss(), 0.5, 8), TypeError,
         r"at most 2 positional .*negative_loss, weight.*kinds=\.\.\., patch_size="),
        (lambda: NegativeAugmentationLoss(UniformNegativeLoss(), 0.5, weight=1.0), TypeError,
         "two values for .weight."),
        (lambda: NegativeAugmentationLoss("l2", negative_loss="uniform"), TypeError, "two values for 'negative_loss'"),
        (lambda: NegativeAugmentationLoss(["shuffle"], 8, "l2", negative_loss="uniform"), ConfigError,
         "same argument"),
        (lambda: NegativeAugmentationLoss(["shuffle"], 8, "l2", 1.0, 2), TypeError, "at most 4 positional"),
    ],
)
def test_refusals_name_the_right_call(call, error, match):
    with pytest.raises(error, match=match):
        call()
