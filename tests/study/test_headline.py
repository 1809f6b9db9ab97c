"""The study report's headline effects on hand-made numbers: difference, spread, verdict, 1-seed rows, selections,
the config's checks, and the "Headline effects" / "What this study does not show" sections of report.md and .html."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest

from vitlab.study.config import study_config_from_dict
from vitlab.study.headline import LARGER, NOISE, d90_row, headline_rows, select_group
from vitlab.study.report import write_study_report

from .test_report import make_study


def _run(backbone: str, method: str, negatives: str, seed: int, clean: float | None, params: int = 100) -> dict:
    return {"backbone": backbone, "method": method, "negatives": negatives, "shots": 20, "seed": seed,
            "trainable_params": params, "clean_acc": clean}


def _spec(a: dict, b: dict, metric: str = "clean_acc") -> dict:
    return {"advance": "test", "metric": metric, "a": a, "b": b}


def test_paired_difference_spread_and_verdict():
    # per-seed differences 0.10 and 0.06: mean 0.08, paired std 0.02 * sqrt(2)
    runs = [_run("iformer", "full", "none", 0, 0.70, 1600), _run("iformer", "full", "none", 1, 0.66, 1600),
            _run("vit", "full", "none", 0, 0.60, 1000), _run("vit", "full", "none", 1, 0.60, 1000)]
    row = headline_rows(runs, [_spec({"backbone": "iformer"}, {"backbone": "vit"})])[0]
    assert row["a_mean"] == pytest.approx(0.68) and row["b_mean"] == pytest.approx(0.60)
    assert row["difference"] == pytest.approx(0.08)
    assert row["spread"] == pytest.approx(statistics.stdev([0.10, 0.06]))
    assert row["spread_kind"] == "paired" and row["verdict"] == LARGER
    assert (row["a_seeds"], row["b_seeds"], row["a_params"], row["b_params"]) == (2, 2, 1600, 1000)


def test_difference_within_the_spread_is_noise():
    # per-seed differences +0.05 and -0.03: mean 0.01 < paired std 0.057
    runs = [_run("vit", "lora", "none", 0, 0.65), _run("vit", "lora", "none", 1, 0.57),
            _run("vit", "full", "none", 0, 0.60), _run("vit", "full", "none", 1, 0.60)]
    row = headline_rows(runs, [_spec({"method": "lora"}, {"method": "full"})])[0]
    assert row["difference"] == pytest.approx(0.01)
    assert row["spread"] == pytest.approx(statistics.stdev([0.05, -0.03]))
    assert row["verdict"] == NOISE


def test_unpaired_spread_when_the_seeds_differ():
    runs = [_run("vit", "full", "rotate", 0, 0.70), _run("vit", "full", "rotate", 1, 0.74),
            _run("vit", "full", "none", 2, 0.50), _run("vit", "full", "none", 3, 0.56)]
    row = headline_rows(runs, [_spec({"negatives": "rotate"}, {"negatives": "none"})])[0]
    expected = math.hypot(statistics.stdev([0.70, 0.74]), statistics.stdev([0.50, 0.56]))
    assert row["spread_kind"] == "unpaired" and row["spread"] == pytest.approx(expected)
    assert row["difference"] == pytest.approx(0.19) and row["verdict"] == LARGER


def test_a_one_seed_row_says_1_seed_and_is_not_called_larger():
    runs = [_run("vit", "full", "none", 0, 0.90), _run("vit", "lora", "none", 0, 0.10)]
    row = headline_rows(runs, [_spec({"method": "full"}, {"method": "lora"})])[0]
    assert row["difference"] == pytest.approx(0.80)
    assert row["spread"] is None and row["spread_kind"] == "1 seed" and row["verdict"] == NOISE


def test_unmeasured_values_give_no_difference():
    runs = [_run("vit", "full", "none", s, None) for s in (0, 1)]
    runs += [_run("vit", "lora", "none", s, 0.5) for s in (0, 1)]
    row = headline_rows(runs, [_spec({"method": "full"}, {"method": "lora"})])[0]
    assert row["a_mean"] is None and row["difference"] is None and row["verdict"] == NOISE


def test_selection_must_match_exactly_one_group():
    runs = [_run("vit", "full", "none", 0, 0.6), _run("iformer", "full", "none", 0, 0.7)]
    assert [r["backbone"] for r in select_group(runs, {"backbone": "vit"})] == ["vit"]
    with pytest.raises(ValueError, match="matches 2 groups.*name more keys"):
        select_group(runs, {"method": "full"})
    with pytest.raises(ValueError, match="matches 0 groups"):
        select_group(runs, {"method": "lora"})
    with pytest.raises(ValueError, match="names some of"):
        select_group(runs, {"seed": 0})
    with pytest.raises(ValueError, match="not a results column"):
        headline_rows(runs, [_spec({"backbone": "vit"}, {"backbone": "iformer"}, metric="clean")])


def test_d90_row_reached_and_not_reached():
    sweep = {"points": {10: 0.2, 100: 0.45, 1000: 0.56}, "reference": 0.60, "threshold": 0.54, "d90": 1000}
    row = d90_row("vit", sweep)
    assert (row["d90"], row["accuracy"], row["reached"], row["points"]) == (1000, 0.56, True, 3)
    missed = d90_row("vit", {**sweep, "d90": None})
    assert missed["reached"] is False and missed["d90"] is None and missed["accuracy"] == 0.56


def _config(headlines: list[dict], not_shown: list | None = None) -> dict:
    return {"backbones": {"vit": {"pretrain": "x.yaml"}, "iformer": {"pretrain": "y.yaml"}},
            "finetune": {"methods": {"full": {}, "lora": {}}, "shots": [5], "full_data": False, "seeds": [0, 1],
                         "negatives": {"none": None, "rotate": {"kinds": ["rotate"]}}},
            "extra_runs": [{"backbone": "iformer", "method": "full", "shots": 5, "seed": s} for s in (0, 1)],
            "headlines": headlines, "not_shown": not_shown or []}


def test_config_accepts_headlines_that_pick_one_planned_group_each():
    spec = {"advance": "architecture", "metric": "clean_acc", "a": {"backbone": "iformer"},
            "b": {"backbone": "vit", "method": "full", "negatives": "none"}}
    config = study_config_from_dict(_config([spec], ["`vitlab study --config configs/study.yaml` for more"]))
    assert config.headlines[0].a == {"backbone": "iformer"} and config.not_shown[0].startswith("`vitlab study")
    assert ("iformer", "full", "none", 5, 1) in config.planned_runs() and len(config.planned_runs()) == 10


@pytest.mark.parametrize(("change", "message"), [
    ({"metric": "clean"}, "not a results column"),
    ({"a": {"method": "full"}}, r"picks 3 of the planned groups"),
    ({"a": {"method": "kadaptation"}}, r"picks 0 of the planned groups"),
    ({"a": {"seed": 0}}, "must name some of"),
    ({"a": {"backbone": "vit", "method": "full", "negatives": "none"}}, "with itself"),
])
def test_config_refuses_a_headline_before_anything_runs(change, message):
    spec = {"advance": "x", "metric": "clean_acc", "a": {"backbone": "iformer"},
            "b": {"backbone": "vit", "method": "full", "negatives": "none"}, **change}
    with pytest.raises(ValueError, match=message):
        study_config_from_dict(_config([spec]))
    with pytest.raises(ValueError, match="not_shown"):
        study_config_from_dict(_config([], ["", "x"]))


def _study_with_headlines(tmp_path: Path) -> Path:
    study = make_study(tmp_path)
    meta = json.loads((study / "study.json").read_text())
    five = {"negatives": "none", "shots": 5}
    meta["config"] = {"headlines": [
        {"advance": "training", "metric": "clean_acc", "a": {"method": "kadaptation", **five},
         "b": {"method": "full", **five}},
        {"advance": "data", "metric": "neg_rotate_acc", "a": {"method": "full", "negatives": "rotate_l2", "shots": 5},
         "b": {"method": "full", **five}},
        {"advance": "training", "metric": "clean_acc", "a": {"method": "kadaptation", "negatives": "none",
                                                            "shots": "full"},
         "b": {"method": "full", "negatives": "none", "shots": "full"}}],
        "not_shown": ["Full data: `vitlab study --config configs/study.yaml --full true`."]}
    (study / "study.json").write_text(json.dumps(meta))
    return study


def test_report_opens_with_headline_effects_computed_from_the_runs(tmp_path):
    study = _study_with_headlines(tmp_path)
    out = write_study_report(study)
    markdown, page = out["markdown"].read_text(), out["html"].read_text()
    with (study / "results.csv").open(newline="") as handle:
        runs = list(csv.DictReader(handle))

    def values(method: str, negatives: str, shots: str, column: str) -> dict[int, float]:
        return {int(r["seed"]): float(r[column]) for r in runs
                if (r["method"], r["negatives"], r["shots"]) == (method, negatives, shots)}

    lines = [ln for ln in markdown.splitlines() if ln.startswith("| training |") or ln.startswith("| data |")]
    assert len(lines) == 3
    for line, (a, b, column) in zip(lines, [(("kadaptation", "none", "5"), ("full", "none", "5"), "clean_acc"),
                                            (("full", "rotate_l2", "5"), ("full", "none", "5"), "neg_rotate_acc"),
                                            (("kadaptation", "none", "full"), ("full", "none", "full"), "clean_acc")],
                                     strict=True):
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        va, vb = values(*a, column), values(*b, column)
        difference = statistics.mean(va.values()) - statistics.mean(vb.values())
        assert cells[5] == f"{100 * difference:+.2f}"
        assert cells[3].startswith(f"{100 * statistics.mean(va.values()):.2f} ({len(va)} seed")
        if len(va) == 1:  # the full-data runs: one seed, no spread, not called an effect
            assert cells[6] == "1 seed" and cells[8] == NOISE and "(1 seed" in cells[3]
        else:
            spread = statistics.stdev(va[s] - vb[s] for s in va)
            assert cells[6] == f"{100 * spread:.2f} (paired)"
            assert cells[8] == (LARGER if abs(difference) > spread else NOISE)
            assert cells[7] == ("10,000 test images" if column == "clean_acc" else "1,000 views (one per test image)")
    d90 = next(ln for ln in markdown.splitlines() if ln.startswith("| training (intrinsic dimension) |"))
    assert "d90 = 1,000" in d90 and "+4.50" in d90 and "500 test images" in d90 and "reached on its grid" in d90
    assert markdown.index("## Headline effects") < markdown.index("## Results")
    assert "## What this study does not show" in markdown
    assert "`vitlab study --config configs/study.yaml --full true`" in markdown
    assert "<h2>Headline effects</h2>" in page
    assert "<code>vitlab study --config configs/study.yaml --full true</code>" in page


def test_report_without_headlines_has_no_headline_section(tmp_path):
    markdown = write_study_report(make_study(tmp_path, intrinsic=False))["markdown"].read_text()
    assert "Headline effects" not in markdown and "does not show" not in markdown


def test_a_d90_reached_at_the_smallest_measured_d_is_reported_as_an_upper_bound(tmp_path):
    study = _study_with_headlines(tmp_path)
    path = study / "intrinsic" / "vit" / "intrinsic_dim.json"
    sweep = json.loads(path.read_text())
    sweep.update(points={"100": 0.80, "1000": 0.84}, d90=100, d90_interpolated=100.0)  # the first point reached it
    path.write_text(json.dumps(sweep))
    markdown = write_study_report(study)["markdown"].read_text()
    # was "100" in both columns and "d90 = 100": nothing below 100 was measured, so d90 is only known to be <= 100
    table = next(ln for ln in markdown.splitlines() if ln.startswith("| vit | 85.00 | 76.50 |"))
    assert [c.strip() for c in table.strip("|").split(" | ")][3:5] == ["≤ 100", "≤ 100"]
    d90 = next(ln for ln in markdown.splitlines() if ln.startswith("| training (intrinsic dimension) |"))
    assert "d90 ≤ 100" in d90 and "d90 = " not in d90
