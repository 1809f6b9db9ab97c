"""ClassificationTask and VitlabDataModule used with a plain ``L.Trainer``, as Lightning users do (no vitlab CLI)."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from vitlab.data import build_datamodule
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

