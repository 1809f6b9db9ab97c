"""The default study (configs/study.yaml) and its shipped results: few-shot rows use at least 3 seeds (issue 16)."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from vitlab.study.config import load_study_config

ROOT = Path(__file__).resolve().parents[2]


def test_few_shot_rows_of_the_default_study_use_at_least_three_seeds():
    config = load_study_config(ROOT / "configs" / "study.yaml")
    assert config.finetune.shots and len(set(config.finetune.seeds)) >= 3  # every few-shot grid row: each seed
    assert all(run.shots == "full" for run in config.extra_runs)  # an extra run is one seed: full data only


def test_the_shipped_study_results_hold_three_seeds_per_few_shot_row():
    with (ROOT / "docs" / "study" / "results.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    seeds = defaultdict(set)
    for row in rows:
        seeds[(row["backbone"], row["method"], row["negatives"], row["shots"])].add(row["seed"])
    few_shot = {row: s for row, s in seeds.items() if row[3] != "full"}
    assert len(few_shot) == 6 and all(len(s) == 3 for s in few_shot.values()), few_shot
