"""Runs that keep work and never fake it: non-finite values, resume, the run-folder lock, names, options, loggers."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from vitlab.cli.main import main
from vitlab.errors import ConfigError
from vitlab.train import DataConfig, ModelConfig, OptimConfig, RunConfig, fit
from vitlab.train.config import NegativesConfig
from vitlab.train.run_folder import RunLock

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}


def _config(tmp_path, name, epochs=2, **trainer):
    return RunConfig(
        name=name, seed=0, output_dir=str(tmp_path),
        model=ModelConfig(name="vit_vitlab_tiny_patch4_32", kwargs=dict(TINY)),
        data=DataConfig(name="digits", batch_size=64, options={"limit_train": 256}),
        optim=OptimConfig(lr=3e-3, warmup_epochs=0.5),
        trainer={"max_epochs": epochs, "accelerator": "cpu", "enable_progress_bar": False,
                 "enable_model_summary": False, "limit_train_batches": 3, "limit_val_batches": 1,
                 "limit_test_batches": 1, **trainer},
    )


class PoisonAfter(L.Callback):
    """Writes NaN into a weight after the last training batch of ``epoch`` (validation then sees a NaN loss)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == trainer.num_training_batches - 1:
            with torch.no_grad():
                next(task.model.parameters()).fill_(float("nan"))


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_non_finite_val_loss_keeps_only_a_finite_checkpoint_and_the_advice_works(tmp_path, capsys):
    with pytest.raises(FloatingPointError) as info:
        fit(_config(tmp_path, "nan", epochs=3), callbacks=[PoisonAfter(epoch=1)])
    message = str(info.value)
    last = tmp_path / "nan" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True, map_location="cpu")
    assert checkpoint["epoch"] == 0  # epoch 1 ended with NaN weights / val loss: its checkpoint was not written
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())
    assert "end of epoch 0" in message and str(last) in message
    assert not (tmp_path / "nan" / "model.safetensors").exists()
    command = message.split("instead: ", 1)[1]
    args = shlex.split(command)
    assert args[:2] == ["vitlab", "fit"] and "--optim.lr" in args
    assert main(args[1:]) == 0, capsys.readouterr().err  # the advised restart runs to the end
    restarted = tmp_path / args[args.index("--name") + 1]
    assert (restarted / "model.safetensors").is_file()


def test_non_finite_values_in_epoch_zero_say_no_checkpoint_exists(tmp_path):
    with pytest.raises(FloatingPointError, match="No checkpoint was written"):
        fit(_config(tmp_path, "nan0"), callbacks=[PoisonAfter(epoch=0)])
    assert not (tmp_path / "nan0" / "checkpoints" / "last.ckpt").exists()


def test_resume_refuses_changed_options_extends_epochs_and_appends_metrics(tmp_path):
    config = _config(tmp_path, "r", epochs=1)
    fit(config)
    rows_before = _rows(tmp_path / "r")
    changed = _config(tmp_path, "r", epochs=1)
    changed.optim.lr = 1e-2
    with pytest.raises(ConfigError, match=r"optim.lr: 0.003 -> 0.01"):
        fit(changed, resume=True)
    longer = _config(tmp_path, "r", epochs=2)
    fit(longer, resume=True)
    rows_after = _rows(tmp_path / "r")
    trained = {float(row["epoch"]) for row in rows_after if row.get("train/loss_epoch")}
    assert trained == {0.0, 1.0}  # epoch 0 from the first part, epoch 1 from the resumed one
    # the first part's test row (epoch 1) goes: the resumed run replays from the end of epoch 0
    kept = [row for row in rows_before if not row.get("epoch") or float(row["epoch"]) <= 0]
    assert kept and [{k: row[k] for k in kept[0]} for row in rows_after[: len(kept)]] == kept
    saved = (tmp_path / "r" / "config.yaml").read_text()
    assert "max_epochs: 2" in saved and "lr: 0.003" in saved


def test_resume_of_an_unknown_run_lists_the_runs(tmp_path):
    fit(_config(tmp_path, "known", epochs=1))
    with pytest.raises(FileNotFoundError, match="runs in .*: known"):
        fit(_config(tmp_path, "knwon", epochs=1), resume=True)


def test_the_lock_refuses_a_second_writer_and_takes_over_a_stale_one(tmp_path):
    run_dir = tmp_path / "locked"
    with RunLock(run_dir):
        with pytest.raises(ConfigError, match="in use by another vitlab process"):
            fit(_config(tmp_path, "locked", epochs=1))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / ".lock").write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid}))
    result = fit(_config(tmp_path, "locked", epochs=1))
    assert result.weights.is_file() and not (run_dir / ".lock").exists()


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".", "-x"])
def test_names_must_be_plain_folder_names(tmp_path, name):
    with pytest.raises(ConfigError, match="plain folder name"):
        fit(_config(tmp_path, name))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("trainer, match", [
    ({"max_epochs": 0}, "max_epochs must be an integer >= 1"),
    ({"devices": 0}, "devices must be >= 1"),
    ({"devices": "0"}, "devices must be >= 1"),  # what `--trainer.devices 0` hands over
    ({"devices": "-2"}, "devices must be >= 1"),
    ({"accumulate_grad_batches": 0}, "accumulate_grad_batches"),
])
def test_meaningless_trainer_options_are_refused(tmp_path, trainer, match):
    with pytest.raises(ConfigError, match=match):
        fit(_config(tmp_path, "bad", **trainer))
    assert not (tmp_path / "bad" / "model.safetensors").exists()


@pytest.mark.parametrize("build, match", [
    (lambda: OptimConfig(lr=float("nan")), "optim.lr"),
    (lambda: OptimConfig(lr=-1), "optim.lr"),
    (lambda: OptimConfig(lr=1e-3, min_lr=1e-2), "optim.min_lr"),
    (lambda: OptimConfig(weight_decay=float("inf")), "optim.weight_decay"),
    (lambda: OptimConfig(ema_decay=1.0), "optim.ema_decay"),
    (lambda: OptimConfig(warmup_epochs=-1), "optim.warmup_epochs"),
    (lambda: OptimConfig(label_smoothing=1.0), "optim.label_smoothing"),
    (lambda: RunConfig(seed=-3), "seed"),
    (lambda: NegativesConfig(enabled=True, weight=float("nan")), "negatives.weight"),
    (lambda: NegativesConfig(enabled=True, patch_size=1), "negatives.patch_size"),
    (lambda: NegativesConfig(enabled=False, loss="l2"), "negatives.enabled is false"),
    (lambda: DataConfig(normalize="imagenet"), "data.normalize"),
])
def test_bad_values_are_refused_where_they_enter(build, match):
    with pytest.raises(ConfigError, match=match):
        build()


def test_num_classes_that_contradict_the_data_are_refused(tmp_path):
    config = _config(tmp_path, "classes")
    config.model.kwargs["num_classes"] = 7
    with pytest.raises(ConfigError, match="digits has 10 classes"):
        fit(config)


def test_weights_that_cannot_be_written_keep_last_ckpt_and_resume_finishes(tmp_path, monkeypatch):
    import vitlab.train.run as run

    original = run.save_checkpoint

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run, "save_checkpoint", full_disk)
    with pytest.raises(OSError, match="--resume true"):
        fit(_config(tmp_path, "disk", epochs=1))
    assert (tmp_path / "disk" / "checkpoints" / "last.ckpt").is_file()
    monkeypatch.setattr(run, "save_checkpoint", original)
    assert fit(_config(tmp_path, "disk", epochs=1), resume=True).weights.is_file()


def test_tensorboard_mlflow_and_callbacks_from_class_paths(tmp_path):
    config = _config(tmp_path, "loggers", epochs=3, log_every_n_steps=1)
    config.trainer["logger"] = [
        {"class_path": "TensorBoardLogger", "init_args": {"name": "tb"}},
        {"class_path": "lightning.pytorch.loggers.MLFlowLogger", "init_args": {"experiment_name": "vitlab"}},
    ]
    config.trainer["callbacks"] = [{"class_path": "EarlyStopping",
                                    "init_args": {"monitor": "val/acc", "mode": "max", "patience": 0,
                                                  "min_delta": 2.0}}]  # accuracy can never improve by 2
    result = fit(config)
    run_dir = result.run_dir
    trained = {float(r["epoch"]) for r in _rows(run_dir) if r.get("train/loss_epoch")}
    assert trained == {0.0, 1.0}  # stopped early
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = set()
    for events in (run_dir / "tb").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        scalars |= set(accumulator.Tags()["scalars"])
    assert {"val/acc", "train/loss_epoch", "test/acc"} <= scalars
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")  # vitlab's default store: a file in the run folder
    (experiment,) = [e for e in client.search_experiments() if e.name == "vitlab"]
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    assert len(client.get_metric_history(mlflow_run.info.run_id, "val/acc")) == 2


def test_a_logger_that_is_not_a_logger_is_refused(tmp_path):
    config = _config(tmp_path, "badlogger")
    config.trainer["logger"] = {"class_path": "lightning.pytorch.callbacks.EarlyStopping"}
    with pytest.raises(ConfigError, match="is not a lightning"):
        fit(config)


def test_a_corrupt_last_ckpt_is_a_one_line_error_on_resume(tmp_path):
    from vitlab.checkpoint import CheckpointError

    fit(_config(tmp_path, "corrupt", epochs=1))
    last = tmp_path / "corrupt" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError) as info:
        fit(_config(tmp_path, "corrupt", epochs=2), resume=True)
    assert str(last) in str(info.value) and "\n" not in str(info.value)


def test_model_compile_runs_in_place_and_saves_eager_names(tmp_path):
    config = _config(tmp_path, "compiled", epochs=1)
    config.model.compile = {"backend": "eager"}  # torch.compile's graph capture without a C++ toolchain: quick

    class Compiled(L.Callback):
        def on_train_start(self, trainer, task):
            self.compiled = task.model._compiled_call_impl is not None  # what nn.Module.compile sets

    seen = Compiled()
    result = fit(config, callbacks=[seen])
    assert seen.compiled
    from vitlab.checkpoint import load_model

    model, meta = load_model(result.run_dir)  # plain names: no "_orig_mod." prefix
    assert all("_orig_mod" not in name for name in model.state_dict())
    with pytest.raises(ConfigError, match="model.compile"):
        ModelConfig(compile="yes")


@pytest.mark.parametrize(("options", "reason"), [({"mode": "bogus"}, "Unrecognized mode=bogus"),
                                                ({"backend": "nope"}, "Invalid backend: 'nope'"),
                                                ({"foo": 1}, r"compile\(\) got an unexpected keyword argument 'foo'")])
def test_model_compile_keywords_torch_refuses_are_a_config_error_before_training(tmp_path, options, reason):
    config = _config(tmp_path, "bad_compile", epochs=1)
    config.model.compile = options
    with pytest.raises(ConfigError, match=f"model.compile .* was refused by torch.compile: {reason}"):
        fit(config)
    assert not (tmp_path / "bad_compile" / "checkpoints").exists()


@pytest.mark.parametrize(("option", "message"), [
    ({"max_steps": 0}, "trainer.max_steps must be an integer >= 1 .*random weights"),
    ({"limit_train_batches": 0}, "trainer.limit_train_batches must be a number > 0.*random weights"),
    ({"max_time": "00:00:00:00"}, "trainer.max_time is zero"),
    ({"val_check_interval": 0}, "trainer.val_check_interval must be a number > 0"),
    ({"check_val_every_n_epoch": 0}, "trainer.check_val_every_n_epoch must be an integer >= 1"),
    ({"gradient_clip_val": -1}, "trainer.gradient_clip_val must be a finite number >= 0"),
    ({"strategy": "nosuch"}, "refused by lightning.Trainer .*nosuch"),
    ({"devices": "abc"}, "refused by lightning.Trainer"),
])
def test_trainer_options_that_train_nothing_or_that_lightning_refuses_are_one_config_error(tmp_path, option, message):
    with pytest.raises(ConfigError, match=message):
        fit(_config(tmp_path, "bad_trainer", **option))
    assert not (tmp_path / "bad_trainer" / "model.safetensors").exists()


def test_resuming_a_finished_run_whose_last_ckpt_is_gone_is_refused(tmp_path):
    finished = fit(_config(tmp_path, "done", epochs=1))
    before = (finished.run_dir / "model.safetensors").read_bytes()
    (finished.run_dir / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(ConfigError, match="finished run without checkpoints/last.ckpt.*another --name"):
        fit(_config(tmp_path, "done", epochs=1), resume=True)
    assert (finished.run_dir / "model.safetensors").read_bytes() == before  # not overwritten by a new training


def test_run_config_sections_given_as_dicts_are_built_and_other_types_refused(tmp_path):
    config = RunConfig(model={"name": "vit_vitlab_tiny_patch8_32"}, optim={"lr": 0.1}, peft={"method": "linear"})
    assert isinstance(config.model, ModelConfig) and config.optim.lr == 0.1 and config.peft.method == "linear"
    with pytest.raises(ConfigError, match="data must be a DataConfig or a dict of its fields, got 'digits'"):
        RunConfig(data="digits")
    with pytest.raises(ConfigError, match=r"model: .*'nme'; the model section's keys are \['name'"):
        RunConfig(model={"nme": "x"})
    config = _config(tmp_path, "neg", epochs=1)
    config.negatives = NegativesConfig(enabled=True, options={"bogus": 1})
    with pytest.raises(ConfigError, match="negatives.options .*'bogus'"):
        fit(config)
    assert not (tmp_path / "neg").exists()  # a run that failed before training leaves no folder to list or resume


def test_a_moved_run_folder_resumes_under_its_new_name(tmp_path):
    import shutil

    fit(_config(tmp_path, "original", epochs=1))
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copytree(tmp_path / "original", moved / "renamed")
    config = _config(tmp_path, "renamed", epochs=2)
    config.output_dir = str(moved)
    result = fit(config, resume=True)  # was refused: "name: 'original' -> 'renamed'", a difference one cannot drop
    assert result.run_dir == moved / "renamed" and (moved / "renamed" / "model.safetensors").is_file()
    assert "name: renamed" in (moved / "renamed" / "config.yaml").read_text()


def test_logger_false_from_the_command_line_means_no_extra_logger(tmp_path):
    from vitlab.train.callbacks import build_loggers

    for spec in ("false", "None", None, False):
        assert [type(lg).__name__ for lg in build_loggers(spec, tmp_path)] == ["AppendingCSVLogger"]


def test_a_warmup_as_long_as_the_run_is_cut_with_a_warning_naming_it(tmp_path):
    config = _config(tmp_path, "long_warmup", epochs=1)
    config.optim = OptimConfig(lr=3e-3, warmup_epochs=50)
    with pytest.warns(UserWarning, match=r"optim.warmup_epochs=50 is as long as the whole run \(3 optimiser steps\)"):
        fit(config)


def test_a_saved_run_config_with_a_key_twice_is_refused_on_resume(tmp_path):
    from vitlab.train.run_folder import load_run_config

    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("name: r\nseed: 0\nseed: 1\n")
    with pytest.raises(ConfigError, match=r"config\.yaml: key 'seed' is given twice \(line 2 and line 3\)"):
        load_run_config(run)


class CtrlC(L.Callback):
    """Presses Ctrl-C after the first training batch of ``epoch`` (Lightning shuts down and calls sys.exit(1))."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


def test_ctrl_c_after_a_checkpoint_is_a_keyboard_interrupt_naming_it_and_the_resume_works(tmp_path):
    config = _config(tmp_path, "ctrlc", epochs=2)
    with pytest.raises(KeyboardInterrupt) as info:  # not Lightning's SystemExit(1)
        fit(config, callbacks=[CtrlC(epoch=1)])
    last = tmp_path / "ctrlc" / "checkpoints" / "last.ckpt"
    assert f"{last} (end of epoch 0) is kept" in str(info.value)
    assert f"vitlab fit --name ctrlc --output_dir {tmp_path} --resume true" in str(info.value)
    assert fit(_config(tmp_path, "ctrlc", epochs=2), resume=True).weights.is_file()
    with pytest.raises(FileExistsError, match="holds a finished run .*choose another --name, or train it longer"):
        fit(_config(tmp_path, "ctrlc", epochs=2))


def test_a_folder_left_by_ctrl_c_in_epoch_0_is_not_mixed_into_a_new_run(tmp_path):
    with pytest.raises(KeyboardInterrupt, match="no epoch had finished, so there is no checkpoint"):
        fit(_config(tmp_path, "early", epochs=1), callbacks=[CtrlC(epoch=0)])
    run_dir = tmp_path / "early"
    assert (run_dir / "metrics.csv").is_file() and not (run_dir / "checkpoints" / "last.ckpt").exists()
    other = _config(tmp_path, "early", epochs=1)
    other.optim = OptimConfig(lr=1e-2)
    with pytest.raises(FileExistsError, match="stopped before its first checkpoint .*--resume true"):
        fit(other)  # would have appended its curves to the interrupted run's metrics.csv
    fit(_config(tmp_path, "early", epochs=1), resume=True)  # starts over with the saved config
    steps = [row["step"] for row in _rows(run_dir) if row.get("lr-AdamW/pg1")]
    assert steps == ["0"]  # the interrupted attempt's rows are gone, not mixed in


def test_files_a_caller_put_in_a_new_run_folder_are_not_an_earlier_run(tmp_path):
    run_dir = tmp_path / "launched"
    run_dir.mkdir()
    (run_dir / "study_spec.json").write_text("{}")  # what vitlab's study launcher writes before it starts the run
    assert fit(_config(tmp_path, "launched", epochs=1)).weights.is_file()
    assert (run_dir / "study_spec.json").read_text() == "{}"


def test_the_cli_prints_why_a_run_was_interrupted(monkeypatch, capsys):
    def interrupted(ns, argv):
        raise KeyboardInterrupt("training of runs/x was interrupted; no checkpoint: start it over")

    monkeypatch.setattr("vitlab.cli.main.dispatch", interrupted)
    assert main(["fit", "--name", "x"]) == 130
    assert capsys.readouterr().err == "vitlab fit: interrupted: training of runs/x was interrupted; no checkpoint: " \
                                      "start it over\n"


@pytest.mark.parametrize(("monitor", "hint"), [("val_acc", "val/acc, val/loss"), ("test/acc", "only after training")])
def test_a_callback_monitoring_a_metric_the_run_never_logs_is_refused_before_training(tmp_path, monitor, hint):
    config = _config(tmp_path, "monitor", epochs=1)
    config.trainer["callbacks"] = {"class_path": "EarlyStopping", "init_args": {"monitor": monitor, "mode": "max"}}
    with pytest.raises(ConfigError, match=rf"EarlyStopping monitors '{monitor}', which the run does not log .*{hint}"):
        fit(config)  # Lightning alone raised a RuntimeError traceback after the first epoch
    assert not (tmp_path / "monitor").exists()


def test_monitoring_val_metrics_without_validation_is_refused_before_training(tmp_path):
    config = _config(tmp_path, "noval", epochs=1, limit_val_batches=0)
    config.trainer["callbacks"] = {"class_path": "EarlyStopping", "init_args": {"monitor": "val/acc", "mode": "max"}}
    with pytest.raises(ConfigError, match=r"monitors 'val/acc', which the run does not log during training: monitor "
                                          r"one of train/loss,"):
        fit(config)


def test_a_loss_terms_metrics_can_be_monitored():
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from vitlab.train.callbacks import check_monitors

    watch = [EarlyStopping(monitor="train/negatives/neg_acc"), ModelCheckpoint(monitor=None)]
    check_monitors(watch, ["val/acc"], ["train/negatives/"])
    with pytest.raises(ConfigError, match=r"monitors 'train/negatives/neg_acc'.*monitor one of val/acc, train/other/"):
        check_monitors(watch, ["val/acc"], ["train/other/"])


@pytest.mark.parametrize(("spec", "message"), [
    ({"class_path": "MLFlowLogger", "init_args": {"tracking_uri": "file:./mlruns"}},
     "MLFlowLogger.* failed: MlflowException: .*MLFLOW_ALLOW_FILE_STORE=true"),  # was a traceback
    ({"class_path:MLFlowLogger": None}, r"YAML needs a space after each ':'"),
    ("{class_path:TensorBoardLogger}", "was read as text, not as a mapping"),
])
def test_a_logger_its_library_refuses_is_one_config_error(tmp_path, spec, message):
    from vitlab.train.callbacks import build_loggers

    with pytest.raises(ConfigError, match=message):
        build_loggers(spec, tmp_path)


def test_a_logger_that_fails_when_started_is_refused_before_training(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import TensorBoardLogger

    from vitlab.train.callbacks import build_loggers

    def broken(self):
        raise OSError("event file cannot be created")

    monkeypatch.setattr(TensorBoardLogger, "experiment", property(broken))
    with pytest.raises(ConfigError, match=r"TensorBoardLogger could not start \(OSError: event file cannot be"):
        build_loggers("TensorBoardLogger", tmp_path)


@pytest.mark.parametrize(("callback", "monitor", "mode", "fix"), [
    ("EarlyStopping", "val/acc", None, "max"),  # Lightning's default mode 'min' stops as accuracy rises
    ("ModelCheckpoint", "val/acc", "min", "max"),  # would keep the worst checkpoint
    ("EarlyStopping", "val/loss", "max", "min"),
])
def test_a_monitor_mode_that_prefers_the_worse_value_is_refused(tmp_path, callback, monitor, mode, fix):
    config = _config(tmp_path, "mode", epochs=1)
    init_args = {"monitor": monitor, **({"mode": mode} if mode else {})}
    config.trainer["callbacks"] = {"class_path": callback, "init_args": init_args}
    with pytest.raises(ConfigError, match=rf"{callback} monitors '{monitor}' with mode .* set init_args.mode: {fix}"):
        fit(config)


def test_a_run_refused_after_its_loggers_started_leaves_no_folder_to_block_the_fixed_command(tmp_path):
    config = _config(tmp_path, "blocked", epochs=1, limit_train_batches=1.5)  # Lightning refuses it in Trainer()
    config.trainer["logger"] = {"class_path": "TensorBoardLogger"}  # started (event file written) before that
    with pytest.raises(ConfigError, match="refused by lightning.Trainer .*limit_train_batches"):
        fit(config)
    assert not (tmp_path / "blocked").exists()
    config.trainer["limit_train_batches"] = 1
    assert fit(config).weights.is_file()


@pytest.mark.parametrize("accelerator, match", [
    ("gpu", r"trainer.accelerator 'gpu': this machine has no such device; use auto \(a GPU when present\) or cpu"),
    ("cuda", r"trainer.accelerator 'cuda': this machine has no such device"),
    ("cpus", r"trainer.accelerator must be one of auto, cpu, cuda, gpu, mps, tpu"),
])
def test_an_accelerator_this_machine_lacks_is_refused_before_the_run(tmp_path, monkeypatch, accelerator, match):
    # Lightning: MisconfigurationException "No supported gpu backend found!", after the data was prepared
    from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator

    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: False))
    monkeypatch.setattr(MPSAccelerator, "is_available", staticmethod(lambda: False))
    with pytest.raises(ConfigError, match=match):
        fit(_config(tmp_path, "nogpu", accelerator=accelerator))
    assert not (tmp_path / "nogpu").exists()


def test_a_val_check_interval_longer_than_an_epoch_is_one_config_error_naming_the_fix(tmp_path):
    from vitlab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"trainer.val_check_interval: .*\(4\).*set trainer.check_val_every_n_epoch: "
                                          "null"):
        fit(_config(tmp_path, "long_interval", val_check_interval=4))  # 3 training batches per epoch
    assert not (tmp_path / "long_interval").exists()  # nothing left to block the corrected command
    run = fit(_config(tmp_path, "long_interval", epochs=3, val_check_interval=4, check_val_every_n_epoch=None))
    assert run.weights is not None and "val/acc" in run.metrics


def test_a_run_stopped_by_max_steps_or_max_time_continues_under_a_larger_one(tmp_path):
    import dataclasses

    import yaml

    from vitlab.errors import ConfigError
    from vitlab.train.run_folder import resume_config

    fit(_config(tmp_path, "steps", epochs=5, max_steps=2))
    resumed = fit(_config(tmp_path, "steps", epochs=5, max_steps=5), resume=True)
    assert yaml.safe_load((resumed.run_dir / "config.yaml").read_text())["trainer"]["max_steps"] == 5
    ckpt = torch.load(resumed.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 5  # trained on, where a max_steps stop could only be replayed before
    saved = _config(tmp_path, "timed", max_time="00:00:00:02")
    (tmp_path / "timed").mkdir()
    (tmp_path / "timed" / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(saved)))
    longer = resume_config(tmp_path / "timed", _config(tmp_path, "timed", max_time={"minutes": 1}), tmp_path)
    assert longer.trainer["max_time"] == {"minutes": 1}
    with pytest.raises(ConfigError, match="max_time: '00:00:00:02' -> '00:00:00:01'"):  # shorter: not an extension
        resume_config(tmp_path / "timed", _config(tmp_path, "timed", max_time="00:00:00:01"), tmp_path)
