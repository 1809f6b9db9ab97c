"""Label layouts users of the negative losses pass (a (B, 1) column, int one-hot, float indices): each refused with
the fix that actually works for that layout."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import timm
import torch
import torch.nn.functional as F

from vitlab.errors import ConfigError
from vitlab.losses import ContrastiveNegativeLoss, NegativeAugmentationLoss

LABELS = torch.tensor([0, 0, 1, 1])


def _tiny_vit() -> torch.nn.Module:
    return timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2,
                             num_classes=4)


def test_contrastive_labels_as_a_column_name_squeeze_not_argmax():
    # was: "reduce soft labels with labels.argmax(1)", which turns a (B, 1) column into all-zero labels
    features = torch.randn(4, 8)
    with pytest.raises(ConfigError, match=r"labels\.squeeze\(1\)") as info:
        ContrastiveNegativeLoss()(features, features, LABELS[:, None])
    assert "labels.argmax(1)" not in str(info.value)
    fixed = ContrastiveNegativeLoss()(features, features, LABELS[:, None].squeeze(1))
    assert torch.equal(fixed, ContrastiveNegativeLoss()(features, features, LABELS))


def test_contrastive_float_index_labels_name_long():
    features = torch.randn(4, 8)
    with pytest.raises(ConfigError, match=r"labels\.long\(\)"):
        ContrastiveNegativeLoss()(features, features, LABELS.float())


def test_contrastive_one_hot_labels_still_name_argmax():
    features = torch.randn(4, 8)
    with pytest.raises(ConfigError, match=r"labels\.argmax\(1\)"):
        ContrastiveNegativeLoss()(features, features, F.one_hot(LABELS, 2))


@pytest.mark.parametrize(("targets", "fix"), [
    (LABELS[:, None], r"targets\.squeeze\(1\)"),
    (F.one_hot(LABELS, 4), r"targets\.argmax\(1\) \(class indices\) or targets\.float\(\) \(soft targets\)"),
])
def test_loss_term_int_2d_targets_name_a_fix_that_works(targets, fix):
    # was: "convert class indices with targets.long()" for targets that were already int64
    model = _tiny_vit()
    images = torch.rand(4, 3, 16, 16)
    term = NegativeAugmentationLoss("uniform", 1.0, patch_size=4)
    with pytest.raises(ConfigError, match=fix) as info:
        term(SimpleNamespace(model=model), (images, targets), {})
    assert "targets.long()" not in str(info.value)
    fixed = targets.squeeze(1) if targets.shape[1] == 1 else targets.float()
    term(SimpleNamespace(model=model), (images, fixed), {})
    assert term.last_metrics["neg_acc"].item() in {0.0, 0.25, 0.5, 0.75, 1.0}


@pytest.mark.parametrize("loss", ["uniform", "l2", "contrastive"])
def test_a_model_without_classifier_head_is_refused(loss):
    # was: a num_classes=0 timm model's pooled features (B, D) scored silently as logits of D classes
    model = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2,
                              num_classes=0)
    images = torch.rand(4, 3, 16, 16)
    term = NegativeAugmentationLoss(loss, 1.0, patch_size=4)
    with pytest.raises(ConfigError, match=r"no classifier head \(num_classes=0\).*reset_classifier"):
        term(SimpleNamespace(model=model), (images, LABELS), {"logits": torch.zeros(4, 4)})
    model.reset_classifier(4)  # the named fix
    assert torch.isfinite(term(SimpleNamespace(model=model), (images, LABELS), {"logits": model(images)})["loss"])


@pytest.mark.parametrize(("loss", "source"), [("uniform", "the model"), ("l2", "the model"),
                                              ("contrastive", r"forward_head\(tokens, pre_logits=True\)")])
def test_per_token_outputs_name_the_global_pool(loss, source):
    # was: "negative_logits must be float logits (B, K), got (4, 17, 4)" (contrastive: advised forward_head(...,
    # pre_logits=True), which is what returned the per-token features)
    model = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2,
                              num_classes=4, global_pool="")
    term = NegativeAugmentationLoss(loss, 1.0, patch_size=4)
    with pytest.raises(ConfigError, match=rf"{source} returned \(4, 17, .*one row per token.*global_pool='token'"):
        term(SimpleNamespace(model=model), (torch.rand(4, 3, 16, 16), LABELS), {"logits": torch.zeros(4, 4)})


def test_contrastive_per_token_features_name_pooling():
    # was: only "e.g. model.forward_head(..., pre_logits=True)", the call that returns them with global_pool=''
    tokens = torch.randn(4, 17, 8)
    with pytest.raises(ConfigError, match=r"per-token features \(N, T, D\): pool them.*features\.mean\(1\)"):
        ContrastiveNegativeLoss()(tokens, tokens, LABELS)
    pooled = ContrastiveNegativeLoss()(tokens.mean(1), tokens.mean(1), LABELS)
    assert torch.isfinite(pooled) and pooled > 0
