"""Geometry rule, ImageNet-C-disjoint augmentation presets, normalisation and the inference transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from vitlab.data import AUGMENT_PRESETS, IMAGENET_C_OPS, RandAugmentImageNetCDisjoint, build_augment, fit_geometry
from vitlab.data.transforms import EvalTransform, Normalize, build_eval_transform

FMNIST_CFG = {"name": "fashion_mnist", "img_size": 32, "in_chans": 1, "mean": [0.286], "std": [0.353],
              "source_chans": 1, "native_size": 28, "pad_to": 32}


def _record_ops(monkeypatch, cls) -> list[str]:
    seen: list[str] = []
    original = cls._apply_image_or_video_transform

    def spy(self, image, transform_id, *args, **kwargs):
        seen.append(transform_id)
        return original(self, image, transform_id, *args, **kwargs)

    monkeypatch.setattr(cls, "_apply_image_or_video_transform", spy)
    return seen


def test_randaugment_never_applies_imagenet_c_ops(monkeypatch):
    aug = build_augment("randaugment")
    assert isinstance(aug, RandAugmentImageNetCDisjoint)
    expected = set(v2.RandAugment._AUGMENTATION_SPACE) - set(IMAGENET_C_OPS)
    assert set(aug._AUGMENTATION_SPACE) == expected and len(expected) == 10
    seen = _record_ops(monkeypatch, RandAugmentImageNetCDisjoint)
    img = torch.randint(0, 256, (1, 16, 16), dtype=torch.uint8)
    for _ in range(200):
        out = aug(img)
    assert set(seen) == expected  # every remaining op is used, none of the four
    assert out.shape == img.shape and out.dtype == torch.uint8


def test_augmix_uses_partial_space_only(monkeypatch):
    aug = build_augment("augmix", augmix_severity=2)
    assert isinstance(aug, v2.AugMix) and aug.all_ops is False and aug.severity == 2
    seen = _record_ops(monkeypatch, v2.AugMix)
    img = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    for _ in range(60):
        out = aug(img)
    assert set(seen) == set(v2.AugMix._PARTIAL_AUGMENTATION_SPACE) and not set(seen) & set(IMAGENET_C_OPS)
    assert out.shape == img.shape and out.dtype == torch.uint8


def test_augment_presets_registry():
    assert AUGMENT_PRESETS == ("none", "randaugment", "augmix") and build_augment("none") is None
    with pytest.raises(ValueError, match="valid presets: none, randaugment, augmix"):
        build_augment("autoaugment")


def test_fit_geometry_pads_mnist_family_then_resizes():
    img = torch.randint(1, 256, (2, 1, 28, 28), dtype=torch.uint8)
    padded = fit_geometry(img, 32, pad_to=32)
    assert padded.shape == (2, 1, 32, 32) and torch.equal(padded[..., 2:30, 2:30], img)
    border = padded.clone()
    border[..., 2:30, 2:30] = 0
    assert int(border.sum()) == 0
    assert fit_geometry(img, 28, pad_to=32) is img  # native size requested: untouched
    big = fit_geometry(img, 64, pad_to=32)
    assert torch.equal(big, TF.resize(padded, [64, 64], antialias=True))


def test_fit_geometry_resizes_without_pad_rule():
    img = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    assert fit_geometry(img, 32).shape == (3, 32, 32)
    assert fit_geometry(torch.zeros(1, 3, 40, 36, dtype=torch.uint8), 16, pad_to=32).shape == (1, 3, 16, 16)


def test_normalize_scales_and_repeats():
    norm = Normalize([0.5], [0.25], out_chans=3)
    x = norm(torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2))
    assert x.shape == (1, 3, 1, 2) and x.dtype == torch.float32 and x.is_contiguous()
    assert torch.allclose(x[0, :, 0], torch.tensor([[-2.0, 2.0]] * 3))
    with pytest.raises(ValueError, match="only 1 -> 3"):
        Normalize([0.5] * 3, [0.5] * 3, out_chans=1)


def test_eval_transform_converts_any_image_to_model_input():
    tf = build_eval_transform(FMNIST_CFG)
    gray = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    x = tf(gray)
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x[0, 2:30, 2:30], (torch.from_numpy(gray) / 255 - 0.286) / 0.353)
    assert torch.allclose(x[0, 0], torch.full((32,), -0.286 / 0.353))
    rgba = Image.fromarray(np.dstack([gray] * 3 + [np.full_like(gray, 255)]))
    assert torch.allclose(tf(rgba), x, atol=1e-6)  # RGB(A) -> grey by luma; equal channels keep their value
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 90, 3), dtype=np.uint8))
    assert tf(photo).shape == (1, 32, 32)  # resized to the native 28 px (center crop), then padded
    rgb_model = build_eval_transform({**FMNIST_CFG, "in_chans": 3, "mean": [0.286] * 3, "std": [0.353] * 3})
    y = rgb_model(torch.from_numpy(gray).unsqueeze(0))
    assert y.shape == (3, 32, 32) and torch.equal(y[0], y[2]) and torch.allclose(y[1], x[0])


def test_eval_transform_rejects_bad_input():
    tf = EvalTransform(FMNIST_CFG)
    with pytest.raises(TypeError, match="astype"):
        tf(np.zeros((28, 28), dtype=np.float32))
    with pytest.raises(ValueError, match="data_config lacks"):
        EvalTransform({"img_size": 32})
    with pytest.raises(ValueError, match="in_chans=3 entries"):
        EvalTransform({**FMNIST_CFG, "in_chans": 3})


def test_eval_transform_names_the_uint8_conversion_for_the_input_type():
    transform = build_eval_transform({"img_size": 8, "in_chans": 3, "mean": [0.5] * 3, "std": [0.5] * 3})
    with pytest.raises(TypeError, match=r"images in \[0, 1\] with \(x \* 255\).round\(\).to\(torch.uint8\)"):
        transform(torch.rand(3, 8, 8))
    with pytest.raises(TypeError, match=r"with \(x \* 255\).round\(\).astype\('uint8'\)"):
        transform(np.random.rand(8, 8, 3))
