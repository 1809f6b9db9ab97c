"""The study's report keeps the hardware and versions of the run that measured its numbers (`vitlab.study.run`).

A rerun of a finished study (every measuring stage cached) only rewrites the report: it must not replace the
hardware / versions in ``study.json`` with those of the process that rewrote it, nor add its time to the study's.
The stages are stand-ins (their estimate says whether the work is cached) over the hand-made study folder of
``test_report.make_study``; the plots are replaced by one tiny PNG so that each test takes a fraction of a second,
and the clock by one that moves 10 s a reading.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import vitlab.study.estimate
import vitlab.study.plan
import vitlab.study.report
import vitlab.study.run
import vitlab.study.stages
from vitlab.study.config import load_study_config
from vitlab.study.report import results_markdown
from vitlab.study.run import run_study

from .test_report import make_study

MEASURING = ("pretrain", "finetune", "evaluate", "intrinsic_dim")
KEPT = ("measured_s", "hardware", "vitlab_version", "torch_version")  # what a cached stage keeps of its run
README = "# x\n\n<!-- study-results:start -->\nstale\n<!-- study-results:end -->\n"


class _Clock:
    """``time`` for `vitlab.study.run`: every reading is 10 s after the last, so each timed span is 10 s or more."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 10.0
        return self.now


def _tiny_plots(study: dict) -> dict[str, Path]:
    png = study["folder"] / "plots" / "accuracy_vs_params.png"
    png.parent.mkdir(exist_ok=True)
    Image.new("RGB", (4, 4)).save(png)
    return {"accuracy_vs_params": png}


@pytest.fixture()
def study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A study config over ``make_study``'s folder; ``todo`` names the stages whose work is not cached yet."""
    folder = make_study(tmp_path)
    meta = json.loads((folder / "study.json").read_text())
    (folder / "study.json").unlink()  # the first run below makes the record
    pretrain = {"name": "pre", "model": {"name": "vit_vitlab_tiny_patch8_32"}, "data": {"name": "digits"}}
    (tmp_path / "pretrain.yaml").write_text(yaml.safe_dump(pretrain))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({
        "name": "study", "output_dir": str(tmp_path), "downstream": "digits", "accelerator": "cpu",
        "backbones": {"vit": {"pretrain": "pretrain.yaml"}},
        "finetune": {"methods": {"full": {}}, "negatives": {"none": None}, "shots": [2], "full_data": False,
                     "seeds": [0], "steps": 2, "batch_size": 4},
        "evaluation": {"corruption_n": 3, "negative_view_n": 4, "patch_size": 8},
        "intrinsic_dim": {"backbones": []}}))
    monkeypatch.chdir(tmp_path)
    config = load_study_config(str(tmp_path / "study.yaml"))
    assert config.folder == folder
    todo = set(MEASURING)
    monkeypatch.setattr(vitlab.study.estimate, "estimate_study", lambda config: [
        {"stage": s, "runs": 1, "estimated_s": 5.0 if s in todo or s == "report" else 0.0}
        for s in (*MEASURING, "report")])
    for name in ("pretrain_backbones", "run_finetune", "evaluate_runs", "run_intrinsic"):
        monkeypatch.setattr(vitlab.study.stages, name, lambda *args, **kwargs: {})
    monkeypatch.setattr(vitlab.study.plan, "finetune_specs", lambda config, weights: [])
    extra = {key: meta[key] for key in ("data", "corruption", "negative_views", "backbones")}
    monkeypatch.setattr(vitlab.study.stages, "write_tables", lambda config, rows, weights: extra)
    monkeypatch.setattr(vitlab.study.report, "_write_plots", _tiny_plots)
    monkeypatch.setattr(vitlab.study.run, "time", _Clock())
    readme = tmp_path / "README.md"
    readme.write_text(README)
    return {"config": config, "folder": folder, "todo": todo, "readme": readme}


def _run(study: dict, threads: int, version: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Run the study from a process with ``threads`` torch threads and vitlab ``version``; returns study.json."""
    monkeypatch.setattr(vitlab.study.run, "_version", lambda: version)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run_study(study["config"], command="vitlab study --config study.yaml", readme=str(study["readme"]))
    finally:
        torch.set_num_threads(before)
    return json.loads((study["folder"] / "study.json").read_text())


def _line(study: dict) -> str:
    return next(line for line in study["readme"].read_text().splitlines() if line.startswith("Measured with"))


def test_a_fully_cached_rerun_keeps_the_measuring_runs_hardware_versions_and_time(study, monkeypatch):
    first = _run(study, 2, "1.0.0", monkeypatch)
    assert first["hardware"].startswith("2 CPU threads (") and first["vitlab_version"] == "1.0.0"
    line = _line(study)
    assert "hardware: 2 CPU threads (" in line
    study["todo"].clear()  # every measuring stage cached: this run only rewrites the report
    again = _run(study, 1, "2.0.0", monkeypatch)
    assert [s["status"] for s in again["stages"]] == ["cached"] * 4 + ["done"]
    for key in ("hardware", "vitlab_version", "torch_version", "wall_time_s", "started"):
        assert again[key] == first[key], key
    assert all(s["status"] == "done" and s["hardware"] == [first["hardware"]] for s in first["stages"][:4])
    for before, after in zip(first["stages"][:4], again["stages"][:4], strict=True):
        assert {k: after[k] for k in KEPT} == {k: before[k] for k in KEPT}
    assert first["wall_time_s"] >= 100.0  # the clock: four measuring stages and the report, 10 s each at least
    # the report's time is its latest writing's, not a running sum of every rewrite
    assert again["stages"][4]["measured_s"] == first["stages"][4]["measured_s"] == 10.0
    assert _line(study) == line
    assert results_markdown(study["folder"]).splitlines()[0] == line


def test_a_stage_rerun_elsewhere_names_both_and_adds_its_time(study, monkeypatch):
    first = _run(study, 2, "1.0.0", monkeypatch)
    study["todo"].intersection_update({"evaluate"})  # say, a new evaluation setting: only that stage runs again
    monkeypatch.setattr(vitlab.study.run, "_hardware", lambda accelerator: "H200 GPU, 16 CPU threads (x)")
    again = _run(study, 1, "2.0.0", monkeypatch)
    evaluate = next(s for s in again["stages"] if s["stage"] == "evaluate")
    assert evaluate["hardware"] == [first["hardware"], "H200 GPU, 16 CPU threads (x)"]
    assert evaluate["vitlab_version"] == ["1.0.0", "2.0.0"]
    assert next(s for s in again["stages"] if s["stage"] == "finetune")["hardware"] == [first["hardware"]]
    assert again["hardware"] == f"{first['hardware']}; H200 GPU, 16 CPU threads (x)"
    assert again["vitlab_version"] == "1.0.0; 2.0.0"
    assert again["wall_time_s"] > first["wall_time_s"] and again["started"] == first["started"]
    assert f"hardware: {first['hardware']}; H200 GPU" in _line(study)


def test_a_record_of_an_earlier_version_keeps_its_hardware_for_its_cached_stages(study, monkeypatch):
    old = {"name": "study", "command": "vitlab study", "started": "2025-01-02T03:04:05", "wall_time_s": 2328.0,
           "hardware": "2 CPU threads (AMD EPYC), no GPU used", "vitlab_version": "0.9.0", "torch_version": "2.5.1",
           "stages": [{"stage": s, "estimated_s": 0.0, "measured_s": 60.0, "status": "done"} for s in MEASURING]}
    (study["folder"] / "study.json").write_text(json.dumps(old))
    study["todo"].clear()
    again = _run(study, 1, "2.0.0", monkeypatch)
    for key in ("hardware", "vitlab_version", "torch_version", "wall_time_s", "started"):
        assert again[key] == old[key], key
    assert all(s["hardware"] == [old["hardware"]] for s in again["stages"][:4])
    assert "hardware: 2 CPU threads (AMD EPYC), no GPU used; time taken: 38.8 min" in _line(study)
