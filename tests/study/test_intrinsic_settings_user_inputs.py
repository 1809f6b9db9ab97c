"""``peft.options.sweep`` values a user gets wrong: refused with the key named, before the reference run."""

import pytest

from vitlab.study.intrinsic import SweepSettings


@pytest.mark.parametrize(("values", "message"), [
    ({"lr": float("inf")}, r"sweep.lr must be a finite number > 0"),  # was accepted: every point diverged
    ({"published_d90": -1.0}, r"sweep.published_d90 must be a subspace dimension >= 1"),  # was printed as is
    ({"published_d90": float("nan")}, r"sweep.published_d90"),
    ({"refine_ratio": float("inf")}, r"sweep.refine_ratio must be a number > 1"),  # was a silent 'no refinement'
])
def test_sweep_settings_refuse_non_finite_and_meaningless_values(values, message):
    with pytest.raises(ValueError, match=message):
        SweepSettings(**values)


def test_sweep_settings_keep_valid_values():
    settings = SweepSettings(lr=0.3, published_d90=750.0, refine_ratio=1.5, dims=[100, 10, 10])
    assert settings.grid(max_dim=50) == [10, 50] and settings.refine_ratio == 1.5
