"""Inputs a user of Lightning brings to ``vitlab.train.fit``: Lightning's own conventions are accepted, and what
cannot train is refused with the fix named."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from vitlab.errors import ConfigError
from vitlab.train import DataConfig, ModelConfig, NegativesConfig, OptimConfig, RunConfig, fit

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}


def _config(tmp_path, name, **trainer):
    return RunConfig(
        name=name, seed=0, output_dir=str(tmp_path),
        model=ModelConfig(name="vit_vitlab_tiny_patch4_32", kwargs=dict(TINY)),
        data=DataConfig(name="digits", batch_size=64, options={"limit_train": 256}),
        optim=OptimConfig(lr=3e-3, warmup_epochs=0),
        trainer={"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False,
                 "limit_val_batches": 1, "limit_test_batches": 1, **trainer},
    )


def test_max_epochs_minus_one_with_max_steps_trains_exactly_max_steps(tmp_path):
    """Lightning's step-based training (``max_epochs: -1`` + ``max_steps``) was refused as 'no training'."""
    result = fit(_config(tmp_path, "steps", max_epochs=-1, max_steps=5))
    checkpoint = torch.load(result.run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 5  # 4 batches per epoch: the run crossed an epoch and stopped at max_steps
    assert (result.run_dir / "model.safetensors").is_file()


@pytest.mark.parametrize("trainer", [{"max_epochs": -1}, {"max_epochs": -1, "max_steps": -1}, {"max_epochs": -2}])
def test_endless_or_negative_max_epochs_is_refused_naming_max_steps(tmp_path, trainer):
    with pytest.raises(ConfigError, match=r"max_epochs must be an integer >= 1 \(or -1 with trainer.max_steps >= 1\)"):
        fit(_config(tmp_path, "endless", **trainer))
    assert not (tmp_path / "endless" / "model.safetensors").exists()


def test_a_lock_file_just_created_and_not_yet_written_is_respected_and_an_old_empty_one_taken_over(tmp_path):
    """Two runs started at once: the second read the first's lock before its PID was written, took it for stale,
    deleted it and ran too."""
    import os
    import time

    from vitlab.train.run_folder import RunLock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").write_text("")  # another process's O_EXCL create, before its json.dump
    with pytest.raises(ConfigError, match=r"in use by another vitlab process .*it is starting.*delete .*\.lock"):
        RunLock(run_dir).__enter__()
    assert (run_dir / ".lock").read_text() == ""  # left to its owner
    old = time.time() - 3600
    os.utime(run_dir / ".lock", (old, old))  # an empty lock left by a process killed an hour ago
    with RunLock(run_dir) as lock:
        assert str(os.getpid()) in lock.path.read_text()
    assert not (run_dir / ".lock").exists()


def test_output_dir_given_as_a_pathlib_path_is_accepted(tmp_path):
    """``RunConfig(output_dir=tmp_path)`` was refused: 'output_dir must be a folder path, got PosixPath(...)'."""
    from pathlib import Path

    config = RunConfig(output_dir=tmp_path / "runs")
    assert config.output_dir == str(tmp_path / "runs") and isinstance(config.output_dir, str)
    assert RunConfig(output_dir=Path("~") / "runs").output_dir == str(Path.home() / "runs")


@pytest.mark.parametrize(("call", "match"), [
    (lambda tmp: fit({"name": "x", "output_dir": str(tmp)}), "fit takes a vitlab.train.RunConfig, got dict"),
    (lambda tmp: fit(_config(tmp, "cb"), callbacks=["EarlyStopping"]), "list of lightning.Callback instances"),
    (lambda tmp: fit(_config(tmp, "cb"), callbacks=lambda: None), "list of lightning.Callback instances"),
])
def test_wrong_python_arguments_to_fit_name_the_fix_before_anything_is_written(tmp_path, call, match):
    """A dict config raised AttributeError ('dict' object has no attribute 'name'), a str callback an AttributeError
    from deep inside Lightning after the run folder was made."""
    with pytest.raises(TypeError, match=match):
        call(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_run_config_from_args_refuses_one_string_instead_of_a_list():
    """A command line as one string was split into characters: '- - c o n f i g ...: unrecognized arguments'."""
    from vitlab.train.arguments import run_config_from_args

    with pytest.raises(TypeError, match=r"list of argument strings.*shlex.split"):
        run_config_from_args("--config run.yaml")


def test_negative_views_that_do_not_fit_the_images_are_refused_before_training(tmp_path, monkeypatch):
    """A negatives.patch_size that does not divide data.img_size failed only at the first training step."""
    started = []
    monkeypatch.setattr(L.Trainer, "fit", lambda *args, **kwargs: started.append(1))
    config = _config(tmp_path, "views", max_steps=2)
    config.negatives = NegativesConfig(enabled=True, kinds=["shuffle"], patch_size=5)
    with pytest.raises(ConfigError, match=r"negatives\.patch_size does not fit the 32x32 training images "
                                          r"\(data\.img_size\): .*patch_size=5 does not divide"):
        fit(config)
    assert not started  # refused before the trainer ran (was: at the first step, after the sanity check)


def test_resuming_a_finished_run_keeps_its_validation_metrics_and_wall_time(tmp_path):
    """`--resume true` on a finished run re-tested it and rewrote summary.json without its val/ metrics and with
    the resume's 0.5 s as the wall time (the run trained for 7 s)."""
    first = fit(_config(tmp_path, "done", max_epochs=1))
    before = json.loads((first.run_dir / "summary.json").read_text())
    assert "val/acc" in before["metrics"]
    again = fit(_config(tmp_path, "done", max_epochs=1), resume=True)
    after = json.loads((again.run_dir / "summary.json").read_text())
    assert after["metrics"]["val/acc"] == before["metrics"]["val/acc"]
    assert after["metrics"]["test/acc"] == pytest.approx(before["metrics"]["test/acc"])
    assert after["wall_time_s"] > before["wall_time_s"] and again.wall_time_s >= after["wall_time_s"]


def test_numpy_numbers_in_the_optim_section_are_taken_as_plain_numbers():
    """OptimConfig(betas=(np.float32(0.9), 0.99)) was refused ('two numbers in [0, 1)'): np.float32 is no float."""
    import numpy as np
    import yaml

    optim = OptimConfig(lr=np.float32(0.5), betas=(np.float32(0.9), np.float64(0.99)), weight_decay=np.int64(0))
    assert optim.betas == pytest.approx((0.9, 0.99)) and type(optim.betas[0]) is float and type(optim.lr) is float
    assert yaml.safe_load(yaml.safe_dump({"lr": optim.lr, "betas": list(optim.betas)}))["lr"] == 0.5  # plain YAML
    for bad in ({"lr": np.bool_(True)}, {"betas": (np.float32(1.5), 0.9)}, {"lr": np.float32("nan")}):
        with pytest.raises(ConfigError):
            OptimConfig(**bad)


def test_a_non_finite_final_metric_is_recorded_as_null_not_refused(tmp_path, monkeypatch):
    """save_checkpoint refuses NaN in metadata (not standard JSON): a NaN test loss must not lose the final weights."""
    from vitlab.checkpoint import read_metadata

    monkeypatch.setattr(L.Trainer, "test", lambda *a, **k: [{"test/acc": 0.5, "test/loss": float("nan")}])
    result = fit(_config(tmp_path, "nanloss", max_steps=2))
    assert read_metadata(result.weights)["extra"]["metrics"]["test/loss"] is None
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["metrics"]["test/loss"] is None and summary["metrics"]["test/acc"] == 0.5
