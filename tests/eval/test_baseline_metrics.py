"""mCE / relative mCE normalised by another baseline's table than AlexNet's, and the checks on that table."""

import json

import pytest

from vitlab.errors import ConfigError
from vitlab.eval import ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS, COMMON_CORRUPTIONS, corruption_metrics


def _accuracy(value):
    return {c: {s: value for s in range(1, 6)} for c in COMMON_CORRUPTIONS}


def test_a_baseline_table_replaces_alexnet_in_ce_and_relative_ce():
    baseline = dict.fromkeys(COMMON_CORRUPTIONS, 0.5)
    metrics = corruption_metrics(_accuracy(0.75), clean_accuracy=0.9, alexnet_normalise=True,
                                 baseline_errors=baseline, baseline_clean_error=0.3)
    assert metrics["ce"] == pytest.approx(dict.fromkeys(COMMON_CORRUPTIONS, 0.25 / 0.5))  # 0.5
    assert metrics["mce"] == pytest.approx(50.0)
    assert metrics["relative_mce"] == pytest.approx(100 * (0.25 - 0.1) / (0.5 - 0.3))  # 75
    same = corruption_metrics(_accuracy(0.75), 0.9, True, baseline_errors=dict(ALEXNET_ERRORS),
                              baseline_clean_error=ALEXNET_CLEAN_ERROR)
    assert same == corruption_metrics(_accuracy(0.75), 0.9, True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"baseline_errors": {c: 0.5 for c in COMMON_CORRUPTIONS[1:]}}, r"baseline_errors lacks \['gaussian_noise'\]"),
        ({"baseline_errors": dict.fromkeys(COMMON_CORRUPTIONS, 50.0)}, r"errors are fractions in \(0, 1\]"),
        ({"baseline_errors": dict.fromkeys(COMMON_CORRUPTIONS, 0.5), "alexnet_normalise": False},
         "pass alexnet_normalise=True too"),
        ({"baseline_errors": dict.fromkeys(COMMON_CORRUPTIONS, 0.5), "clean_accuracy": 0.9},
         "needs the baseline's clean error: pass baseline_clean_error"),
        ({"baseline_clean_error": 0.3}, "baseline_clean_error goes with baseline_errors"),
        ({"baseline_errors": [0.5] * 15}, "baseline_errors must be a dict"),
    ],
)
def test_an_unusable_baseline_table_is_refused(kwargs, message):
    kwargs = {"alexnet_normalise": True, **kwargs}
    with pytest.raises(ConfigError, match=message):
        corruption_metrics(_accuracy(0.75), **kwargs)


def test_accuracies_read_back_from_json_name_the_conversion():
    text = json.dumps({"contrast": {1: 0.5}})
    with pytest.raises(ConfigError, match="read back from JSON has string keys"):
        corruption_metrics(json.loads(text))
    read = {c: {int(s): a for s, a in v.items()} for c, v in json.loads(text).items()}
    assert corruption_metrics(read)["mean_accuracy"] == 0.5
