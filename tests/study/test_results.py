"""The one aggregation of seeds (`aggregate_seeds`, `mean_interval`) and its two users, on hand-made numbers."""

import csv
import math

import pytest

from vitlab.study.results import aggregate_seeds, mean_interval, read_result_rows, summarize_study, write_csv


def test_mean_interval_is_the_student_t_interval_of_the_mean():
    mean, std, low, high = mean_interval([0.70, 0.72, 0.74])
    # mean 0.72, sample std 0.02, t_{0.975, 2} = 4.302653 -> half width 4.302653 * 0.02 / sqrt(3) = 0.049683
    assert (mean, std) == pytest.approx((0.72, 0.02))
    assert (low, high) == pytest.approx((0.72 - 0.0496828, 0.72 + 0.0496828), abs=1e-6)
    assert mean_interval([0.5]) is None and mean_interval([]) is None  # no spread from one seed
    with pytest.raises(ValueError, match="confidence must be in"):
        mean_interval([0.1, 0.2], confidence=95)


def test_aggregate_seeds_groups_in_first_seen_order_and_skips_missing_values():
    rows = [dict(method="lora", shots=5, seed=0, acc=0.60, neg=None),
            dict(method="full", shots=5, seed=0, acc=0.80, neg=0.2),
            dict(method="lora", shots=5, seed=1, acc=0.70, neg=0.4),
            dict(method="lora", shots=5, seed=2, acc=0.80, neg=0.6)]
    lora, full = aggregate_seeds(rows, ("method", "shots"), ("acc", "neg"))
    assert (lora["method"], lora["shots"], lora["seeds"]) == ("lora", 5, 3)
    assert [m["seed"] for m in lora["members"]] == [0, 1, 2]
    assert lora["acc"] == pytest.approx(0.70) and lora["acc_std"] == pytest.approx(0.10) and lora["acc_n"] == 3
    assert lora["neg"] == pytest.approx(0.5) and lora["neg_n"] == 2  # the None of seed 0 is not a value
    assert lora["neg_std"] == pytest.approx(math.sqrt(0.02))
    assert lora["acc_ci"] == pytest.approx((0.70 - 0.248413, 0.70 + 0.248413), abs=1e-6)  # t_{0.975,2}*0.1/sqrt(3)
    assert (full["acc"], full["acc_n"], full["acc_std"], full["acc_ci"]) == (0.80, 1, None, None)  # one seed
    with pytest.raises(ValueError, match=r"lacks \['shots'\]"):
        aggregate_seeds([{"method": "lora", "acc": 0.5}], ("method", "shots"), ("acc",))


def test_peft_study_summary_uses_the_same_aggregation():
    rows = [{"method": "linear", "shots": 5, "seed": s, "accuracy": a, "trainable_params": 1290, "train_time_s": t}
            for s, (a, t) in enumerate([(0.5, 1.0), (0.6, 2.0), (0.7, 3.0)])]
    rows.append({"method": "linear", "shots": "full", "seed": 0, "accuracy": 0.9, "trainable_params": 1290})
    few, full = summarize_study(rows)
    low, high = few.pop("accuracy_ci_low"), few.pop("accuracy_ci_high")
    assert few == {"method": "linear", "shots": 5, "seeds": 3, "accuracy_mean": 0.6, "accuracy_std": 0.1,
                   "trainable_params": 1290, "train_time_s": 2.0}
    half = 4.302653 * 0.1 / 3 ** 0.5  # t_{0.975, 2} (scipy.stats.t.ppf) x std / sqrt(n)
    assert (low, high) == pytest.approx((0.6 - half, 0.6 + half), abs=1e-6)
    # one seed: no spread is estimated, so none is written (it read "± 0.00")
    assert full["accuracy_std"] is None and full["accuracy_ci_low"] is None and full["seeds"] == 1
    assert "train_time_s" not in full
    with pytest.raises(ValueError, match="lacks"):
        summarize_study([{"method": "linear", "shots": 5}])


def test_result_rows_round_trip_through_csv(tmp_path):
    rows = [{"run": "lora-k5-s0", "method": "lora", "shots": 5, "seed": 0, "accuracy": 0.61, "trainable_params": 7},
            {"run": "lora-full-s0", "method": "lora", "shots": "full", "seed": 0, "accuracy": 0.9,
             "trainable_params": 7, "peak_memory_mb": 300.5}]
    path = write_csv(rows, tmp_path / "results.csv")
    with path.open(newline="") as handle:
        assert csv.DictReader(handle).fieldnames == ["run", "method", "shots", "seed", "accuracy", "trainable_params",
                                                     "peak_memory_mb"]
    assert read_result_rows(path) == rows and read_result_rows(tmp_path / "none.csv") == []


def test_result_rows_saved_again_by_a_spreadsheet_or_hand_edited_are_read_or_refused_naming_the_file(tmp_path):
    from vitlab.errors import DataError

    path = tmp_path / "results.csv"
    rows = [dict(run="a", method="lora", shots=5, seed=0, accuracy=0.5, trainable_params=10, config_hash="h1"),
            dict(run="b", method="full", shots="full", seed=1, accuracy=0.6, trainable_params=20, config_hash="h2")]
    write_csv(rows, path)
    text = path.read_text()
    path.write_text("\ufeff" + text, encoding="utf-8")  # Excel's "CSV UTF-8" adds a byte-order mark
    assert read_result_rows(path) == rows  # was a row keyed '\ufeffrun' (KeyError 'run' in the study's cache)
    path.write_text(text.replace("20", "20.0"))  # a spreadsheet writes integers as floats
    assert read_result_rows(path)[1]["trainable_params"] == 20
    for edited, match in [(text.replace("0.6", "60%"), r"line 3: accuracy='60%' is not a number"),
                          (text.replace("shots", "shot"), r"lacks the column\(s\) \['shots'\]"),
                          (text.replace(",full,1,", ",all,1,"), "line 3: shots='all' is neither a count nor 'full'"),
                          (text.replace("b,full", ",full"), "line 3 names no run"),
                          (text + "c,lora,5,0,0.5,10,h3,extra\n", "line 4 has more cells than the header")]:
        path.write_text(edited)
        with pytest.raises(DataError, match=f"{path}: {match}"):  # were ValueError / KeyError without the file
            read_result_rows(path)


def test_a_hand_edited_sweep_file_is_read_as_numbers_or_refused(tmp_path):
    import json

    from vitlab.errors import DataError
    from vitlab.study.results import _read_sweep

    path = tmp_path / "intrinsic_dim.json"
    sweep = dict(reference=0.85, threshold=0.765, points={"100": 0.62, "1000": 0.81})
    path.write_text(json.dumps(dict(sweep, d90="1000", d90_interpolated="562.3")))
    read = _read_sweep(path)  # was kept as text, which the report showed as "not reached"
    assert (read["d90"], read["d90_interpolated"]) == (1000, 562.3)
    path.write_text(json.dumps(dict(sweep, d90=None)))
    assert _read_sweep(path)["d90"] is None
    for d90 in ("about 1000", 500):  # not a number; not a measured point
        path.write_text(json.dumps(dict(sweep, d90=d90)))
        with pytest.raises(DataError, match=f"{path}: not an intrinsic_dim.json"):
            _read_sweep(path)


@pytest.mark.parametrize("values", [[0.5, float("nan")], [0.5, float("inf")], ["a", "b"], [0.5, None], [True, 0.5]])
def test_mean_interval_refuses_what_is_not_a_finite_number(values):
    with pytest.raises(ValueError, match="mean_interval takes finite numbers"):  # was AttributeError / TypeError
        mean_interval(values)
