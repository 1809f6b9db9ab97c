"""Bad inputs a user of the negative losses tries: each refused with a message naming the fix."""

from __future__ import annotations

import pytest

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
