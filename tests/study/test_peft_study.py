"""``vitlab peft-study`` at a tiny scale: digits, a random 2-block backbone, 2 methods, k=5, 1 seed, 6 steps."""

from __future__ import annotations

import csv

import pytest
import timm
import torch

from vitlab.checkpoint import save_checkpoint
from vitlab.cli.main import main
from vitlab.study.plan import plan_study

BACKBONE_KWARGS = {"depth": 2, "embed_dim": 48, "num_heads": 2, "patch_size": 8, "img_size": 16, "in_chans": 1,
                   "num_classes": 10}


def _read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def backbone(tmp_path):
    model = timm.create_model("vit_vitlab_tiny_patch4_32", **BACKBONE_KWARGS)
    save_checkpoint(tmp_path / "backbone" / "model.safetensors", model.state_dict(), kind="model",
                    model_name="vit_vitlab_tiny_patch4_32", model_kwargs=BACKBONE_KWARGS)
    return tmp_path / "backbone"


def test_plan_takes_the_architecture_from_the_backbone_and_sets_the_budget(backbone):
    specs = plan_study(str(backbone), "digits", methods="linear,full", shots="5,20", seeds="0,2", steps=30,
                       full_epochs=2, batch_size=64, output_dir="study")
    names = [s["config"]["name"] for s in specs]
    assert names == ["linear-k5-s0", "linear-k5-s2", "linear-k20-s0", "linear-k20-s2", "linear-full-s0",
                     "full-k5-s0", "full-k5-s2", "full-k20-s0", "full-k20-s2", "full-full-s0"]
    k5, k20, full = specs[0]["config"], specs[2]["config"], specs[4]["config"]
    assert k5["model"] == {"name": "vit_vitlab_tiny_patch4_32", "pretrained": str(backbone),
                           "kwargs": {"depth": 2, "embed_dim": 48, "num_heads": 2, "patch_size": 8, "in_chans": 1}}
    assert k5["data"]["img_size"] == 16 and k5["seed"] == 0 and specs[1]["config"]["seed"] == 2
    # 5 x 10 classes = 50 images: one batch of 50 per epoch, 30 epochs; 200 images at batch 64: 4 batches per epoch
    assert (k5["data"]["batch_size"], k5["trainer"]["max_epochs"], k5["trainer"]["max_steps"]) == (50, 30, 30)
    assert (k20["data"]["batch_size"], k20["trainer"]["max_epochs"], k20["trainer"]["max_steps"]) == (64, 8, 30)
    assert (full["data"]["batch_size"], full["trainer"]["max_epochs"], full["trainer"]["max_steps"]) == (64, 2, -1)
    assert k5["data"]["options"] == {"few_shot": {"shots": 5, "seed": 0}} and "options" not in full["data"]
    assert k5["optim"]["lr"] == 3e-3 and specs[5]["config"]["optim"]["lr"] == 3e-4
    assert k5["optim"]["warmup_epochs"] == pytest.approx(3.0) and k5["trainer"]["limit_val_batches"] == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--backbone", "missing_dir"], "configs/pretrain_vit_mnist.yaml"),
    (["--methods", "lora,bogus"], "unknown or missing method(s) ['bogus']"),
    (["--shots", "5,x"], "comma-separated integers"),
    (["--methods", "linear", "--method_options", '{"lora": {"r": 2}}'], "not in --methods"),
    (["--seeds", "[-1]"], "--seeds must be integers in [0, 2**32)"),
    (["--backbone", "none", "--model", "nosuch_model"], "unknown model 'nosuch_model'; vitlab's models"),
    (["--shots", "[5, 5]"], "--shots lists a value twice"),  # ran every k=5 run twice
    (["--seeds", "0,0"], "--seeds lists a value twice"),
    (["--shots", "[2.5]"], "--shots takes a list of integers"),
    (["--img_size", "0"], "--img_size must be an integer >= 1"),  # 0 silently meant the backbone's size
    (["--methods", "lora", "--method_options", '{"lora": 5}'], "gives each method a mapping of peft options"),
    (["--model_kwargs", '{"foo": 1}'], "--model_kwargs {'foo': 1} were refused"),
    (["--accelerator", "cpus"], "--accelerator must be one of auto, cpu, cuda, gpu"),  # each run's process failed
    # refused in each run's process (the study 'FAILED' run by run)
    (["--methods", "lora", "--method_options", '{"lora": {"bogus": 1}}'], "--method_options lora: unknown option(s)"),
    (["--methods", "full,lora,full"], "--methods lists a method twice"),  # was silently run once
])
def test_bad_options_fail_with_one_line_naming_the_fix(backbone, tmp_path, capsys, args, message):
    base = ["peft-study", "--backbone", str(backbone), "--data", "digits", "--output_dir", str(tmp_path / "s")]
    assert main([*base, *args]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_plan_study_refuses_non_integer_shots_from_python(backbone):
    with pytest.raises(ValueError, match="--shots takes a list of integers"):  # int(2.5) silently made it 2
        plan_study(str(backbone), "digits", methods="linear", shots=[2.5], seeds=[0])
    with pytest.raises(ValueError, match="--seeds takes a list of integers"):
        plan_study(str(backbone), "digits", methods="linear", shots=[5], seeds=[True])
    with pytest.raises(ValueError, match="--model_kwargs is a mapping"):
        plan_study(str(backbone), "digits", methods="linear", model_kwargs=[("depth", 2)])


@pytest.mark.slow  # end to end: run by `make test`, deselect with -m "not slow" for a quick pass
def test_study_runs_each_config_in_a_process_and_resumes(backbone, tmp_path, capsys):
    out = tmp_path / "study"
    args = ["peft-study", "--backbone", str(backbone), "--data", "digits", "--shots", "5", "--seeds", "1",
            "--full_data", "false", "--steps", "6", "--batch_size", "32", "--accelerator", "cpu",
            "--output_dir", str(tmp_path), "--name", "study", "--method_options", '{"kadaptation": {"n": 8}}']
    assert main([*args[:-2], "--methods", "linear"]) == 0  # the first invocation runs only the linear probe
    linear_log = out / "runs" / "linear-k5-s1" / "log.txt"
    first_mtime = linear_log.stat().st_mtime_ns
    assert main([*args, "--methods", "linear,kadaptation"]) == 0  # resumes: linear skipped, kadaptation runs
    printed = capsys.readouterr().out
    assert "linear-k5-s1: already in" in printed and "kadaptation-k5-s1: accuracy" in printed
    assert linear_log.stat().st_mtime_ns == first_mtime

    rows = {row["run"]: row for row in _read(out / "results.csv")}
    assert list(rows) == ["linear-k5-s1", "kadaptation-k5-s1"]
    linear, kadaptation = rows["linear-k5-s1"], rows["kadaptation-k5-s1"]
    assert (linear["method"], linear["shots"], linear["seed"]) == ("linear", "5", "1")
    assert (int(linear["trainable_params"]), int(linear["adaptation_params"])) == (48 * 10 + 10, 0)
    # KAdaptation n=8 on width 48, depth 2: per layer 2 x (u, v: 2 x 8 x 6) + bias 48, plus 4 shared 8x8 factors
    assert (int(kadaptation["trainable_params"]), int(kadaptation["adaptation_params"])) == (490 + 736, 736)
    for row in rows.values():
        assert int(row["train_size"]) == 50 and int(row["steps"]) == 6  # k=5 x 10 classes, the requested steps
        assert 0.15 < float(row["accuracy"]) <= 1.0  # chance is 0.1
        assert 100 < float(row["peak_memory_mb"]) < 16000 and 0 < float(row["train_time_s"]) < float(row["wall_time_s"])

    summary = _read(out / "summary.csv")
    assert [(s["method"], s["shots"], s["seeds"], s["accuracy_std"], s["accuracy_ci_low"]) for s in summary] == [
        ("linear", "5", "1", "", ""), ("kadaptation", "5", "1", "", "")]  # one seed: no spread written
    # the two summaries printed (linear; then linear and kadaptation), each row of one seed
    assert printed.count("(1 seed)") == 3 and "± 0.00" not in printed
    assert float(summary[1]["accuracy_mean"]) == pytest.approx(float(kadaptation["accuracy"]), abs=1e-6)
    assert (out / "accuracy_vs_params.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "runs" / "linear-k5-s1" / "checkpoints").exists()  # deleted unless --keep_checkpoints

    before = (out / "results.csv").read_text()
    assert main([*args, "--methods", "linear,kadaptation"]) == 0  # everything done: nothing runs
    assert capsys.readouterr().out.count("already in") == 2 and (out / "results.csv").read_text() == before


def test_every_study_method_adapts_the_iformer_backbone():
    """The study's second backbone (configs/pretrain_iformer_mnist.yaml): each method starts as the base model."""
    from vitlab.peft import build_peft_transform, count_parameters
    from vitlab.study.plan import STUDY_METHODS

    x = torch.randn(2, 1, 32, 32)
    adaptation = {}
    for method, spec in STUDY_METHODS.items():
        torch.manual_seed(0)
        model = timm.create_model("inception_transformer_tiny", num_classes=10, in_chans=1, img_size=32).eval()
        reference = model(x)
        options = {**spec["options"], "n": 16} if method == "kadaptation" else spec["options"]  # 32 does not divide 48
        model = build_peft_transform(method, None, **options)(model)
        torch.testing.assert_close(model(x), reference, rtol=0, atol=1e-6)
        adaptation[method] = count_parameters(model)["adaptation"]
    assert adaptation["linear"] == 0 and adaptation["full"] > 1_000_000
    assert all(adaptation[m] > 0 for m in ("kadaptation", "lora", "lora_qv", "lokr", "adapter"))
