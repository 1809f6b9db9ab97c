"""Cached stages keyed on what made them (vitlab.study.cache) and the sweep progress bar (vitlab.study.progress)."""

import json
import logging
from dataclasses import asdict, replace

import pytest
import yaml

from vitlab.errors import ConfigError
from vitlab.study.cache import (
    CACHE_RECORD,
    config_hash,
    differing_keys,
    ensure_cache_matches,
    read_record,
    write_record,
)
from vitlab.study.config import study_config_from_dict
from vitlab.study.launch import cached_rows, spec_hash
from vitlab.study.progress import quiet_lightning, sweep_progress


def test_hash_ignores_key_order_and_differing_keys_name_each_leaf():
    a = {"optim": {"lr": 0.1, "wd": 0.0}, "trainer": {"max_steps": 1000}, "kinds": ("shuffle",)}
    b = {"trainer": {"max_steps": 25}, "optim": {"wd": 0.0, "lr": 0.1}, "kinds": ["shuffle"], "new": 1}
    assert config_hash(a) == config_hash({**a}) and config_hash(a) != config_hash(b)
    assert config_hash({"kinds": ("x",)}) == config_hash({"kinds": ["x"]})  # tuples and lists alike
    assert differing_keys(a, b) == ["new: <absent> -> 1", "trainer.max_steps: 1000 -> 25"]


def test_a_key_added_later_as_unset_is_not_a_difference(tmp_path):
    """A record written before an optional key existed (e.g. negatives.temperature) matches the same config now."""
    old = {"negatives": {"kinds": ["rotate"], "weight": 1.0}, "seed": 0}
    new = {"negatives": {"kinds": ["rotate"], "weight": 1.0, "temperature": None}, "seed": 0}
    assert differing_keys(old, new) == [] and differing_keys(new, old) == []
    assert differing_keys(old, {**new, "negatives": {**new["negatives"], "temperature": 0.5}}) == [
        "negatives.temperature: <absent> -> 0.5"]
    write_record(tmp_path, old)
    ensure_cache_matches(tmp_path, new, "weights")  # reused, not refused
    assert read_record(tmp_path)["hash"] == config_hash(new)  # and the record now names the key


def test_a_folder_is_reused_only_when_its_record_matches(tmp_path):
    config = {"optim": {"lr": 0.1}, "seed": 0}
    write_record(tmp_path, config)
    ensure_cache_matches(tmp_path, config, "weights")  # same config: nothing raised
    with pytest.raises(ConfigError, match=r"made by another configuration \(optim\.lr: 0\.1 -> 0\.3\)") as err:
        ensure_cache_matches(tmp_path, {"optim": {"lr": 0.3}, "seed": 0}, "weights")
    assert "--reuse_cached_as_is true" in str(err.value) and str(tmp_path) in str(err.value)
    ensure_cache_matches(tmp_path, {"optim": {"lr": 0.3}, "seed": 0}, "weights", reuse_as_is=True)
    assert read_record(tmp_path)["config"] == config  # reuse as is leaves the record alone
    unrecorded = tmp_path / "other"
    unrecorded.mkdir()
    with pytest.raises(ConfigError, match="no record of the configuration"):
        ensure_cache_matches(unrecorded, config, "weights")
    ensure_cache_matches(unrecorded, config, "weights", fallback={"seed": 0, "optim": {"lr": 0.1}})
    assert read_record(unrecorded)["hash"] == config_hash(config)  # a matching fallback is recorded
    (unrecorded / CACHE_RECORD).write_text("{broken")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_record(unrecorded)


def _tiny_study(tmp_path, max_steps):
    runs = tmp_path / "runs"
    pretrain = {"name": "pre", "output_dir": str(runs), "model": {"name": "vit_vitlab_tiny_patch4_32"},
                "data": {"name": "digits"}, "trainer": {"max_steps": max_steps}}
    path = tmp_path / f"pretrain_{max_steps}.yaml"
    path.write_text(yaml.safe_dump(pretrain))
    config = study_config_from_dict({"name": "s", "output_dir": str(runs), "downstream": "digits",
                                     "accelerator": "cpu", "backbones": {"vit": {"pretrain": str(path)}}})
    return config, runs / "pre"


def test_study_refuses_a_cached_pretraining_made_by_another_config(tmp_path, monkeypatch):
    from vitlab.study import stages as study_stages

    fits = []
    monkeypatch.setattr("vitlab.train.fit", lambda config, resume=False: fits.append(config))
    short, run_dir = _tiny_study(tmp_path, max_steps=25)
    run_dir.mkdir(parents=True)
    (run_dir / "model.safetensors").write_bytes(b"weights of a 25-step test run")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(asdict(study_stages.pretrain_config(short, "vit"))))
    real, _ = _tiny_study(tmp_path, max_steps=4000)
    with pytest.raises(ConfigError, match=r"trainer\.max_steps: 25 -> 4000"):
        study_stages.pretrain_backbones(real)
    assert study_stages.pretrain_backbones(real, reuse_cached_as_is=True) == {"vit": str(run_dir)} and fits == []
    assert study_stages.pretrain_backbones(short) == {"vit": str(run_dir)} and fits == []  # the config that made it
    (run_dir / "config.yaml").unlink()
    (run_dir / CACHE_RECORD).unlink()
    with pytest.raises(ConfigError, match="no record of the configuration"):  # weights of unknown origin
        study_stages.pretrain_backbones(short)


def test_a_backbone_pretrained_by_vitlab_fit_on_the_cpu_is_the_studys_on_auto(tmp_path, monkeypatch):
    """`vitlab fit --config configs/pretrain_vit_mnist.yaml` (trainer.accelerator: cpu) made a folder the study
    (accelerator: auto) refused ('trainer.accelerator: cpu -> auto') while --estimate_only counted it as cached."""
    from vitlab.study import stages as study_stages

    monkeypatch.setattr("vitlab.train.fit", lambda config, resume=False: pytest.fail("pretrained again"))
    on_cpu, run_dir = _tiny_study(tmp_path, max_steps=25)
    run_dir.mkdir(parents=True)
    (run_dir / "model.safetensors").write_bytes(b"weights of a 25-step run")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(asdict(study_stages.pretrain_config(on_cpu, "vit"))))
    auto = replace(on_cpu, accelerator="auto")
    assert study_stages.pretraining_differences(auto, "vit") == []
    assert study_stages.pretrain_backbones(auto) == {"vit": str(run_dir)}
    longer = replace(auto, backbones={"vit": replace(auto.backbones["vit"], pretrain=str(
        _tiny_study(tmp_path, max_steps=4000)[0].backbones["vit"].pretrain))})
    assert study_stages.pretraining_differences(longer, "vit") == ["trainer.max_steps: 25 -> 4000"]


def test_finetune_rows_are_reused_only_for_the_same_spec(tmp_path, capsys):
    spec = {"config": {"name": "lora-k5-s0", "optim": {"lr": 1e-3}}, "backbone_sha256": "aa"}
    changed = {"config": {"name": "lora-k5-s0", "optim": {"lr": 3e-3}}, "backbone_sha256": "aa"}
    other = {"config": {"name": "full-k5-s0"}, "backbone_sha256": "aa"}
    rows = [{"run": "lora-k5-s0", "accuracy": 0.5, "config_hash": config_hash(spec)},
            {"run": "old-run", "accuracy": 0.1, "config_hash": "x"}]
    keep, todo = cached_rows(rows, [spec, other], tmp_path)
    assert keep == rows and todo == [other]  # rows of runs not asked for are kept
    (tmp_path / "lora-k5-s0").mkdir()
    (tmp_path / "lora-k5-s0" / "study_spec.json").write_text(json.dumps(spec))
    keep, todo = cached_rows(rows, [changed], tmp_path)
    assert [r["run"] for r in keep] == ["old-run"] and todo == [changed]
    assert "config.optim.lr: 0.001 -> 0.003" in capsys.readouterr().out
    keep, todo = cached_rows(rows, [changed], tmp_path, reuse_cached_as_is=True)
    assert todo == [] and len(keep) == 2


def test_intrinsic_dim_refuses_a_sweep_folder_made_by_another_config(tmp_path):
    from vitlab.study.intrinsic import SWEEP_CSV, run_intrinsic_dim, sweep_cache_key
    from vitlab.train.arguments import load_run_config_file

    path = tmp_path / "id.yaml"
    path.write_text(yaml.safe_dump({"name": "id", "output_dir": str(tmp_path),
                                    "model": {"name": "vit_vitlab_tiny_patch4_32"},
                                    "data": {"name": "digits"}, "optim": {"lr": 0.01},
                                    "peft": {"method": "subspace", "options": {"sweep": {"dims": [8]}}}}))
    config = load_run_config_file(path)
    folder = tmp_path / "id"
    write_record(folder, sweep_cache_key(config))
    (folder / SWEEP_CSV).write_text("group,dim,accuracy,seconds\n")
    wider = replace(config, peft=replace(config.peft, options={"sweep": {"dims": [8, 64]}}))
    assert sweep_cache_key(wider) == sweep_cache_key(config)  # a longer grid reuses the points already run
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.01 -> 0\.5"):
        run_intrinsic_dim(replace(config, optim=replace(config.optim, lr=0.5)))


def test_sweep_progress_counts_runs_and_mutes_lightnings_banners(capsys, caplog):
    import lightning as L

    level = logging.getLogger("lightning.pytorch.utilities.rank_zero").level
    with caplog.at_level(logging.INFO):
        L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
        assert any("GPU available" in r.getMessage() for r in caplog.records)  # shown outside a sweep
        caplog.clear()
        with sweep_progress(3, "test", disable=False) as bar:
            for _ in range(3):
                L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
                bar.update(1)
        assert not any("available" in r.getMessage() for r in caplog.records)
    bar_text = capsys.readouterr().err
    assert "3/3" in bar_text and "run" in bar_text and "GPU available" not in bar_text
    assert logging.getLogger("lightning.pytorch.utilities.rank_zero").level == level  # restored after the sweep
    with pytest.raises(ValueError, match="number of runs"), sweep_progress(-1, "x"):
        pass


def test_quiet_lightning_ignores_only_the_repeated_directory_warnings():
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_lightning():
            warnings.warn("Checkpoint directory /x exists and is not empty.", UserWarning, stacklevel=1)
            warnings.warn("The number of training batches (2) is smaller than the logging interval", UserWarning,
                          stacklevel=1)
    assert [str(w.message)[:14] for w in seen] == ["The number of "]


def test_finetune_rows_survive_a_moved_or_merged_study_but_not_a_changed_spec(tmp_path, capsys):
    spec = {"config": {"name": "lora-k5-s0", "seed": 0, "output_dir": "runs/peft_study_a/runs"}, "method": "lora"}
    moved = {**spec, "config": {**spec["config"], "output_dir": "runs/peft_study/runs"}}
    row = {"run": "lora-k5-s0", "accuracy": 0.5, "config_hash": spec_hash(spec)}
    assert spec_hash(moved) == spec_hash(spec) != config_hash(spec)
    assert cached_rows([row], [moved], tmp_path) == ([row], [])  # rows merged from another study's table are reused
    legacy = {**row, "config_hash": config_hash(spec)}  # what earlier versions recorded: the output folder included
    assert cached_rows([legacy], [spec], tmp_path) == ([legacy], [])
    reseeded = {**moved, "config": {**moved["config"], "seed": 1}}
    (tmp_path / "lora-k5-s0").mkdir()
    (tmp_path / "lora-k5-s0" / "study_spec.json").write_text(json.dumps(spec))
    assert cached_rows([row], [reseeded], tmp_path) == ([], [reseeded])
    printed = capsys.readouterr().out
    assert "config.seed: 0 -> 1" in printed and "output_dir" not in printed  # only what changes the result is named
