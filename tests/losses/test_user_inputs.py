"""Bad inputs a user of the negative losses tries: each refused with a message naming the fix."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import timm
import torch

from vitlab.errors import ConfigError
from vitlab.losses import NegativeAugmentationLoss, UniformNegativeLoss


@pytest.mark.parametrize("name", ["unifrom", "L2", "Contrastive", "supcon"])
def test_misspelt_loss_name_in_the_issue_form_names_the_losses(name):
    # was: "patch_size must be an int >= 2, got 1.0" (the name was read as kinds, the weight as patch_size)
    with pytest.raises(ConfigError, match=rf"{name!r} is neither a negative loss \['uniform', 'l2', 'contrastive'\]"):
        NegativeAugmentationLoss(name, 1.0)


def test_loss_class_instead_of_an_instance_names_the_call():
    with pytest.raises(ConfigError, match=r"class UniformNegativeLoss, not a loss object.*UniformNegativeLoss\(\)"):
        NegativeAugmentationLoss(UniformNegativeLoss, 1.0)


def test_a_kind_name_first_still_selects_the_config_form():
    term = NegativeAugmentationLoss("rotate", 4, "l2", 0.5)
    assert (term.views.kinds, term.views.patch_size, term.weight) == (["rotate"], 4, 0.5)


def test_soft_targets_of_another_class_count_are_refused():
    # was: argmax of 12-class Mixup targets silently scored against a 10-class model
    model = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2,
                              num_classes=10)
    images, soft = torch.rand(4, 3, 16, 16), torch.nn.functional.one_hot(torch.arange(4), 12).float()
    term = NegativeAugmentationLoss("uniform", 1.0, patch_size=4)
    with pytest.raises(ConfigError, match=r"soft targets \(4, 12\) have 12 classes but the model has 10.*Mixup\(num_"):
        term(SimpleNamespace(model=model), (images, soft), {})
    good = torch.nn.functional.one_hot(torch.arange(4), 10).float()
    assert term(SimpleNamespace(model=model), (images, good), {})["loss"].item() >= torch.log(torch.tensor(10.0)) - 1e-5


def test_a_patch_size_that_does_not_divide_the_training_images_names_the_negatives_key():
    # was: "patch_size=5 does not divide the 16x16 input" (a run config has the model's patch_size too)
    model = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2,
                              num_classes=10)
    term = NegativeAugmentationLoss("uniform", 1.0, patch_size=5)
    with pytest.raises(ConfigError, match=r"negatives\.patch_size in a run config\) on the 16x16 training images: "
                                          r"patch_size=5 does not divide.*fit this 16x16 input: 2, 4, 8"):
        term(SimpleNamespace(model=model), (torch.rand(2, 3, 16, 16), torch.tensor([0, 1])), {})
