"""`vitlab eval` / `predict` / `robustness` / `diagnose-negatives` on a Lightning .ckpt that a run's ModelCheckpoint
kept."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.checkpoint import CheckpointError, checkpoint_weights
from vitlab.cli.main import main
from vitlab.data import build_datamodule
from vitlab.eval.evaluate import evaluate_checkpoint
from vitlab.train import DataConfig, ModelConfig, OptimConfig, RunConfig, fit

BEST = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"monitor": "val/acc", "mode": "max", "save_top_k": 1, "filename": "best"}}


def _run(tmp_path, name, **optim):
    return fit(RunConfig(
        name=name, seed=1, output_dir=str(tmp_path),
        model=ModelConfig(name="vit_vitlab_tiny_patch8_32", kwargs={"depth": 1, "embed_dim": 16, "num_heads": 1}),
        data=DataConfig(name="digits", img_size=16, batch_size=128), optim=OptimConfig(lr=3e-3, **optim),
        trainer={"max_epochs": 3, "accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False,
                 "callbacks": [BEST]},
    ))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("ckpt"), "best")


def test_eval_of_a_ckpt_uses_that_epochs_weights(run, capsys):
    last = run.run_dir / "checkpoints" / "last.ckpt"  # the final epoch: the same weights as model.safetensors
    assert main(["eval", "--checkpoint", str(last), "--data", "digits"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["acc"] == pytest.approx(run.metrics["test/acc"])
    best = run.run_dir / "checkpoints" / "best.ckpt"
    epoch_weights = {k[len("model."):]: v for k, v in torch.load(best, weights_only=True)["state_dict"].items()
                     if k.startswith("model.")}
    with checkpoint_weights(best) as weights:
        from safetensors.torch import load_file

        assert all(torch.equal(load_file(str(weights))[k], v) for k, v in epoch_weights.items())
        assert evaluate_checkpoint(weights, "digits")["samples"] == 360
    assert not weights.exists()  # temporary


def test_predict_of_a_ckpt_prints_classes(run, tmp_path, capsys):
    image = tmp_path / "digit.png"
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(image)
    assert main(["predict", "--checkpoint", str(run.run_dir / "checkpoints" / "best.ckpt"), str(image)]) == 0
    assert capsys.readouterr().out.startswith(f"{image}: ")


def test_the_ema_weights_are_the_ones_evaluated(tmp_path):
    run = _run(tmp_path, "ema", ema_decay=0.5)
    state = torch.load(run.run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    with checkpoint_weights(run.run_dir / "checkpoints" / "last.ckpt") as weights:
        from safetensors.torch import load_file

        assert torch.equal(load_file(str(weights))["head.weight"], state["ema.module.head.weight"])
        assert not torch.equal(state["ema.module.head.weight"], state["model.head.weight"])
        assert evaluate_checkpoint(weights, "digits")["acc"] == pytest.approx(run.metrics["test/acc"])


def test_a_ckpt_outside_a_finished_run_names_the_fix(run, tmp_path, capsys):
    loose = tmp_path / "loose.ckpt"
    loose.write_bytes((run.run_dir / "checkpoints" / "best.ckpt").read_bytes())
    with pytest.raises(CheckpointError, match="outside a vitlab run folder"):
        with checkpoint_weights(loose):
            pass
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "config.yaml").write_text("name: unfinished\n")
    (unfinished / "checkpoints" / "last.ckpt").write_bytes(loose.read_bytes())
    assert main(["eval", "--checkpoint", str(unfinished / "checkpoints" / "last.ckpt")]) == 1
    assert "--resume true" in capsys.readouterr().err


def test_robustness_and_diagnose_negatives_of_a_ckpt_report_it_beside_it(run, tmp_path, capsys):
    """Both commands read a .ckpt as eval does; the reports name the .ckpt and go beside it (not into the run folder,
    whose reports are the final weights'), and running them again replaces their own reports."""
    best = run.run_dir / "checkpoints" / "best.ckpt"
    with checkpoint_weights(best) as weights:
        expected = evaluate_checkpoint(weights, "digits")["acc"]
    for _ in range(2):
        assert main(["diagnose-negatives", "--checkpoint", str(best), "--n", "all", "--kinds", "[shuffle]"]) == 0
    report = json.loads((best.parent / "diagnose_negatives_digits.json").read_text())
    assert report["checkpoint"] == str(best)
    assert report["views"]["clean"]["accuracy"] == pytest.approx(expected)

    published = tmp_path / "published"  # a CIFAR-C-layout folder at the run's 16 px: the clean images, 5 "severities"
    published.mkdir()
    dm = build_datamodule("digits", img_size=16, batch_size=512)
    dm.setup("test")
    images, labels = next(iter(dm.test_dataloader()))
    pixels = ((images * torch.tensor(dm.std).view(1, -1, 1, 1) + torch.tensor(dm.mean).view(1, -1, 1, 1)) * 255)
    pixels = pixels.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.save(published / "contrast.npy", np.concatenate([pixels] * 5))
    np.save(published / "labels.npy", np.concatenate([labels.numpy()] * 5))
    assert main(["robustness", "--checkpoint", str(best), "--corruption_dir", str(published)]) == 0
    report = json.loads((best.parent / "robustness_digits_published.json").read_text())
    assert report["checkpoint"] == str(best)
    assert report["accuracy"]["contrast"]["1"] == pytest.approx(expected, abs=1 / 360)  # uint8 round trip
    capsys.readouterr()


def test_a_ckpt_of_a_bottleneck_adapter_run_names_the_run_folder(run, tmp_path, capsys):
    """Such a run only ever writes adapter.safetensors: its .ckpt was said to belong to an unfinished run (resume)."""
    adapter_run = tmp_path / "adapter_run"
    (adapter_run / "checkpoints").mkdir(parents=True)
    (adapter_run / "config.yaml").write_text("name: adapter_run\n")
    (adapter_run / "adapter.safetensors").write_bytes(b"the run's adapter")
    (adapter_run / "checkpoints" / "last.ckpt").write_bytes((run.run_dir / "checkpoints" / "best.ckpt").read_bytes())
    assert main(["eval", "--checkpoint", str(adapter_run / "checkpoints" / "last.ckpt")]) == 1
    err = capsys.readouterr().err
    assert "bottleneck-adapter run" in err and f"pass the run folder ({adapter_run})" in err and "--resume" not in err
