"""Vectorised ImageNet-C glass blur over a batch of images (the slow corruption of every public implementation).

The reference (Hendrycks; ``imagecorruptions``) blurs with a Gaussian, then walks the pixels from the bottom-right
to the top-left and, for each pixel ``(h, w)``, draws ``dx, dy`` uniform in ``[-max_delta, max_delta - 1]`` and
"swaps" it with ``(h + dy, w + dx)``, ``iterations`` times, then blurs again. The swap is written
``x[h, w], x[h2, w2] = x[h2, w2], x[h, w]`` on row views of an (H, W, C) array, which *copies* ``x[h2, w2]`` into
``x[h, w]`` and leaves ``x[h2, w2]`` unchanged (the published ImageNet-C and CIFAR-10-C were made this way, and
imagecorruptions still does it). It is order-dependent, hence a per-pixel Python (or numba) loop.

Here the same copies run as a *wavefront*: the step at ``(h, w)`` touches rows ``[h - d, h + d - 1]`` and columns
``[w - d, w + d - 1]`` (``d = max_delta``), so steps ``2d`` apart in either direction commute, and giving position
``(h, w)`` the time ``t = 2d * (H - h) + (W - w)`` keeps every pair of possibly overlapping steps in the reference's
order while all steps with equal ``t`` are disjoint. Each of the ``~2dH + W`` time steps moves all its positions for
all images at once, so the result equals the sequential algorithm for the same random offsets (see
`glass_blur_sequential`); the offsets are per image, from an explicit ``numpy.random.Generator`` instead of the
global NumPy RNG.

Example:
    >>> import numpy as np
    >>> images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    >>> glass_blur(images, severity=3, rng=np.random.default_rng(0)).shape
    (4, 32, 32, 3)
"""

from __future__ import annotations

import numpy as np

from vitlab.errors import ConfigError

__all__ = ["GLASS_BLUR_PARAMS", "glass_blur", "glass_blur_sequential", "swap_offsets"]

#: (sigma, max_delta, iterations) per severity 1..5, as in ImageNet-C / imagecorruptions.
GLASS_BLUR_PARAMS: tuple[tuple[float, int, int], ...] = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))


def _blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """skimage.filters.gaussian(x / 255, sigma, channel_axis=-1) on (N, H, W, C): nearest border, truncate 4.

    Runs on blocks of about 2**19 values (cache-sized; large blocks are several times slower).
    """
    from scipy.ndimage import gaussian_filter  # here: vitlab.eval imports this module for its --help defaults

    out = np.empty(images.shape, dtype=np.float64)
    block = max(1, 2**19 // int(np.prod(images.shape[1:])))
    for start in range(0, images.shape[0], block):
        chunk = images[start : start + block] / 255.0
        out[start : start + block] = gaussian_filter(chunk, sigma=(0, sigma, sigma, 0), mode="nearest", truncate=4.0)
    return out


def _positions(height: int, width: int, delta: int) -> tuple[np.ndarray, np.ndarray]:
    """Swap positions in the reference's order: rows ``H - d .. d + 1`` descending, columns likewise."""
    rows = np.arange(height - delta, delta, -1)
    cols = np.arange(width - delta, delta, -1)
    return np.repeat(rows, cols.size), np.tile(cols, rows.size)


def swap_offsets(count: int, height: int, width: int, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Random offsets ``(iterations, P, 2, count)`` (dy, dx) for ``count`` images, positions in reference order."""
    _check_severity(severity)
    _, delta, iterations = GLASS_BLUR_PARAMS[severity - 1]
    hs, _ = _positions(height, width, delta)
    return rng.integers(-delta, delta, size=(iterations, hs.size, 2, count))


def _check_severity(severity: int) -> None:
    # GLASS_BLUR_PARAMS has one row per severity (the severities of vitlab.eval.corruptions.SEVERITIES, which imports
    # this module, so it cannot be imported here)
    integer = isinstance(severity, int | np.integer) and not isinstance(severity, bool)
    if not integer or not 1 <= severity <= len(GLASS_BLUR_PARAMS):
        raise ConfigError(f"severity must be an int in 1..{len(GLASS_BLUR_PARAMS)}, got {severity!r}")


def _check(images: np.ndarray, severity: int) -> None:
    if (not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4
            or not 1 <= images.shape[-1] <= 4):
        raise ConfigError("images must be a uint8 array (N, H, W, C) with 1 <= C <= 4; convert float images with "
                         "(x * 255).round().astype('uint8')")
    _check_severity(severity)
    delta = GLASS_BLUR_PARAMS[severity - 1][1]
    if min(images.shape[1:3]) <= 2 * delta:
        raise ConfigError(f"glass blur at severity {severity} needs images larger than {2 * delta} px")


def _check_offsets(offsets: np.ndarray, count: int, height: int, width: int, severity: int) -> None:
    _, delta, iterations = GLASS_BLUR_PARAMS[severity - 1]
    expected = (iterations, _positions(height, width, delta)[0].size, 2, count)
    offsets = np.asarray(offsets)
    if offsets.shape != expected or not np.issubdtype(offsets.dtype, np.integer):
        raise ConfigError(f"offsets must be ints of shape {expected} for these images at severity {severity}, got "
                          f"{offsets.dtype} {offsets.shape}: make them with swap_offsets({count}, {height}, {width}, "
                          f"{severity}, rng)")
    if offsets.size and (offsets.min() < -delta or offsets.max() >= delta):
        raise ConfigError(f"offsets must lie in [-{delta}, {delta - 1}] at severity {severity}: make them with "
                          "swap_offsets")


def glass_blur(
    images: np.ndarray, severity: int, rng: np.random.Generator | None = None, offsets: np.ndarray | None = None
) -> np.ndarray:
    """ImageNet-C glass blur of a batch, vectorised over images and over commuting swaps.

    Args:
        images: uint8 ``(N, H, W, C)``.
        severity: 1..5.
        rng: source of the swap offsets (a fresh unseeded generator when None and ``offsets`` is None).
        offsets: explicit offsets from `swap_offsets` (for exact comparisons); overrides ``rng``.

    Returns:
        uint8 ``(N, H, W, C)``.
    """
    _check(images, severity)
    sigma, delta, _ = GLASS_BLUR_PARAMS[severity - 1]
    count, height, width, _ = images.shape
    if offsets is None:
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise ConfigError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}: pass "
                              "rng=np.random.default_rng(seed)")
        offsets = swap_offsets(count, height, width, severity, rng if rng is not None else np.random.default_rng())
    else:
        _check_offsets(offsets, count, height, width, severity)
    x = (_blur(images, sigma) * 255).astype(np.uint8)
    packed = np.zeros((count, height, width, 4), dtype=np.uint8)  # one uint32 per pixel: 1-D moves are fastest
    packed[..., : x.shape[-1]] = x
    pixels = packed.view(np.uint32).reshape(-1)
    hs, ws = _positions(height, width, delta)
    times = 2 * delta * (height - hs) + (width - ws)
    order = np.argsort(times, kind="stable")
    edges = np.concatenate([[0], np.flatnonzero(np.diff(times[order])) + 1, [order.size]])
    first_pixel = np.arange(count) * (height * width)
    target = ((hs * width + ws)[:, None] + first_pixel)[order]  # (P, N) flat pixel index, in wavefront order
    for step in offsets:
        source = ((hs[:, None] + step[:, 0]) * width + ws[:, None] + step[:, 1] + first_pixel)[order]
        for start, stop in zip(edges[:-1], edges[1:], strict=True):
            pixels[target[start:stop].ravel()] = pixels[source[start:stop].ravel()]
    x = packed[..., : x.shape[-1]]
    return (np.clip(_blur(x, sigma), 0, 1) * 255).astype(np.uint8)


def glass_blur_sequential(images: np.ndarray, severity: int, offsets: np.ndarray) -> np.ndarray:
    """The reference's sequential loop with given offsets (slow; a test oracle for `glass_blur`)."""
    _check(images, severity)
    sigma, delta, _ = GLASS_BLUR_PARAMS[severity - 1]
    count, height, width, _ = images.shape
    x = (_blur(images, sigma) * 255).astype(np.uint8)
    hs, ws = _positions(height, width, delta)
    for step in offsets:
        for index, (h, w) in enumerate(zip(hs, ws, strict=True)):
            for n in range(count):
                x[n, h, w] = x[n, h + step[index, 0, n], w + step[index, 1, n]]
    return (np.clip(_blur(x, sigma), 0, 1) * 255).astype(np.uint8)
