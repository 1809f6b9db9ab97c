"""``peft.method: subspace`` in the training harness, and ``vitlab intrinsic-dim`` end to end on digits."""

import csv
import json

import lightning as L
import pytest
import torch
import yaml

import vitlab.train.run
from vitlab.cli.main import main
from vitlab.data import build_datamodule
from vitlab.peft import KAdaptationConfig, apply_kadaptation, get_peft_spec
from vitlab.peft.intrinsic import merge_subspace
from vitlab.peft.intrinsic.per_module import PER_MODULE_CSV, read_module_table
from vitlab.peft.intrinsic.sweep import find_d90, read_sweep
from vitlab.peft.kadaptation import kadaptation_layers
from vitlab.train import ClassificationTask
from vitlab.train.config import DataConfig, ModelConfig, OptimConfig, PeftConfig, RunConfig
from vitlab.train.extensions import build_model_transform

TINY = {"patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 2}


def test_subspace_method_trains_only_theta_d_in_lightning(tiny_vit):
    base = tiny_vit.eval()
    x = torch.randn(4, 1, 32, 32)
    expected = base(x)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    transform = build_model_transform(PeftConfig(method="subspace", options={"dim": 64, "sweep": {"lr": 0.1}}))
    task = ClassificationTask(base, optim=OptimConfig(lr=0.05, warmup_epochs=0), model_transform=transform)
    assert [n for n, p in task.model.named_parameters() if p.requires_grad] == ["theta_d"]
    assert task.num_classes == 10 and get_peft_spec(task.model)["params"] == ["theta_d"]
    assert torch.equal(task.model.eval()(x), expected)  # θ_d = 0: exactly the base model
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    task.model.train()
    trainer.fit(task, datamodule=build_datamodule("digits", img_size=32, batch_size=32))
    assert task.model.theta_d.shape == (64,) and task.model.theta_d.abs().min() > 0  # Adam moved every entry
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # θ₀ untouched
    merged = merge_subspace(task.model).eval()
    assert not torch.allclose(merged(x), expected) and torch.allclose(merged(x), task.model.eval()(x), atol=1e-5)


def test_subspace_method_options(tiny_vit):
    model = build_model_transform(PeftConfig(method="subspace", target_modules=["qkv@q", "head"],
                                             options={"dim": 16, "said": True}))(tiny_vit)
    assert model.num_params == 2 * (48 * 48 + 48) + 48 * 10 + 10 and model.said_scales.numel() == 6
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 16
    for options, match in [({"dim": 8, "rank": 2}, "unknown option"), ({"seed": 1}, "needs options"),
                           ({"dim": 8, "sweep": 3}, "sweep must be a mapping"), ({"dim": 0}, "positive int")]:
        with pytest.raises(ValueError, match=match):
            build_model_transform(PeftConfig(method="subspace", options=options))


def _write_config(tmp_path, name, epochs, sweep, batch_size=64, **options):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "seed": 0, "output_dir": str(tmp_path / "runs"),
        "model": {"name": "vit_vitlab_tiny_patch4_32", "kwargs": TINY},
        "data": {"name": "digits", "batch_size": batch_size},
        "optim": {"lr": 3e-3, "warmup_epochs": 0.5},
        "trainer": {"max_epochs": epochs, "accelerator": "cpu", "enable_progress_bar": False,
                    "enable_model_summary": False},
        "peft": {"method": "subspace", "options": {"dim": 100, "sweep": sweep, **options}},
    }))
    return path


@pytest.mark.slow  # end to end: run by `make test`, deselect with -m "not slow" for a quick pass
def test_intrinsic_dim_cli_writes_csv_plot_json_and_resumes(tmp_path, monkeypatch):
    config = _write_config(tmp_path, "vit", epochs=2, sweep={"lr": 0.05, "stop_after_reached": None})
    assert main(["intrinsic-dim", "--config", str(config), "--dims", "[8, 256]"]) == 0
    folder = tmp_path / "runs" / "vit"
    rows = read_sweep(folder / "intrinsic_dim.csv")
    assert [(r["group"], r["dim"]) for r in rows] == [("reference", None), ("all", 8), ("all", 256)]
    assert all(0 <= r["accuracy"] <= 1 for r in rows) and rows[0]["accuracy"] > 0.15  # chance is 0.1
    assert (folder / "intrinsic_dim.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((folder / "intrinsic_dim.json").read_text())
    points = {r["dim"]: r["accuracy"] for r in rows[1:]}
    d90 = find_d90(points, rows[0]["accuracy"])
    assert summary["d90"] == d90.raw and summary["d90_interpolated"] == d90.interpolated
    assert summary["threshold"] == pytest.approx(0.9 * rows[0]["accuracy"]) and summary["complete"]
    assert summary["projection"] == "fastfood" and summary["projection_norm"] == "per_tensor"
    assert summary["metric"] == "test/acc" and summary["eval_images"] == 360  # digits: the last 360 images test
    assert json.loads((folder / "d256" / "summary.json").read_text())["trainable_parameters"] == 256

    calls = []
    real_fit = vitlab.train.run.fit
    monkeypatch.setattr(vitlab.train.run, "fit",
                        lambda config, **kw: calls.append(config.name) or real_fit(config, **kw))
    assert main(["intrinsic-dim", "--config", str(config), "--dims", "[8, 256]"]) == 0
    assert calls == [] and read_sweep(folder / "intrinsic_dim.csv") == rows  # finished: nothing retrained
    # interrupted before the last point was recorded and its run folder finished
    lines = (folder / "intrinsic_dim.csv").read_text().splitlines(keepends=True)
    (folder / "intrinsic_dim.csv").write_text("".join(lines[:-1]))
    (folder / "d256" / "summary.json").unlink()
    (folder / "d256" / "checkpoints" / "last.ckpt").unlink()
    assert main(["intrinsic-dim", "--config", str(config), "--dims", "[8, 256]"]) == 0
    resumed = read_sweep(folder / "intrinsic_dim.csv")
    assert calls == ["d256"] and resumed[-1]["accuracy"] == rows[-1]["accuracy"]  # same seed: same result


def test_intrinsic_dim_per_module_table_feeds_kadaptation_auto(tmp_path, tiny_vit, capsys):
    sweep = {"engine": "plain", "lr": 0.1, "reference": 0.4, "kinds": ["attn.q", "mlp.fc1"]}
    # measured with the global normalisation (the per-tensor one wants another sweep.lr on this tiny ViT)
    config = _write_config(tmp_path, "per_module", epochs=4, sweep=sweep, batch_size=32, projection_norm="global")
    assert main(["intrinsic-dim", "--config", str(config), "--dims", "[512, 100000]", "--per-module",
                 "--peft.target_modules", "[head]"]) == 0
    out = capsys.readouterr().out  # the grid's points above a kind's size were dropped without a word
    assert "peft.target_modules ['head'] applies to the whole-model sweep only" in out  # was ignored silently
    assert "attn.q: d = [100000] exceed the 5,194 parameters in its subspace and are skipped" in out
    folder = tmp_path / "runs" / "per_module"
    assert not (folder / "intrinsic_dim.csv").exists()  # --per-module replaces the whole-model sweep
    records = read_module_table(folder)
    assert [r.module for r in records] == ["mlp.fc1", "attn.q"]  # measured: fc1 reaches 0.36 at d=512, q does not
    assert records[0].reached and records[0].d90 == 512 and not records[1].reached
    assert records[0].reference_accuracy == 0.4 and records[0].targets == ("mlp.fc1", "head")
    with (folder / PER_MODULE_CSV).open() as f:
        assert [r["module"] for r in csv.DictReader(f)] == ["mlp.fc1", "attn.q"]
    assert read_module_table(folder / PER_MODULE_CSV) == records and records[1].d90 is None  # the CSV = the JSON
    assert (folder / "intrinsic_dim_per_module.png").read_bytes()[:4] == b"\x89PNG"
    adapted = apply_kadaptation(tiny_vit, KAdaptationConfig(n=8, target_modules="auto",
                                                            intrinsic_table=str(folder / PER_MODULE_CSV)))
    assert sorted(dict(kadaptation_layers(adapted))) == ["blocks.0.mlp.fc1", "blocks.1.mlp.fc1"]


def test_intrinsic_dim_refuses_bad_settings(tmp_path, capsys):
    bad = _write_config(tmp_path, "bad", epochs=1, sweep={"grid": [1, 2]})
    assert main(["intrinsic-dim", "--config", str(bad)]) == 1
    assert "unknown peft.options.sweep key(s) ['grid']" in capsys.readouterr().err
    config = _write_config(tmp_path, "full", epochs=1, sweep={})
    assert main(["intrinsic-dim", "--config", str(config), "--peft.method", "lora"]) == 1
    assert "needs peft.method: subspace" in capsys.readouterr().err
    assert main(["intrinsic-dim", "--config", str(config), "--model.name", "mnist_fc", "--model.kwargs", "{}"]) == 1
    assert "mnist_fc (Li et al.'s MNIST network) is not a timm model" in capsys.readouterr().err  # was 'unknown model'
    # without a validation split: refused before the reference run (val/acc was found missing after it, patience
    # failed inside Lightning's EarlyStopping with a traceback)
    for option in (["--peft.options.sweep.metric", "val/acc"], ["--peft.options.sweep.patience", "2"]):
        assert main(["intrinsic-dim", "--config", str(config), "--data.val_fraction", "0", *option]) == 1
        err = capsys.readouterr().err
        assert "need a validation split, but data.val_fraction is 0" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "full" / "reference").exists()


def test_intrinsic_dim_prints_not_reached_for_both_d90s(tmp_path, capsys):
    sweep = {"engine": "plain", "lr": 0.1, "reference": 1.0}  # 100 % is out of reach: no point reaches 90 %
    config = _write_config(tmp_path, "unreached", epochs=1, sweep=sweep)
    assert main(["intrinsic-dim", "--config", str(config), "--dims", "4"]) == 0  # one point (was a parse error)
    out = capsys.readouterr().out
    assert "d90: not reached (grid), not reached (interpolated)" in out  # the grid value printed as 'None'
    assert [r["dim"] for r in read_sweep(tmp_path / "runs" / "unreached" / "intrinsic_dim.csv")] == [None, 4]



def test_sweep_settings_refine_ratio():
    from vitlab.study.intrinsic import SweepSettings

    assert SweepSettings().refine_ratio == 2.0 and SweepSettings(refine_ratio=None).refine_ratio is None
    for bad in (1, 0.5):
        with pytest.raises(ValueError, match="refine_ratio must be a number > 1"):
            SweepSettings(refine_ratio=bad)
    for bad in (True, "2"):  # the type check names the type
        with pytest.raises(ValueError, match=r"refine_ratio must be float \| null, got"):
            SweepSettings(refine_ratio=bad)


def test_sweep_cache_key_names_the_projection_norm_and_matches_old_global_records():
    from vitlab.study.intrinsic import canonical_sweep_key, sweep_cache_key
    from vitlab.train.config import PeftConfig, RunConfig

    def key(**options):
        config = RunConfig(name="x", peft=PeftConfig(method="subspace", options={"dim": 8, **options}))
        return sweep_cache_key(config)

    assert key()["config"]["peft"]["options"]["projection_norm"] == "per_tensor"
    assert key() == key(projection_norm="per_tensor") != key(projection_norm="global")
    # a record written before projection_norm existed (and before the key was canonical) means global
    old = json.loads(json.dumps(key(projection_norm="global")))
    old["config"].update(name="x", output_dir="runs")
    old["config"]["peft"]["options"] = {"dim": 8, "sweep": {"lr": None, "engine": None, "metric": None,
                                                            "patience": None}}
    assert canonical_sweep_key(old) == json.loads(json.dumps(key(projection_norm="global")))


def test_a_default_written_out_or_another_dim_is_the_same_sweep(tmp_path, capsys):
    config = _write_config(tmp_path, "same", epochs=1, sweep={"engine": "plain", "lr": 0.1, "reference": 0.5})
    assert main(["intrinsic-dim", "--config", str(config), "--dims", "[4]"]) == 0
    capsys.readouterr()
    # each was refused as 'made by another configuration' (e.g. sweep.metric: None -> test/acc, dim: 100 -> 500)
    for extra in (["--peft.options.sweep.metric", "test/acc"], ["--peft.options.projection", "fastfood"],
                  ["--peft.options.seed", "0"], ["--peft.options.dim", "500"],
                  ["--output_dir", str(tmp_path / "runs") + "/"]):
        assert main(["intrinsic-dim", "--config", str(config), "--dims", "[4]", *extra]) == 0, capsys.readouterr()
    assert main(["intrinsic-dim", "--config", str(config), "--dims", "[4]", "--peft.options.seed", "1"]) == 1
    err = capsys.readouterr().err
    assert "config.peft.options.seed: 0 -> 1)" in err and "dim" not in err.split("(config.")[1]


@pytest.mark.parametrize(("sweep", "message"), [
    ({"fraction": 1.5}, r"sweep.fraction must be in \(0, 1\]"), ({"fraction": 0}, r"sweep.fraction must be in"),
    ({"metric": "val/nosuch"}, r"sweep.metric must be one of \('test/acc', 'val/acc'\)"),
    ({"lr": "1e-3"}, r"sweep.lr must be float \| null, got '1e-3' \(str\)"),  # YAML 1.1 reads 1e-3 as a string
    ({"patience": "3"}, r"sweep.patience must be int \| null, got '3'"),  # was a TypeError from '3' < 1
    ({"kinds": "attn"}, r"sweep.kinds must be list\[str\] \| null"),  # a string would be swept letter by letter
    ({"stop_after_reached": 0}, r"sweep.stop_after_reached must be >= 1 or null"),
    ({"kinds": []}, r"sweep.kinds must be a non-empty list of distinct module kinds"),  # [] swept every kind
    # below: accepted before, or refused naming log_grid instead of the key to fix
    ({"kinds": ["attn_q"]}, r"unknown peft.options.sweep.kinds \['attn_q'\] \(renamed: \{'attn_q': 'attn.q'\}\)"),
    ({"reference": 98}, r"sweep.reference must be an accuracy in \(0, 1\]"),
    ({"d_min": 1000, "d_max": 10}, r"sweep needs 1 <= d_min <= d_max, got d_min=1000, d_max=10"),
    ({"d_min": 0}, r"sweep needs 1 <= d_min <= d_max"),
    ({"num": 0}, r"sweep.num must be >= 2 log-spaced points"), ({"num": 1}, r"sweep.num must be >= 2"),
    ({"patience": 0}, r"sweep.patience must be >= 1"),
])
def test_sweep_settings_refuse_a_bad_fraction_or_metric_before_the_reference_run(sweep, message):
    from vitlab.study.intrinsic import SweepSettings

    with pytest.raises(ValueError, match=message):
        SweepSettings.from_options({"sweep": sweep})


def test_grid_points_above_the_parameter_count_are_announced_not_dropped_silently(tmp_path, monkeypatch, capsys):
    import vitlab.peft.intrinsic.sweep as sweep_module

    seen = {}

    class Stop(Exception):
        pass

    def stop(point, grid, *args, **kwargs):  # no training: only the grid the sweep would run
        seen["grid"] = grid
        raise Stop

    monkeypatch.setattr(sweep_module, "run_sweep", stop)  # imported by the driver when it runs
    config = _write_config(tmp_path, "big", epochs=1, sweep={})
    with pytest.raises(Stop):
        main(["intrinsic-dim", "--config", str(config), "--dims", "[10, 100000000]"])
    out = capsys.readouterr().out
    size = seen["grid"][-1]
    assert seen["grid"] == [10, size] and size < 100_000_000
    assert f"d = [100000000] exceed the {size:,} trainable parameters D; the grid stops at D" in out


@pytest.mark.parametrize(("trainer", "message"), [
    ({"accelerator": "gpu"}, "trainer.accelerator 'gpu': this machine has no CUDA GPU"),
    ({"accelerator": "tpu"}, "trainer.accelerator"),
    ({"accelerator": "cpu", "devices": 2}, "trainer.devices 2: the plain engine trains on one device"),
    ({"accelerator": "cpu", "precision": "bf16-mixed"}, "trainer.precision 'bf16-mixed': the plain engine trains in "
                                                        "float32 only"),
])
def test_the_plain_engine_refuses_trainer_settings_it_would_have_ignored(tmp_path, capsys, monkeypatch, trainer,
                                                                         message):
    # it trained on the CPU in float32 whatever the trainer section said
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = _write_config(tmp_path, "plain", epochs=1, sweep={"engine": "plain", "lr": 0.1, "reference": 0.5})
    raw = yaml.safe_load(config.read_text())
    raw["trainer"].update(trainer)
    config.write_text(yaml.safe_dump(raw))
    assert main(["intrinsic-dim", "--config", str(config), "--dims", "4"]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "plain" / "d4").exists()


@pytest.mark.parametrize(("trainer", "cuda", "expected"), [
    ({}, False, "cpu"), ({}, True, "cuda"), ({"accelerator": "auto"}, True, "cuda"),
    ({"accelerator": "cpu"}, True, "cpu"), ({"accelerator": "gpu", "devices": 1}, True, "cuda"),
    ({"accelerator": "cuda", "precision": "32-true"}, True, "cuda"),
])
def test_the_plain_engine_trains_where_lightning_would(monkeypatch, trainer, cuda, expected):
    from vitlab.study.intrinsic import plain_engine_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert plain_engine_device(trainer) == torch.device(expected)


@pytest.mark.parametrize("extra", [{"max_steps": 2}, {"limit_train_batches": 2}, {"limit_val_batches": 0.5},
                                   {"accumulate_grad_batches": 4}])
def test_the_plain_engine_refuses_training_options_it_would_ignore(extra):
    """`--trainer.max_steps 2` with engine: plain trained the full max_epochs silently (rc 0 after 91 s)."""
    from vitlab.study.intrinsic import plain_engine_device

    lightning_defaults = {"strategy": "auto", "num_nodes": 1, "max_steps": -1, "overfit_batches": 0.0}
    assert plain_engine_device({"accelerator": "cpu", "max_epochs": 3, **lightning_defaults}) == torch.device("cpu")
    with pytest.raises(ValueError, match=rf"trainer \['{next(iter(extra))}'\]: the plain engine trains "
                                         r"trainer\.max_epochs full epochs.*sweep\.engine: lightning"):
        plain_engine_device({"accelerator": "cpu", "max_epochs": 3, **lightning_defaults, **extra})


def test_sweep_early_stopping_survives_a_run_that_ends_before_validating(tmp_path, monkeypatch):
    """With sweep.patience, a point run stopped by trainer.max_steps before its first validation crashed with
    Lightning's 'Early stopping conditioned on metric val/acc which is not available' (a raw traceback)."""
    captured = []

    def capture(config, **kw):
        captured.extend(kw.get("callbacks") or [])
        raise KeyboardInterrupt  # stop the sweep: only the callbacks it builds are wanted here

    monkeypatch.setattr(vitlab.train.run, "fit", capture)
    config = _write_config(tmp_path, "patience", epochs=1, sweep={"dims": [4], "reference": 0.5, "patience": 1})
    main(["intrinsic-dim", "--config", str(config)])
    assert captured
    monkeypatch.undo()
    short = RunConfig(
        name="short", output_dir=str(tmp_path / "short"),
        model=ModelConfig(name="vit_vitlab_tiny_patch4_32", kwargs=TINY),
        data=DataConfig(name="digits", batch_size=64), optim=OptimConfig(lr=3e-3, warmup_epochs=0),
        trainer={"accelerator": "cpu", "max_steps": 2, "enable_progress_bar": False, "enable_model_summary": False})
    assert vitlab.train.run.fit(short, callbacks=captured).run_dir.is_dir()  # ended at step 2, before validating
