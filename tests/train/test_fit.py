"""End-to-end runs on scikit-learn's digits (real data, offline) with a tiny ViT."""

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from vitlab.checkpoint import load_model, read_metadata, state_dict_sha256
from vitlab.eval.evaluate import evaluate_checkpoint, predict_images
from vitlab.train import DataConfig, ModelConfig, OptimConfig, RunConfig, fit
from vitlab.train.plots import read_metrics

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 2}


def _config(tmp_path, name, epochs=2, batch_size=64, **trainer):
    return RunConfig(
        name=name, seed=3, output_dir=str(tmp_path),
        model=ModelConfig(name="vit_vitlab_tiny_patch4_32", kwargs=dict(TINY)),
        data=DataConfig(name="digits", batch_size=batch_size),
        optim=OptimConfig(lr=3e-3, warmup_epochs=0.5),
        trainer={"max_epochs": epochs, "accelerator": "cpu", "enable_progress_bar": False,
                 "enable_model_summary": False, **trainer},
    )


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    return fit(_config(tmp, "learn", epochs=8, batch_size=16))


@pytest.mark.slow  # end to end: run by `make test`, deselect with -m "not slow" for a quick pass
def test_fit_learns_and_writes_the_run_folder(learned_run):
    run = learned_run.run_dir
    for name in ("config.yaml", "config.json", "metrics.csv", "model.safetensors", "summary.json",
                 "training_curves.png", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    rows = read_metrics(run / "metrics.csv")
    losses = [r["train/loss_epoch"] for r in rows if "train/loss_epoch" in r]
    assert len(losses) == 8 and losses[-1] < 0.4 * losses[0]
    assert learned_run.metrics["test/acc"] > 0.6  # chance is 0.1
    meta = read_metadata(run)
    assert meta["kind"] == "model" and meta["model_name"] == "vit_vitlab_tiny_patch4_32"
    assert meta["model_kwargs"] == {**TINY, "num_classes": 10, "in_chans": 1, "img_size": 32}
    assert meta["extra"]["data"]["name"] == "digits"
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == 3e-3


def test_eval_and_predict_agree_with_the_run(learned_run, tmp_path):
    result = evaluate_checkpoint(learned_run.run_dir, "digits", batch_size=100)
    assert result["acc"] == pytest.approx(learned_run.metrics["test/acc"], abs=1e-6)
    from sklearn.datasets import load_digits

    digits = load_digits()
    paths = []
    for i in range(3):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray((digits.images[-1 - i] * 255 / 16).astype(np.uint8)).save(path)
        paths.append(path)
    rows = predict_images(learned_run.run_dir / "model.safetensors", paths, topk=3)
    assert [len(r["predictions"]) for r in rows] == [3, 3, 3]
    for row in rows:
        probs = [p for _, p in row["predictions"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_same_seed_gives_same_metrics_and_weights(tmp_path):
    a = fit(_config(tmp_path, "a", epochs=1, limit_train_batches=6))
    b = fit(_config(tmp_path, "b", epochs=1, limit_train_batches=6))
    assert a.metrics == b.metrics
    assert a.extra["weights_sha256_per_rank"] == b.extra["weights_sha256_per_rank"]


class _Crash(L.Callback):
    """Simulates an interruption (or corrupts the weights) at a given global step."""

    def __init__(self, step, nan=False):
        self.step, self.nan = step, nan

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            if not self.nan:
                raise RuntimeError("simulated crash")
            with torch.no_grad():
                module.model.head.weight.fill_(float("nan"))


@pytest.mark.parametrize("negatives", [False, True])
def test_resume_after_interruption_ends_with_same_weights(tmp_path, negatives):
    """With negatives on, the views' own random stream must resume too (not restart from its seed)."""
    from vitlab.train import NegativesConfig

    steps_per_epoch = 4
    section = NegativesConfig(enabled=True, kinds=["shuffle", "rotate"], patch_size=8) if negatives else None

    def config_of(name):
        config = _config(tmp_path, name, epochs=3, limit_train_batches=steps_per_epoch)
        if section is not None:
            config.negatives = section
        return config

    full = fit(config_of("full"))
    config = config_of("crashed")
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(config, callbacks=[_Crash(step=steps_per_epoch + 1)])
    assert (tmp_path / "crashed" / "checkpoints" / "last.ckpt").is_file()
    with pytest.raises(FileExistsError, match="--resume true"):
        fit(config)
    resumed = fit(config, resume=True)
    assert resumed.extra["weights_sha256_per_rank"] == full.extra["weights_sha256_per_rank"]
    assert resumed.metrics["test/acc"] == full.metrics["test/acc"]


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = _config(tmp_path, "nan", epochs=3, limit_train_batches=4)
    with pytest.raises(FloatingPointError, match="at global step 6"):
        fit(config, callbacks=[_Crash(step=6, nan=True)])
    last = tmp_path / "nan" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True, map_location="cpu")["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert not (tmp_path / "nan" / "model.safetensors").exists()


@pytest.mark.slow  # end to end: run by `make test`, deselect with -m "not slow" for a quick pass
def test_ddp_processes_end_with_identical_weights_and_draw_their_own_negative_views(tmp_path):
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "ddp", "seed": 1, "output_dir": str(tmp_path),
        "model": {"name": "vit_vitlab_tiny_patch4_32", "kwargs": TINY},
        "data": {"name": "digits", "batch_size": 32},
        "negatives": {"enabled": True, "kinds": ["shuffle", "rotate"], "patch_size": 8},
        "trainer": {"max_epochs": 1, "limit_train_batches": 3, "limit_val_batches": 2, "accelerator": "cpu",
                    "devices": 2, "strategy": "ddp", "enable_progress_bar": False},
    }))
    vitlab = Path(sys.executable).parent / "vitlab"
    out = subprocess.run([str(vitlab), "fit", "--config", str(cfg)], capture_output=True, text=True, timeout=240,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("run folder:") == 1  # the worker process re-ran the command and printed it again
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    hashes = summary["weights_sha256_per_rank"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    model, _ = load_model(tmp_path / "ddp")
    assert state_dict_sha256(model.state_dict()) == hashes[0]
    rng = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=True)["vitlab_rng"]
    per_rank = rng["loss_terms_per_rank"]  # both processes' streams, for each to resume its own
    assert len(per_rank) == 2 and per_rank[0].keys() == rng["loss_terms"].keys() == {"0:negatives"}
    assert torch.equal(per_rank[0]["0:negatives"], rng["loss_terms"]["0:negatives"])
    # each process drew its own views (before, both drew the same cell permutations and rotations for their images)
    assert not torch.equal(per_rank[0]["0:negatives"], per_rank[1]["0:negatives"])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"nosuch": 1}, r"model.kwargs {.*} were refused by timm.create_model\(.*unexpected keyword argument 'nosuch'"),
    ({"depth": "abc"}, r"depth must be an int >= 0, got 'abc'"),  # the vitlab ViT's own check names the keyword
    ({"embed_dim": 7}, r"embed_dim=7 is not divisible by num_heads=4"),
])
def test_model_kwargs_the_model_refuses_are_a_config_error_naming_them(kwargs, message):
    from vitlab.errors import ConfigError
    from vitlab.train.run import build_run_model

    run = RunConfig(model=ModelConfig(name="vit_vitlab_tiny_patch8_32", kwargs=kwargs))
    with pytest.raises(ConfigError, match=message):
        build_run_model(run, num_classes=10, in_chans=1)


def test_fast_dev_run_checks_a_few_batches_and_saves_no_model(tmp_path, capsys):
    from vitlab.cli.main import main

    result = fit(_config(tmp_path, "smoke", fast_dev_run=2))
    assert result.weights is None and result.extra == {"fast_dev_run": True}
    assert {"test/acc", "val/acc"} <= set(result.metrics)
    assert not (result.run_dir / "model.safetensors").exists() and not (result.run_dir / "checkpoints").exists()
    code = main(["fit", "--name", "cli", "--output_dir", str(tmp_path), "--data.name", "digits",
                 "--model.kwargs", "{depth: 1, embed_dim: 16, num_heads: 1}", "--trainer.fast_dev_run", "true",
                 "--trainer.enable_progress_bar", "false"])
    assert code == 0 and "no weights, checkpoint or metrics were saved" in capsys.readouterr().out


def test_a_real_run_can_follow_a_fast_dev_run_check_with_the_same_name(tmp_path):
    check = fit(_config(tmp_path, "same", fast_dev_run=1))
    assert check.extra == {"fast_dev_run": True} and not check.run_dir.exists()  # nothing left to block the run
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "spec.txt").write_text("a launcher's file")
    fit(_config(tmp_path, "mine", fast_dev_run=1))
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["spec.txt"]  # the caller's file stays
    real = fit(_config(tmp_path, "same", epochs=1))
    assert real.weights is not None and real.weights.is_file()
    assert yaml.safe_load((real.run_dir / "config.yaml").read_text())["trainer"].get("fast_dev_run") is None


def test_a_run_extended_on_resume_follows_the_schedule_of_its_new_length(tmp_path):
    def rates(run):  # the learning rate at the start of each epoch (LearningRateMonitor rows)
        return [r["lr-AdamW/pg1"] for r in read_metrics(run / "metrics.csv") if "lr-AdamW/pg1" in r]

    fit(_config(tmp_path, "extended", epochs=1, batch_size=128))
    extended = fit(_config(tmp_path, "extended", epochs=3, batch_size=128), resume=True)
    planned = fit(_config(tmp_path, "planned", epochs=3, batch_size=128))
    assert len(rates(extended.run_dir)) == 3
    # epoch 0 ran under the 1-epoch plan; from the resume on the rates are those of a run planned for 3 epochs
    # (the restored 1-epoch cosine, stepped past its end, climbed back towards the peak rate instead)
    assert rates(extended.run_dir)[1:] == pytest.approx(rates(planned.run_dir)[1:], rel=1e-6)
    assert rates(planned.run_dir)[2] < rates(planned.run_dir)[1] < 3e-3
