"""`diagnose_negatives` on tiny models whose answers on negative views are known."""

import pytest
import timm
import torch
from torch import nn

from vitlab.augment import NegativeViews
from vitlab.eval import diagnose_negatives, format_negative_diagnostics


def _vit(pos_embed: str) -> nn.Module:
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=2,
                              num_classes=10, pos_embed=pos_embed).eval()
    for param in model.parameters():  # large weights: predictions depend strongly on the input
        nn.init.normal_(param, std=0.3)
    return model


class Constant(nn.Module):
    """Always the same logits, whatever the input."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


def _loader(count=12, batch=5, seed=0):
    """Batches of smooth random images (low-resolution noise upsampled, plus fine noise) and random labels."""
    g = torch.Generator().manual_seed(seed)
    low = nn.functional.interpolate(2 * torch.randn(count, 3, 4, 4, generator=g), size=32, mode="bilinear")
    images, labels = low + 0.3 * torch.randn(count, 3, 32, 32, generator=g), torch.randint(0, 10, (count,), generator=g)
    return [(images[i : i + batch], labels[i : i + batch]) for i in range(0, count, batch)]


def test_constant_model_gives_known_accuracy_and_confidence():
    loader = [(x, y % 4) for x, y in _loader()]  # labels of the model's 4 classes
    labels = torch.cat([y for _, y in loader])
    result = diagnose_negatives(Constant([0.0, 2.0, 1.0, 0.0]), loader, patch_size=8)
    assert result["n"] == 12 and result["num_classes"] == 4 and result["chance"] == 0.25 and result["patch_size"] == 8
    confidence = torch.tensor([0.0, 2.0, 1.0, 0.0]).softmax(0).max().item()  # e^2 / (2 + e + e^2) = 0.6103
    accuracy = (labels == 1).float().mean().item()
    assert list(result["views"]) == ["clean", "shuffle", "rotate", "infill"]
    for values in result["views"].values():
        assert values["accuracy"] == pytest.approx(accuracy) and values["confidence"] == pytest.approx(confidence)
        assert values.get("agreement", 1.0) == 1.0
    assert "agreement" not in result["views"]["clean"]


@torch.no_grad()
def test_position_free_vit_does_not_see_a_shuffle_at_its_patch_size():
    loader = _loader(count=16, batch=8)
    model = _vit("none")
    assert len(set(torch.cat([model(x).argmax(1) for x, _ in loader]).tolist())) > 1  # agreement is not trivial
    result = diagnose_negatives(model, loader, patch_size=8, kinds=["shuffle"])
    clean, shuffle = result["views"]["clean"], result["views"]["shuffle"]
    assert shuffle["agreement"] == 1.0 and shuffle["accuracy"] == clean["accuracy"]
    assert shuffle["confidence"] == pytest.approx(clean["confidence"], abs=1e-6)


class ChannelMeans(nn.Module):
    """Logits from the per-channel image means: blind to where pixels are (shuffle, rotate), not to infill."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 10)
        nn.init.normal_(self.linear.weight, std=5.0, generator=torch.Generator().manual_seed(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=(2, 3)))


@torch.no_grad()
def test_views_that_keep_the_pixels_keep_a_pixel_statistics_model():
    loader = _loader(count=16, batch=8)
    result = diagnose_negatives(ChannelMeans(), loader, patch_size=8)["views"]
    for kind in ("shuffle", "rotate"):
        assert result[kind]["agreement"] == 1.0 and result[kind]["accuracy"] == result["clean"]["accuracy"]
        assert result[kind]["confidence"] == pytest.approx(result["clean"]["confidence"], abs=1e-5)
    assert abs(result["infill"]["confidence"] - result["clean"]["confidence"]) > 1e-3  # infill changes the means


@torch.no_grad()
def test_matches_a_hand_computation_with_the_same_generator():
    model = _vit("learn")
    (images, labels), = _loader(count=10, batch=10, seed=3)
    result = diagnose_negatives(model, [(images, labels)], patch_size=8, seed=5, replace_rate=0.25)
    generator = torch.Generator().manual_seed(5)
    clean_pred = model(images).argmax(1)
    for kind in ("shuffle", "rotate", "infill"):  # the views are drawn in this order from one generator
        probs = model(NegativeViews([kind], 8)(images, generator=generator)).softmax(1)
        expected = result["views"][kind]
        assert expected["accuracy"] == pytest.approx((probs.argmax(1) == labels).float().mean().item())
        assert expected["confidence"] == pytest.approx(probs.max(1).values.mean().item(), abs=1e-6)
        assert expected["agreement"] == pytest.approx((probs.argmax(1) == clean_pred).float().mean().item())
    again = diagnose_negatives(model, [(images, labels)], patch_size=8, seed=5)
    assert again == result


def test_n_limits_the_images_and_soft_targets_use_their_argmax():
    loader = _loader(count=12, batch=5)
    soft = [(x, nn.functional.one_hot(y, 10).float() * 0.9 + 0.01) for x, y in loader]
    model = Constant([0.0] * 3 + [1.0] + [0.0] * 6)
    first7 = torch.cat([y for _, y in loader])[:7]
    result = diagnose_negatives(model, soft, patch_size=8, n=7)
    assert result["n"] == 7
    assert result["views"]["shuffle"]["accuracy"] == pytest.approx((first7 == 3).float().mean().item())
    with pytest.raises(ValueError, match="asked for n=13 images but the loader has only 12"):
        diagnose_negatives(model, loader, patch_size=8, n=13)
    with pytest.raises(ValueError, match="yielded no image"):
        diagnose_negatives(model, [], patch_size=8)
    with pytest.raises(ValueError, match="kinds must be"):
        diagnose_negatives(model, loader, patch_size=8, kinds=["jigsaw"])


def test_report_puts_chance_beside_the_numbers():
    result = {"n": 100, "num_classes": 10, "chance": 0.1, "patch_size": 8,
              "views": {"clean": {"accuracy": 0.9, "confidence": 0.85},
                        "shuffle": {"accuracy": 0.42, "confidence": 0.6, "agreement": 0.45}}}
    text = format_negative_diagnostics(result)
    assert "on 100 test images, patch size 8 px, 10 classes (chance 10.0 %)" in text
    assert "| clean | 90.0 | 85.0 | - |" in text
    assert "| shuffle | 42.0 | 60.0 | 45.0 |" in text
    assert "| chance | 10.0 | 10.0 | - |" in text


@torch.no_grad()
def test_a_bfloat16_model_takes_the_float32_batches_of_a_loader():
    """The float32 images are cast to the model's dtype (a RuntimeError on the dtype mismatch before); the views only
    move pixels, so the result equals that of the loader cast to bfloat16 by hand."""
    model = _vit("learn").to(torch.bfloat16)
    loader = _loader(count=8, batch=4, seed=1)
    result = diagnose_negatives(model, loader, patch_size=8, seed=2)
    by_hand = diagnose_negatives(model, [(x.bfloat16(), y) for x, y in loader], patch_size=8, seed=2)
    assert result == by_hand and result["n"] == 8


def test_labels_the_model_cannot_predict_are_refused_not_counted_as_wrong():
    """A 5-class model diagnosed on 10-class data counted labels 5..9 as wrong predictions (accuracy silently low,
    'chance' 1/5); soft labels over another class count likewise. Both are refused, naming the fix."""
    images = torch.rand(6, 3, 32, 32)
    with pytest.raises(ValueError, match=r"labels 0..9 outside the model's 5 classes"):
        diagnose_negatives(Constant([1.0, 0, 0, 0, 0]), [(images, torch.tensor([0, 9, 1, 2, 3, 4]))], patch_size=8)
    with pytest.raises(ValueError, match=r"soft labels over 10 classes but the model predicts 5"):
        diagnose_negatives(Constant([1.0, 0, 0, 0, 0]), [(images, torch.full((6, 10), 0.1))], patch_size=8)
    result = diagnose_negatives(Constant([1.0, 0, 0, 0, 0]), [(images, torch.tensor([0, 0, 1, 2, 3, 4]))],
                                patch_size=8, kinds=["shuffle"])
    assert result["views"]["clean"]["accuracy"] == pytest.approx(2 / 6)
