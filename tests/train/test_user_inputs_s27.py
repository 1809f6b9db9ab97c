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


@pytest.mark.parametrize(("options", "message"), [
    ({"max_epochs": 2, "min_epochs": 5}, r"trainer.min_epochs \(5\) is larger than trainer.max_epochs \(2\)"),
    ({"max_steps": 3, "min_steps": 10}, r"trainer.min_steps \(10\) is larger than trainer.max_steps \(3\)"),
])
def test_a_minimum_above_the_maximum_is_refused(options, message):
    """``--trainer.min_epochs 5 --trainer.max_epochs 2`` trained 2 epochs without a word (Lightning stops at max)."""
    with pytest.raises(ConfigError, match=message):
        check_trainer_options(options)


def test_a_minimum_below_the_maximum_or_with_no_maximum_is_accepted():
    check_trainer_options({"max_epochs": 5, "min_epochs": 2, "min_steps": 10})
    check_trainer_options({"max_epochs": -1, "max_steps": 20, "min_epochs": 3})


def test_barebones_is_refused_naming_the_option_not_vitlabs_logger():
    """``--trainer.barebones true`` failed in Lightning with a message about vitlab's internal CSV logger object."""
    with pytest.raises(ConfigError, match="trainer.barebones: true turns off logging and checkpointing.*drop it"):
        check_trainer_options({"barebones": True})
    check_trainer_options({"barebones": False})
