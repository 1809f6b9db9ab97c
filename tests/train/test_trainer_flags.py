"""lightning.Trainer's boolean keywords given other values through the Python API (the CLI's typed parser refuses
them already): Lightning reads any truthy value as true, and ``deterministic: "yes"`` turns off cuDNN benchmarking
without making torch deterministic."""

from __future__ import annotations

import pytest

from vitlab.errors import ConfigError
from vitlab.train.run import check_trainer_options


@pytest.mark.parametrize(("flag", "value"), [("deterministic", "yes"), ("detect_anomaly", "x"),
                                             ("enable_progress_bar", 1), ("benchmark", "false"),
                                             ("inference_mode", 0.0)])
def test_a_boolean_trainer_option_given_another_value_is_refused_naming_it(flag, value):
    with pytest.raises(ConfigError, match=rf"trainer.{flag} must be true.*false.*got {value!r}"):
        check_trainer_options({flag: value})


@pytest.mark.parametrize("value", [True, False, "warn", None])
def test_deterministic_keeps_lightnings_values(value):
    assert check_trainer_options({"deterministic": value, "detect_anomaly": False, "enable_progress_bar": True}) is None
