"""Vectorised glass blur: exact against the sequential loop for shared offsets, statistical against the references."""

import numpy as np
import pytest

from vitlab.eval.corruptions import corrupt_images
from vitlab.eval.glass_blur import GLASS_BLUR_PARAMS, glass_blur, glass_blur_sequential, swap_offsets


def smooth_images(count: int, height: int = 32, width: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 (count, H, W, 3): a few sinusoidal gratings per channel plus one flat rectangle (edges)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    out = np.empty((count, height, width, 3))
    for i in range(count):
        for c in range(3):
            fy, fx = rng.uniform(1, 6, 2)
            out[i, ..., c] = 0.5 + 0.25 * np.sin(2 * np.pi * (fy * yy + fx * xx) + rng.uniform(0, 6.3))
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        out[i, top : top + height // 3, left : left + width // 3] = rng.uniform(0, 1, 3)
    return np.round(255 * out.clip(0, 1)).astype(np.uint8)


def blur_strength(clean: np.ndarray, blurred: np.ndarray) -> tuple[float, float]:
    """(mean absolute difference to the clean images, high-frequency energy = mean squared neighbour difference)."""
    out = blurred.astype(np.float64)
    mad = float(np.abs(out - clean).mean())
    high_frequency = float((np.diff(out, axis=1) ** 2).mean() + (np.diff(out, axis=2) ** 2).mean())
    return mad, high_frequency


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("channels", [3, 1])
def test_vectorised_equals_sequential_for_the_same_offsets(severity, channels):
    images = smooth_images(3, 36, 44, seed=severity)[..., :channels]  # non-square
    offsets = swap_offsets(3, 36, 44, severity, np.random.default_rng(severity))
    fast = glass_blur(images, severity, offsets=offsets)
    assert fast.dtype == np.uint8 and fast.shape == images.shape
    np.testing.assert_array_equal(fast, glass_blur_sequential(images, severity, offsets))
    assert not np.array_equal(fast, images)


def test_offsets_cover_the_reference_positions_and_range():
    for severity, (_, delta, iterations) in enumerate(GLASS_BLUR_PARAMS, start=1):
        offsets = swap_offsets(5, 32, 40, severity, np.random.default_rng(0))
        # positions h = H - d .. d + 1 and w = W - d .. d + 1 (descending), as in the reference loop
        assert offsets.shape == (iterations, (32 - 2 * delta) * (40 - 2 * delta), 2, 5)
        assert offsets.min() == -delta and offsets.max() == delta - 1
        counts = np.bincount((offsets + delta).ravel(), minlength=2 * delta)
        assert counts.min() > 0.9 * offsets.size / (2 * delta)  # uniform over [-d, d - 1]


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_blur_strength_matches_the_sequential_reference(severity):
    images = smooth_images(12, seed=7)
    ours = blur_strength(images, glass_blur(images, severity, rng=np.random.default_rng(1)))
    offsets = swap_offsets(12, 32, 32, severity, np.random.default_rng(12345))  # independent draws
    reference = blur_strength(images, glass_blur_sequential(images, severity, offsets))
    assert ours[0] == pytest.approx(reference[0], rel=0.03)
    assert ours[1] == pytest.approx(reference[1], rel=0.06)
    # the tolerance separates severities: the neighbouring severity's high-frequency energy is far outside it
    for other in (severity - 1, severity + 1):
        if 1 <= other <= 5:
            other_offsets = swap_offsets(12, 32, 32, other, np.random.default_rng(12345))
            neighbour = blur_strength(images, glass_blur_sequential(images, other, other_offsets))
            assert abs(neighbour[1] / reference[1] - 1) > 0.25


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_blur_strength_matches_imagecorruptions(severity):
    from imagecorruptions import corruptions
    images = smooth_images(12, seed=11)
    ours = blur_strength(images, glass_blur(images, severity, rng=np.random.default_rng(2)))
    reference = np.stack([np.uint8(corruptions.glass_blur(image, severity, seed=100 + i))
                          for i, image in enumerate(images)])
    theirs = blur_strength(images, reference)
    assert ours[0] == pytest.approx(theirs[0], rel=0.03)
    assert ours[1] == pytest.approx(theirs[1], rel=0.06)


def test_flat_image_stays_flat_and_corrupt_images_uses_the_vectorised_blur():
    flat = np.full((2, 32, 32, 3), 128, dtype=np.uint8)
    np.testing.assert_array_equal(glass_blur(flat, 5, rng=np.random.default_rng(0)), flat)
    images = smooth_images(4, seed=3)
    expected = glass_blur(images, 2, rng=np.random.default_rng(9))
    np.testing.assert_array_equal(corrupt_images(images, "glass_blur", 2, seed=9), expected)
    grey = images[..., :1]  # 1 channel: repeated to 3 for the corruption, averaged back
    rgb = glass_blur(np.repeat(grey, 3, axis=-1), 2, rng=np.random.default_rng(9))
    np.testing.assert_array_equal(corrupt_images(grey, "glass_blur", 2, seed=9), rgb[..., :1])


@pytest.mark.parametrize(
    ("images", "severity", "message"),
    [
        (np.zeros((2, 32, 32, 3), dtype=np.float32), 1, "uint8"),
        (np.zeros((32, 32, 3), dtype=np.uint8), 1, r"\(N, H, W, C\)"),
        (np.zeros((2, 32, 32, 3), dtype=np.uint8), 6, "severity must be an int in 1..5"),
        (np.zeros((2, 8, 32, 3), dtype=np.uint8), 5, "larger than 8 px"),
    ],
)
def test_bad_inputs_name_the_fix(images, severity, message):
    with pytest.raises(ValueError, match=message):
        glass_blur(images, severity, rng=np.random.default_rng(0))


def test_one_parameter_row_per_severity():
    from vitlab.eval.corruptions import SEVERITIES
    from vitlab.eval.glass_blur import GLASS_BLUR_PARAMS

    assert len(GLASS_BLUR_PARAMS) == len(SEVERITIES) and tuple(SEVERITIES) == tuple(range(1, len(SEVERITIES) + 1))
