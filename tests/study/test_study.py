"""`vitlab study` end to end at a tiny scale: pretrain, fine-tune grid, evaluation, intrinsic dimension, report."""

import csv
import json

import pytest
import yaml
from PIL import Image

from vitlab.study.config import load_study_config, study_config_from_dict
from vitlab.study.plan import run_name

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 8}


def _write_configs(tmp_path):
    runs = tmp_path / "runs"
    pretrain = {"name": "pre", "output_dir": str(runs), "model": {"name": "vit_vitlab_tiny_patch8_32", "kwargs": TINY},
                "data": {"name": "digits", "batch_size": 64}, "optim": {"lr": 3e-3, "warmup_epochs": 0},
                "trainer": {"max_epochs": 1, "limit_train_batches": 3, "enable_progress_bar": False,
                            "enable_model_summary": False}}
    intrinsic = {"name": "id", "model": {"name": "vit_vitlab_tiny_patch8_32"},
                 "data": {"name": "digits", "batch_size": 64, "options": {"limit_train": 128}},
                 "optim": {"lr": 3e-3, "warmup_epochs": 0},
                 "trainer": {"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False},
                 "peft": {"method": "subspace", "options": {"dim": 8, "sweep": {"dims": [8], "lr": 0.3}}}}
    study = {"name": "tiny", "output_dir": str(runs), "downstream": "digits", "accelerator": "cpu",
             "backbones": {"vit": {"pretrain": "pretrain.yaml", "method_options": {"kadaptation": {"n": 8}}}},
             "finetune": {"methods": {"full": {}, "kadaptation": {}},
                          "negatives": {"none": None, "rotate_l2": {"kinds": ["rotate"], "loss": "l2",
                                                                     "patch_size": 8}},
                          "shots": [2], "full_data": False, "seeds": [0], "steps": 2, "batch_size": 20},
             "evaluation": {"corruption_n": 3, "negative_view_n": 40, "patch_size": 8},
             "intrinsic_dim": {"config": "intrinsic.yaml", "backbones": ["vit"], "per_module": True,
                               "from_scratch": True},
             "headlines": [{"advance": "training", "metric": "clean_acc",
                            "a": {"method": "kadaptation", "negatives": "none"},
                            "b": {"method": "full", "negatives": "none"}}],
             "not_shown": ["More seeds: `vitlab study --config study.yaml --full true`"],
             "full": {"finetune": {"seeds": [0, 1]}}}
    for name, content in (("pretrain.yaml", pretrain), ("intrinsic.yaml", intrinsic), ("study.yaml", study)):
        (tmp_path / name).write_text(yaml.safe_dump(content))
    return tmp_path / "study.yaml"


def test_study_config_validates_and_merges_full(tmp_path):
    path = _write_configs(tmp_path)
    config = load_study_config(path)
    assert config.backbones["vit"].pretrain == str(tmp_path / "pretrain.yaml")  # resolved beside the study YAML
    assert config.finetune.seeds == [0] and load_study_config(path, full=True).finetune.seeds == [0, 1]
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['stepz'\] in finetune"):
        study_config_from_dict({"backbones": {"vit": {"pretrain": "x"}}, "finetune": {"stepz": 3}})
    with pytest.raises(ValueError, match="not in backbones"):
        study_config_from_dict({"backbones": {"vit": {"pretrain": "x"}}, "intrinsic_dim": {"backbones": ["iformer"]}})
    with pytest.raises(ValueError, match="not a finetune.negatives label"):
        study_config_from_dict({"backbones": {"vit": {"pretrain": "x"}},
                                "extra_runs": [{"backbone": "vit", "method": "lora", "negatives": "shuffle"}]})


@pytest.mark.parametrize("name", ["a/b", "..", ""])
def test_a_study_name_is_one_plain_folder_name_as_for_fit(name):
    with pytest.raises(ValueError, match="is not a plain folder name"):
        study_config_from_dict({"name": name, "backbones": {"vit": {"pretrain": "x"}}})


def test_full_without_a_full_section_is_refused_not_ignored():
    with pytest.raises(ValueError, match="--full merges the config's `full:` section .* has none: drop --full"):
        study_config_from_dict({"backbones": {"vit": {"pretrain": "x"}}}, full=True)


@pytest.mark.parametrize(("finetune", "message"), [
    ({"methods": {"fulll": {}}}, r"finetune.methods names unknown method\(s\) \['fulll'\]"),
    ({"seeds": [-1, 1]}, r"finetune.seeds must be integers in \[0, 2\*\*32\)"),
    ({"shots": ["a"]}, r"finetune.shots must be list\[int\], got \['a'\] \(list\)"),  # was a TypeError from sorted()
    ({"shots": [0, 5]}, r"finetune.shots must be distinct positive ints"),
    ({"shots": [5, 5]}, r"finetune.shots must be distinct positive ints"),
    ({"steps": "1e3"}, r"finetune.steps must be int, got '1e3' \(str\)"),  # YAML 1.1 reads 1e3 as a string
    ({"full_data": 1}, r"finetune.full_data must be bool"),
    ({"methods": {"lora": []}}, r"finetune.methods must be dict\[str, dict\[str, Any\]\]"),
])
def test_study_config_refuses_unknown_methods_and_bad_seeds_before_any_work(finetune, message):
    with pytest.raises(ValueError, match=message):
        study_config_from_dict({"backbones": {"vit": {"pretrain": "x"}}, "finetune": finetune})


def test_study_config_field_types_are_checked_in_every_section():
    with pytest.raises(ValueError, match=r"backbones.vit.img_size must be int \| null, got '32'"):
        study_config_from_dict({"backbones": {"vit": {"model": "m", "pretrained": "timm", "img_size": "32"}}})
    with pytest.raises(ValueError, match=r"evaluation.corruption_n must be int, got True"):
        study_config_from_dict({"backbones": {"vit": {"pretrain": "x"}}, "evaluation": {"corruption_n": True}})


def test_a_key_given_twice_in_the_study_yaml_is_refused_not_silently_dropped(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("backbones:\n  vit: {pretrain: x}\nfinetune:\n  steps: 10\nfinetune:\n  seeds: [1]\n")
    with pytest.raises(ValueError, match=r"key 'finetune' is given twice \(line 3 and line 5\)"):
        load_study_config(path)  # PyYAML kept only the second finetune section


def test_a_bad_accelerator_or_readme_is_refused_before_the_study_starts(tmp_path, monkeypatch, capsys):
    from vitlab.cli.main import main

    monkeypatch.chdir(tmp_path)
    path = _write_configs(tmp_path)
    no_markers = tmp_path / "README.md"
    no_markers.write_text("# a README without the study-results markers\n")
    for args, message in ((["--accelerator", "cpus"], "accelerator must be one of auto, cpu, cuda, gpu"),
                          (["--readme", str(no_markers)], "needs exactly one <!-- study-results:start --> line"),
                          (["--readme", str(tmp_path / "missing.md")], "missing.md is not a file")):
        assert main(["study", "--config", str(path), "--name", "s", *args]) == 1
        assert message in capsys.readouterr().err
        assert not (tmp_path / "runs" / "s").exists()  # refused before any stage (it used to fail after the report)


def test_an_intrinsic_config_that_is_not_there_is_named_with_its_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a user's own folder, not this repository
    path = tmp_path / "study.yaml"
    path.write_text("backbones:\n  vit: {pretrain: x}\n")  # the default intrinsic_dim.config is repository-relative
    with pytest.raises(FileNotFoundError, match="intrinsic_dim.config configs/intrinsic_dim_study.yaml is not a file"):
        load_study_config(path)


def test_methods_may_be_a_list_of_names_without_overrides():
    raw = {"backbones": {"vit": {"pretrain": "x"}}, "finetune": {"methods": ["full", "lora"]}}
    config = study_config_from_dict(raw)
    assert config.finetune.methods == {"full": {}, "lora": {}}


@pytest.mark.slow  # end to end: run by `make test`, deselect with -m "not slow" for a quick pass
def test_tiny_study_writes_a_report_that_agrees_with_the_runs(tmp_path, monkeypatch, capsys):
    from vitlab.cli.main import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path / "data"))  # the generated corruption set goes there
    path = _write_configs(tmp_path)
    assert main(["study", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "measured time estimate per stage" in out and "intrinsic_dim" in out
    folder = tmp_path / "runs" / "tiny"
    for name in ("report.md", "report.html", "results.csv", "robustness.csv", "study.json"):
        assert (folder / name).is_file(), name
    plots = sorted(p.name for p in (folder / "plots").glob("*.png"))
    assert plots == ["accuracy_vs_params.png", "intrinsic_dim.png", "per_module.png", "robustness_by_severity.png",
                     "training_curves.png"]
    for plot in plots:
        assert Image.open(folder / "plots" / plot).size[0] > 100
    with (folder / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    expected = {run_name("vit", m, n, 2, 0) for m in ("full", "kadaptation") for n in ("none", "rotate_l2")}
    assert {r["run"] for r in rows} == expected
    report = (folder / "report.md").read_text()
    for row in rows:  # every number comes from the run: the test accuracy in the run's own metrics.csv
        with (folder / row["run_dir"] / "metrics.csv").open() as handle:
            test_acc = [float(r["test/acc"]) for r in csv.DictReader(handle) if r.get("test/acc")]
        assert float(row["clean_acc"]) == pytest.approx(test_acc[-1], abs=1e-6)
        line = next(ln for ln in report.splitlines() if f"| {row['method']} | {row['negatives']} |" in ln)
        assert f"{100 * float(row['clean_acc']):.2f}" in line
        assert 0.0 <= float(row["corruption_acc"]) <= 1.0 and row["neg_rotate_acc"] != ""
    with (folder / "robustness.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == len(rows) * 19 * 5
    for row in rows:  # negative-view confidence comes from the run's diagnostics
        views = json.loads((folder / row["run_dir"] / "diagnose_negatives_digits.json").read_text())["views"]
        assert float(row["neg_rotate_conf"]) == pytest.approx(views["rotate"]["confidence"], abs=1e-6)
    # the headline: one seed per group, so the difference is stated without a spread and not called an effect
    clean = {r["method"]: float(r["clean_acc"]) for r in rows if r["negatives"] == "none"}
    headline = next(ln for ln in report.splitlines() if ln.startswith("| training |"))
    assert f"| {100 * (clean['kadaptation'] - clean['full']):+.2f} | 1 seed |" in headline
    assert headline.endswith("| not distinguishable from noise at this budget |")
    assert report.index("## Headline effects") < report.index("## Results")
    assert "| vit_scratch |" in report  # the same sweep from random init, beside the pretrained backbone's
    record = json.loads((folder / "study.json").read_text())
    assert [s["stage"] for s in record["stages"]] == ["pretrain", "finetune", "evaluate", "intrinsic_dim", "report"]
    assert all(s["measured_s"] is not None for s in record["stages"]) and record["corruption"]["n"] == 3
    assert record["command"] == f"vitlab study --config {path}"
    assert record["command"] in report and record["command"] in (folder / "report.html").read_text()
    # a rerun resumes: every stage is cached and nothing is retrained
    mtime = (folder / "finetune" / "runs" / rows[0]["run"] / "model.safetensors").stat().st_mtime
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- study-results:start -->\nstale numbers\n<!-- study-results:end -->\n\nrest\n")
    assert main(["study", "--config", str(path), "--readme", str(readme)]) == 0
    assert "4 fine-tuning runs, 4 already done" in capsys.readouterr().out
    assert (folder / "finetune" / "runs" / rows[0]["run"] / "model.safetensors").stat().st_mtime == mtime
    text = readme.read_text()
    assert "stale numbers" not in text and text.endswith("rest\n")
    assert "(docs/study/plots/accuracy_vs_params.png)" in text
    assert f"{100 * float(rows[0]['clean_acc']):.2f}" in text  # the table comes from the report
    assert (tmp_path / "docs" / "study" / "plots" / "accuracy_vs_params.png").is_file()
    again = json.loads((folder / "study.json").read_text())
    for before, after in zip(record["stages"][:4], again["stages"][:4], strict=True):
        assert after["status"] == "cached" and after["measured_s"] == before["measured_s"]  # times of the real run
    assert again["wall_time_s"] >= record["wall_time_s"]


def test_negatives_entries_take_the_run_sections_keys_including_temperature():
    """A finetune.negatives entry takes what `vitlab fit`'s negatives section takes, the top-level temperature too."""
    neg = {"kinds": ["shuffle"], "loss": "contrastive", "weight": 1.0, "patch_size": 8, "temperature": 0.1}
    raw = {"backbones": {"vit": {"pretrain": "x"}}, "finetune": {"negatives": {"none": None, "con": neg}}}
    assert study_config_from_dict(raw).finetune.negatives["con"] == neg
    raw["finetune"]["negatives"]["con"] = {**neg, "tau": 0.1}
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['tau'\]"):
        study_config_from_dict(raw)
