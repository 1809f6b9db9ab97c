"""The intrinsic-dimension sweep's plain engine on a CUDA GPU (``trainer.accelerator: gpu``).

Marked ``cuda`` (deselected by default): ``pytest -m cuda tests/study/test_cuda.py`` on a GPU machine, or
``VITLAB_TEST_CUDA_DEVICE=cpu pytest -m cuda ...`` to run the same code on the CPU.
"""

from __future__ import annotations

import pytest
import yaml

from vitlab.cli.main import main
from vitlab.peft.intrinsic.sweep import read_sweep

pytestmark = pytest.mark.cuda


def test_plain_engine_sweep_runs_on_the_device_the_trainer_section_names(cuda_device, tmp_path, monkeypatch):
    import vitlab.peft.intrinsic.trainer as trainer

    seen = []
    original = trainer.fit_classifier
    monkeypatch.setattr(trainer, "fit_classifier", lambda model, *args: seen.append(
        {p.device.type for p in model.parameters()}) or original(model, *args))
    config = tmp_path / "fc.yaml"
    config.write_text(yaml.safe_dump({
        "name": "fc", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "model": {"name": "mnist_fc", "kwargs": {"hidden": [32]}},
        "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.0},
        "optim": {"lr": 1e-3},
        "trainer": {"max_epochs": 1, "accelerator": "gpu" if cuda_device.type == "cuda" else "cpu"},
        "peft": {"method": "subspace", "options": {"dim": 16, "projection": "fastfood",
                                                    "sweep": {"engine": "plain", "lr": 0.1}}},
    }))
    assert main(["intrinsic-dim", "--config", str(config), "--dims", "[16]"]) == 0
    assert seen == [{cuda_device.type}, {cuda_device.type}]  # the reference and the subspace point
    rows = read_sweep(tmp_path / "runs" / "fc" / "intrinsic_dim.csv")
    assert [r["dim"] for r in rows] == [None, 16] and rows[0]["accuracy"] > 0.3  # chance is 0.1
