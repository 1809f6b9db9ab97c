"""The robustness summaries of `vitlab.eval.robustness.corruption_metrics` and the report, on hand-made numbers."""

import math

import pytest

from vitlab.eval import (
    ALEXNET_CLEAN_ERROR,
    ALEXNET_ERRORS,
    COMMON_CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    corruption_metrics,
    format_robustness_report,
)

# AlexNet mean errors as printed in ../shared/research/negaug.md (Hendrycks; AugMix ALEXNET_ERR), Hendrycks' order.
NOTES_ALEXNET = [0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360, 0.866816, 0.826572, 0.819324,
                 0.564592, 0.853204, 0.646056, 0.717840, 0.606500]


def test_alexnet_table_matches_the_published_numbers():
    assert list(COMMON_CORRUPTIONS) == list(ALEXNET_ERRORS)
    assert [ALEXNET_ERRORS[c] for c in COMMON_CORRUPTIONS] == NOTES_ALEXNET
    assert sum(NOTES_ALEXNET) / 15 == pytest.approx(0.78899, abs=5e-6)
    assert ALEXNET_CLEAN_ERROR == 0.4348


def test_two_corruptions_by_hand():
    accuracy = {"gaussian_noise": {1: 0.9, 2: 0.8, 3: 0.7, 4: 0.6, 5: 0.5},
                "contrast": {1: 0.5, 2: 0.5, 3: 0.4, 4: 0.2, 5: 0.1}}
    m = corruption_metrics(accuracy)
    # (0.9 + 0.8 + 0.7 + 0.6 + 0.5 + 0.5 + 0.5 + 0.4 + 0.2 + 0.1) / 10 = 5.2 / 10
    assert m["mean_accuracy"] == pytest.approx(0.52)
    assert m["mce_unnormalised"] == pytest.approx(48.0)
    assert m["per_severity"] == pytest.approx({1: 0.7, 2: 0.65, 3: 0.55, 4: 0.4, 5: 0.3})
    assert m["per_corruption"] == pytest.approx({"gaussian_noise": 0.7, "contrast": 0.34})
    assert len(m["missing_common"]) == 13 and "contrast" not in m["missing_common"]
    assert "extra_mean_accuracy" not in m and "mce" not in m


def test_extra_corruptions_are_summarised_apart():
    accuracy = {c: {s: 0.6 for s in range(1, 6)} for c in COMMON_CORRUPTIONS}
    accuracy["saturate"] = {s: 0.1 * s for s in range(1, 6)}
    accuracy["spatter"] = {s: 0.0 for s in range(1, 6)}
    m = corruption_metrics(accuracy)
    assert m["mean_accuracy"] == pytest.approx(0.6) and m["mce_unnormalised"] == pytest.approx(40.0)
    assert m["per_severity"] == pytest.approx({s: 0.6 for s in range(1, 6)})
    assert set(m["per_corruption"]) == set(COMMON_CORRUPTIONS) and m["missing_common"] == []
    assert m["extra_per_corruption"] == pytest.approx({"spatter": 0.0, "saturate": 0.3})
    assert m["extra_mean_accuracy"] == pytest.approx(0.15)  # (0.1 + ... + 0.5 + 5 * 0) / 10
    assert list(m["extra_per_corruption"]) == [c for c in EXTRA_CORRUPTIONS if c in ("spatter", "saturate")]


def test_alexnet_normalised_mce_and_relative_mce():
    # Errors chosen so that every CE_c is exactly 0.5 and every relative CE_c is exactly 0.25.
    clean_error = 0.1
    accuracy = {}
    for c in COMMON_CORRUPTIONS:
        alex = ALEXNET_ERRORS[c]
        target = 0.5 * alex  # mean over severities of E_{c,s}
        spread = [-0.02, -0.01, 0.0, 0.01, 0.02]  # CE uses the mean over severities: the spread cancels
        accuracy[c] = {s: 1.0 - (target + spread[s - 1]) for s in range(1, 6)}
    m = corruption_metrics(accuracy, clean_accuracy=1.0 - clean_error, alexnet_normalise=True)
    assert m["ce"] == pytest.approx({c: 0.5 for c in COMMON_CORRUPTIONS})
    assert m["mce"] == pytest.approx(50.0)
    expected_rce = {c: (0.5 * ALEXNET_ERRORS[c] - clean_error) / (ALEXNET_ERRORS[c] - 0.4348)
                    for c in COMMON_CORRUPTIONS}
    assert m["relative_ce"] == pytest.approx(expected_rce)
    assert m["relative_mce"] == pytest.approx(100 * sum(expected_rce.values()) / 15)
    # brightness by hand: (0.282296 - 0.1) / (0.564592 - 0.4348) = 1.40451...
    assert m["relative_ce"]["brightness"] == pytest.approx(0.182296 / 0.129792)
    # without a clean accuracy there is no relative mCE
    assert "relative_mce" not in corruption_metrics(accuracy, alexnet_normalise=True)


def test_alexnet_mce_with_one_error_everywhere():
    accuracy = {c: {s: 0.6 for s in range(1, 6)} for c in COMMON_CORRUPTIONS}  # error 0.4
    m = corruption_metrics(accuracy, alexnet_normalise=True)
    assert m["mce"] == pytest.approx(100 * sum(0.4 / e for e in NOTES_ALEXNET) / 15)
    assert m["mce"] == pytest.approx(51.738, abs=0.001)  # 40 x mean(1 / AlexNet error)
    assert m["mce_unnormalised"] == pytest.approx(40.0)


@pytest.mark.parametrize(
    ("accuracy", "kwargs", "message"),
    [
        ({"fog": {1: 0.5}, "haze": {1: 0.5}}, {}, "unknown corruptions ['haze']"),
        ({"saturate": {1: 0.5}}, {}, "no common corruption"),
        ({"fog": {s: 0.5 for s in range(1, 6)}}, {"alexnet_normalise": True}, "needs all 15 common corruptions"),
        ({c: {1: 0.5} for c in COMMON_CORRUPTIONS}, {"alexnet_normalise": True}, "severities 1-5"),
    ],
)
def test_bad_inputs_name_the_problem(accuracy, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        corruption_metrics(accuracy, **kwargs)


def test_report_labels_generated_sets_and_prints_n():
    accuracy = {"gaussian_noise": {s: 1.0 - 0.1 * s for s in range(1, 6)}, "saturate": {s: 0.5 for s in range(1, 6)}}
    report = {"source": "generated", "folder": "/tmp/x", "n": 8, "n_available": 10, "accuracy": accuracy,
              "clean_accuracy": 0.95, "meta": {"seed": 3, "versions": {"imagecorruptions-imaug": "1.1.5"}},
              "metrics": corruption_metrics(accuracy, 0.95)}
    text = format_robustness_report(report)
    assert "not the published CIFAR-10-C/CIFAR-100-C benchmark" in text
    assert "imagecorruptions-imaug 1.1.5" in text and "seed 3" in text
    assert "Test images per corruption and severity: 8 of 10." in text
    assert "mean accuracy over 1 common corruptions x 5 severities: 70.00 %" in text
    assert "unnormalised mCE (100 - mean accuracy): 30.00" in text
    assert "clean accuracy on the same images: 95.00 %" in text
    assert "| gaussian_noise | 90.00 | 80.00 | 70.00 | 60.00 | 50.00 | 70.00 |" in text
    assert "| saturate (extra) | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 |" in text
    assert "| accuracy (%) | 90.00 | 80.00 | 70.00 | 60.00 | 50.00 |" in text
    published = dict(report, source="published", meta=None, n_available=None)
    assert "not the published" not in format_robustness_report(published)
    assert math.isclose(report["metrics"]["extra_mean_accuracy"], 0.5)
