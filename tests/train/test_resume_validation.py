"""A resume that trains on reports the validation of its own final weights, not the previous session's."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from vitlab.checkpoint import load_model
from vitlab.train import DataConfig, ModelConfig, OptimConfig, RunConfig, fit
from vitlab.train.run import build_run_datamodule

TINY = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}


def _config(tmp_path, max_steps: int) -> RunConfig:
    return RunConfig(
        name="steps", seed=0, output_dir=str(tmp_path),
        model=ModelConfig(name="vit_vitlab_tiny_patch8_32", kwargs=dict(TINY)),
        data=DataConfig(name="digits", batch_size=64, options={"limit_train": 256}),
        optim=OptimConfig(lr=3e-3, warmup_epochs=0),
        trainer={"max_epochs": 5, "max_steps": max_steps, "accelerator": "cpu", "enable_progress_bar": False,
                 "enable_model_summary": False, "limit_val_batches": 1, "limit_test_batches": 1},
    )


def _val_loss_of_saved_weights(config: RunConfig, run_dir) -> float:
    """Cross-entropy of the run's model.safetensors on the first validation batch, computed here by hand."""
    model, _ = load_model(run_dir)
    datamodule = build_run_datamodule(config)
    datamodule.setup("fit")
    images, labels = next(iter(datamodule.val_dataloader()))
    with torch.no_grad():
        return F.cross_entropy(model.eval()(images), labels).item()


def test_a_resume_that_trains_on_validates_its_final_weights(tmp_path):
    """`vitlab fit --resume true --trainer.max_steps 4` after a 2-step run, neither reaching an epoch's end, kept the
    first session's val/ metrics (step-2 weights) beside test metrics of the step-4 weights."""
    first = fit(_config(tmp_path, max_steps=1))
    resumed = fit(_config(tmp_path, max_steps=3), resume=True)
    summary = json.loads((resumed.run_dir / "summary.json").read_text())
    assert summary["global_step"] == 3
    assert abs(summary["metrics"]["val/loss"] - first.metrics["val/loss"]) > 1e-6  # it trained on: not the old value
    expected = _val_loss_of_saved_weights(_config(tmp_path, max_steps=3), resumed.run_dir)
    assert abs(summary["metrics"]["val/loss"] - expected) < 1e-5


def test_resuming_a_finished_run_keeps_its_validation_numbers(tmp_path):
    first = fit(_config(tmp_path, max_steps=2))
    again = fit(_config(tmp_path, max_steps=2), resume=True)
    assert again.metrics["val/loss"] == first.metrics["val/loss"]
