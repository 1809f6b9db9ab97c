"""ClassificationTask and VitlabDataModule used with a plain ``L.Trainer``, as Lightning users do (no vitlab CLI)."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from vitlab.data import build_datamodule
from vitlab.errors import ConfigError
from vitlab.train.module import ClassificationTask

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}


def tiny_task(**kwargs) -> ClassificationTask:
    return ClassificationTask("vit_vitlab_tiny_patch4_32", num_classes=10, model_kwargs=TINY, **kwargs)


def trainer(**kwargs) -> L.Trainer:
    options = dict(max_epochs=1, limit_train_batches=2, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False, accelerator="cpu")
    return L.Trainer(**{**options, **kwargs})


@pytest.mark.parametrize("task_kwargs", [{"in_chans": 1}, {"in_chans": 1, "img_size": 32}, {"in_chans": 1,
                                                                                           "img_size": None}])
def test_fit_with_a_logger_and_a_name_built_task(tmp_path, task_kwargs):
    """A task built from a timm name records img_size / in_chans; the datamodule's own (in_chans None: the data's)
    made Lightning's hparams merge raise 'keys [...] present in both ... different values' with any logger."""
    dm = build_datamodule("digits", batch_size=32)
    task = tiny_task(**task_kwargs)
    fit = trainer(logger=CSVLogger(tmp_path, name="", version=""), limit_val_batches=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit.fit(task, dm)
    assert fit.global_step == 2
    logged = (tmp_path / "hparams.yaml").read_text()
    assert "vit_vitlab_tiny_patch4_32" in logged and "val_fraction" not in logged
    assert dm.hparams.in_chans is None and dm.hparams.val_fraction == 0.1  # still recorded on the datamodule


def test_several_validation_and_test_loaders_each_get_their_own_accuracy():
    """validation_step / test_step had no dataloader_idx: Lightning refused a list of loaders."""
    dm = build_datamodule("digits", batch_size=64, in_chans=1)
    dm.setup("fit")
    torch.manual_seed(0)
    task = tiny_task(in_chans=1)
    val, test = dm.val_dataloader(), dm.test_dataloader()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = trainer().validate(task, dataloaders=[val, test])
        tested = trainer().test(task, dataloaders=[test, val])
    task.eval()
    with torch.no_grad():
        expected = [sum(int((task(x).argmax(1) == y).sum()) for x, y in loader) / len(loader.dataset)
                    for loader in (val, test)]
    assert results[0]["val/acc/dataloader_idx_0"] == pytest.approx(expected[0], abs=1e-6)
    assert results[1]["val/acc/dataloader_idx_1"] == pytest.approx(expected[1], abs=1e-6)
    assert tested[0]["test/acc/dataloader_idx_0"] == pytest.approx(expected[1], abs=1e-6)
    assert tested[1]["test/acc/dataloader_idx_1"] == pytest.approx(expected[0], abs=1e-6)
    assert expected[0] != expected[1]  # the two loaders are really told apart
    # a single loader keeps the plain names vitlab's callbacks monitor
    single = trainer().validate(task, dataloaders=val, verbose=False)[0]
    assert set(single) == {"val/loss", "val/acc"} and single["val/acc"] == pytest.approx(expected[0], abs=1e-6)
    assert set(task.state_dict()) == set(tiny_task(in_chans=1).state_dict())  # the extra metrics save no state


@pytest.mark.parametrize("method", ["fit", "validate", "test"])
def test_a_task_with_fewer_classes_than_the_datamodule_is_refused(method):
    """num_classes=5 on the 10 digits classes failed deep in torch ('IndexError: Target 5 is out of bounds')."""
    dm = build_datamodule("digits", batch_size=32)
    task = ClassificationTask("vit_vitlab_tiny_patch4_32", num_classes=5, in_chans=1, model_kwargs=TINY)
    with pytest.raises(ValueError, match=r"10 classes but the task's model has 5 outputs: .*num_classes=10"):
        getattr(trainer(limit_val_batches=1, limit_test_batches=1), method)(task, datamodule=dm)
    # more outputs than classes is a valid choice (e.g. a head shared with a larger label set)
    wide = ClassificationTask("vit_vitlab_tiny_patch4_32", num_classes=12, in_chans=1, model_kwargs=TINY)
    assert trainer(limit_val_batches=1).validate(wide, datamodule=dm, verbose=False)[0]["val/acc"] >= 0


class _Term:
    name, weight = "zero", 0.5

    def __call__(self, task, batch, outputs):
        return {"loss": outputs["logits"].sum() * 0}


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    # each failed deep inside timm / torchmetrics / Python, or named the wrong fix
    ({"num_classes": 0}, ConfigError, r"num_classes must be an int >= 1, got 0"),  # said 'pass num_classes='
    ({"num_classes": "10"}, ConfigError, r"num_classes must be an int >= 1, got '10' \(str\)"),
    ({"img_size": "32"}, ConfigError, r"img_size must be an int >= 1, got '32'"),  # timm: unsupported operand //
    ({"optim": {"learning_rate": 1e-3}}, ConfigError, r"unknown key\(s\) learning_rate; .*fields are lr, min_lr"),
    ({"loss_terms": _Term()}, TypeError, r"wrap one term in a list, loss_terms=\[term\]"),
    ({"loss_terms": [lambda task, batch, outputs: {}]}, TypeError, r"name: str and weight: float"),
    ({"model_transform": 3}, TypeError, r"model_transform must be a callable nn.Module -> nn.Module, got int"),
    ({"model_kwargs": [("depth", 1)]}, TypeError, r"model_kwargs must be a mapping"),
    ({"model_kwargs": {**TINY, "pretrained": True}}, ConfigError, r"pretrained load weights .*load_pretrained"),
    ({"model_kwargs": {**TINY, "num_classes": 5}}, ConfigError, r"num_classes=10 contradicts model_kwargs"),
])
def test_bad_task_arguments_name_the_fix(kwargs, error, match):
    options = {"model": "vit_vitlab_tiny_patch4_32", "num_classes": 10, "model_kwargs": TINY, **kwargs}
    with pytest.raises(error, match=match):
        ClassificationTask(**options)


def test_good_task_arguments_still_build():
    task = ClassificationTask("vit_vitlab_tiny_patch4_32", num_classes=np.int64(10), img_size=(32, 32),
                              model_kwargs=TINY, loss_terms=[_Term()], optim={"lr": 1e-3})
    assert task(torch.zeros(2, 3, 32, 32)).shape == (2, 10) and task.loss_terms[0].name == "zero"
    assert ClassificationTask(nn.Linear(4, 3), num_classes=3, loss_terms=None).loss_terms == []


def test_plot_training_curves_paths(tmp_path, monkeypatch):
    """A folder as out_png wrote '<folder>.png' beside it and returned the folder; a name without a suffix returned
    a path that did not exist (matplotlib appends .png); a missing parent folder and '~' failed."""
    from vitlab.train.plots import plot_training_curves

    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,step,val/loss,val/acc\n0,9,1.5,0.4\n1,19,1.1,0.6\n")
    with pytest.raises(IsADirectoryError, match="give the image's file path"):
        plot_training_curves(metrics, tmp_path)
    assert not tmp_path.with_suffix(".png").exists()
    written = plot_training_curves(metrics, tmp_path / "curves")
    assert written == tmp_path / "curves.png" and written.stat().st_size > 0 and written.with_suffix(".svg").is_file()
    monkeypatch.setenv("HOME", str(tmp_path))
    nested = plot_training_curves("~/metrics.csv", "~/new/folder/c.png")
    assert nested == tmp_path / "new" / "folder" / "c.png" and nested.is_file()


def test_callbacks_helpers_take_what_lightning_users_hold(tmp_path, monkeypatch):
    """build_callbacks / build_loggers refused Callback / Logger instances ('entries take the form {class_path...}'),
    check_monitors(one_callback) raised 'not iterable', and build_loggers put MLflow's store under a literal '~'."""
    from lightning.pytorch.callbacks import EarlyStopping
    from lightning.pytorch.loggers import TensorBoardLogger

    from vitlab.train.callbacks import build_callbacks, build_loggers, check_monitors

    stop = EarlyStopping(monitor="val/acc", mode="max")
    assert build_callbacks([stop, "LearningRateMonitor"])[0] is stop
    board = TensorBoardLogger(str(tmp_path / "tb"))
    loggers = build_loggers(board, tmp_path / "run")
    assert loggers[1] is board and (tmp_path / "run").resolve() == Path(loggers[0].log_dir).resolve()
    names, prefixes = tiny_task(in_chans=1).monitorable_metrics()
    check_monitors(stop, names, prefixes)
    with pytest.raises(ConfigError, match="set init_args.mode: max"):
        check_monitors(EarlyStopping(monitor="val/acc"), names, prefixes)
    with pytest.raises(TypeError, match="takes Lightning callbacks, got 'EarlyStopping'"):
        check_monitors(["EarlyStopping"], names, prefixes)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert Path(build_loggers(None, "~/run")[0].log_dir) == tmp_path / "home" / "run"
    assert not (tmp_path / "~").exists()


def test_load_from_checkpoint_with_an_optim_override_that_drops_ema(tmp_path):
    """load_from_checkpoint(path, optim={"lr": ...}) of an EMA run replaced the saved optim whole (no EMA) and failed
    with a wall of 'Unexpected key(s) ema.module...'; now one line names the fix, and the fix loads."""
    task = tiny_task(in_chans=1, optim={"ema_decay": 0.5})
    fit = trainer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit.fit(task, build_datamodule("digits", batch_size=32))
    fit.save_checkpoint(tmp_path / "ema.ckpt")
    with pytest.raises(ValueError, match=r"holds EMA weights but the task was built without them: set optim "
                                         r"ema_decay .*\['hyper_parameters'\]\['optim'\]"):
        ClassificationTask.load_from_checkpoint(tmp_path / "ema.ckpt", optim={"lr": 1e-4})
    saved = torch.load(tmp_path / "ema.ckpt", weights_only=True)["hyper_parameters"]["optim"]
    loaded = ClassificationTask.load_from_checkpoint(tmp_path / "ema.ckpt", optim={**saved, "lr": 1e-4})
    assert loaded.optim.lr == 1e-4 and torch.equal(loaded.eval_model().head.weight, task.eval_model().head.weight)
    assert not torch.equal(loaded.eval_model().head.weight, loaded.model.head.weight)  # EMA really loaded
    plain = tiny_task(in_chans=1)
    fit = trainer()
    fit.fit(plain, build_datamodule("digits", batch_size=32))
    fit.save_checkpoint(tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="has no EMA weights but the task was built with them: leave optim ema_decay"):
        ClassificationTask.load_from_checkpoint(tmp_path / "plain.ckpt", optim={"ema_decay": 0.9})


def test_numpy_numbers_in_the_arguments_keep_checkpoints_loadable(tmp_path):
    """NumPy numbers in model_kwargs / optim were stored as such in the hyper-parameters, and the checkpoint then
    failed to load with weights_only=True (Lightning's and vitlab's resume), echoing torch's advice."""
    task = ClassificationTask("vit_vitlab_tiny_patch4_32", num_classes=10, in_chans=1, img_size=(32, 32),
                              model_kwargs={**TINY, "drop_rate": np.float32(0.0)},
                              optim={"lr": np.float64(2e-3), "betas": (np.float64(0.9), 0.99)})
    fit = trainer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit.fit(task, build_datamodule("digits", batch_size=32))
    fit.save_checkpoint(tmp_path / "np.ckpt")
    hparams = torch.load(tmp_path / "np.ckpt", weights_only=True)["hyper_parameters"]
    assert type(hparams["model_kwargs"]["drop_rate"]) is float and type(hparams["optim"]["lr"]) is float
    assert hparams["optim"]["lr"] == pytest.approx(2e-3) and hparams["img_size"] == (32, 32)
    assert hparams["optim"]["betas"] == pytest.approx((0.9, 0.99))
    loaded = ClassificationTask.load_from_checkpoint(tmp_path / "np.ckpt", weights_only=True)
    assert torch.equal(loaded.model.head.weight, task.model.head.weight)
