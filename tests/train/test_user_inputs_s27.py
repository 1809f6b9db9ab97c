"""The Lightning harness with what LightningCLI users write (session 27's hunt)."""

from __future__ import annotations

import datetime

import pytest

from vitlab.errors import ConfigError
from vitlab.train.run import check_trainer_options


@pytest.mark.parametrize("max_time", [{"minutes": -1}, "00:00:00:-5", datetime.timedelta(seconds=-3),
                                      "00:00:00:nan"])
def test_a_negative_max_time_is_refused_as_zero_is(max_time):
    """``max_time: {minutes: -1}`` stopped Lightning before the first step and saved random weights as a finished
    model with test metrics (zero was refused already)."""
    with pytest.raises(ConfigError, match="trainer.max_time is not a positive duration.*random weights"):
        check_trainer_options({"max_time": max_time})


def test_a_positive_max_time_is_accepted():
    check_trainer_options({"max_time": {"seconds": 1}})
    check_trainer_options({"max_time": "00:00:00:01"})
