"""The study estimate counts the points an intrinsic-dimension sweep's refinement can add (`refine_points`), checked
against the refinement loop itself (`vitlab.peft.intrinsic.sweep.refinement_point`) for every threshold position."""

from __future__ import annotations

import pytest

from vitlab.peft.intrinsic.sweep import refinement_point
from vitlab.study.estimate import refine_points


def _refined(grid: list[int], true_d90: float, ratio: float) -> int:
    """Points the sweep adds when accuracy reaches the threshold exactly from ``true_d90`` on."""
    points = {d: float(d >= true_d90) for d in grid}
    added = 0
    while (d := refinement_point(points, 0.5, ratio)) is not None:
        points[d] = float(d >= true_d90)
        added += 1
    return added


@pytest.mark.parametrize(("grid", "ratio"), [([10, 100, 1000, 10000], 2.0), ([10, 100, 1000, 10000], 1.5),
                                             ([8], 2.0), ([16, 64, 4096], 2.0), ([10, 100, 1000], None)])
def test_refine_points_is_the_most_the_refinement_adds(grid, ratio):
    positions = [low * (high / low) ** f for low, high in zip(grid, grid[1:], strict=False)
                 for f in (0.01, 0.3, 0.5, 0.7, 0.99)]
    added = [_refined(grid, d90, ratio) if ratio else 0 for d90 in positions] or [0]
    assert refine_points(grid, ratio) == max(added)
