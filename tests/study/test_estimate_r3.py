"""The study estimate times only the work that will run, and says what it times and where before it waits.

`time_model` is replaced by a stub that records the batch sizes it is asked for (the real one runs in the last tests
on a two-layer model)."""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

import vitlab.study.estimate as estimate
from vitlab.study.config import load_study_config
from vitlab.study.plan import few_shot_batch, run_name, split_sizes
from vitlab.study.run import run_study

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 8}
STEP_S, EVAL_S = 0.01, 1e-3  # the stub's seconds per image of a training step / per evaluated image


@pytest.fixture
def asked(monkeypatch):
    """Batch-size lists `time_model` was called with (the stub's step time is STEP_S per image)."""
    calls = []

    def stub(model, input_shape, batch_sizes, num_classes, device="cpu"):
        calls.append(list(batch_sizes))
        return {"train_step_s": {b: STEP_S * b for b in batch_sizes}, "eval_image_s": EVAL_S}

    monkeypatch.setattr(estimate, "time_model", stub)
    monkeypatch.setattr(estimate, "time_corruptions", lambda height, width: 0.0)
    return calls


def _hub_study(tmp_path):
    study = {"name": "hub", "output_dir": str(tmp_path / "runs"), "downstream": "digits", "accelerator": "gpu",
             "backbones": {"vit": {"model": "vit_tiny_patch16_224", "pretrained": "timm", "img_size": 32}},
             "finetune": {"backbones": ["vit"], "methods": {"full": {}}, "negatives": {"none": None},
                          "shots": [5], "full_data": False, "seeds": [0], "steps": 2, "batch_size": 16},
             "intrinsic_dim": {"backbones": []}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    return tmp_path / "study.yaml"


def test_given_weights_time_no_pretraining_batch_and_a_cpu_override_says_cpu(offline_hub, tmp_path, asked, capsys):
    """`vitlab study --config configs/study_hub_vit_b16.yaml --estimate_only --accelerator cpu` timed the pretraining
    batch (DataConfig's 128) of a backbone that never pretrains, printing nothing for minutes."""
    config = load_study_config(_hub_study(tmp_path), accelerator="cpu")  # the file says gpu
    rows = run_study(config, "", estimate_only=True)["estimates"]
    assert asked == [[few_shot_batch(5, 10, 16)]]  # the fine-tuning batch alone: no 128
    out = capsys.readouterr().out
    assert "estimating a CPU run (accelerator: cpu)" in out
    timing = "timing vit (vit_tiny_patch16_224) at 32 px, batch 16 on cpu ..."
    assert timing in out and out.index(timing) < out.index("measured time estimate per stage")
    assert {r["stage"]: r["runs"] for r in rows}["pretrain"] == 0


def _pretrained_here_study(tmp_path, pretrained: bool):
    runs = tmp_path / "runs"
    pretrain = {"name": "pre", "output_dir": str(runs), "model": {"name": "vit_vitlab_tiny_patch8_32", "kwargs": TINY},
                "data": {"name": "digits", "batch_size": 64}, "trainer": {"max_epochs": 1}}
    study = {"name": "tiny", "output_dir": str(runs), "downstream": "digits", "accelerator": "cpu",
             "backbones": {"vit": {"pretrain": "pretrain.yaml"}},
             "finetune": {"methods": {"full": {}}, "negatives": {"none": None}, "shots": [2], "full_data": False,
                          "seeds": [0, 1], "steps": 3, "batch_size": 20},
             "intrinsic_dim": {"backbones": []}}
    (tmp_path / "pretrain.yaml").write_text(yaml.safe_dump(pretrain))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    if pretrained:
        (runs / "pre").mkdir(parents=True)
        (runs / "pre" / "model.safetensors").write_bytes(b"")
    return load_study_config(tmp_path / "study.yaml")


def test_cached_pretraining_is_not_timed_and_the_rest_is_estimated_as_before(tmp_path, asked):
    config = _pretrained_here_study(tmp_path, pretrained=True)
    rows = {r["stage"]: r for r in estimate.estimate_study(config)}
    assert asked == [[20]]  # not the pretraining batch 64
    from vitlab.data import build_datamodule

    test = split_sizes(build_datamodule("digits", img_size=32))[1]
    per_run = 3 * STEP_S * 20 + test * EVAL_S + estimate.RUN_OVERHEAD_S
    assert rows["pretrain"]["runs"] == 0 and rows["finetune"]["runs"] == 2
    assert rows["finetune"]["estimated_s"] == pytest.approx(2 * per_run, abs=0.1)


def test_pretraining_still_timed_at_its_own_batch(tmp_path, asked):
    rows = {r["stage"]: r for r in estimate.estimate_study(_pretrained_here_study(tmp_path, pretrained=False))}
    assert asked == [[20, 64]] and rows["pretrain"]["runs"] == 1 and rows["pretrain"]["estimated_s"] > 0


def _finish_runs(config, evaluated: bool):
    names = [run_name(*run) for run in config.planned_runs()]
    (config.folder / "finetune").mkdir(parents=True)
    (config.folder / "finetune" / "results.csv").write_text("run,shots\n" + "".join(f"{n},2\n" for n in names))
    for name in names if evaluated else []:
        (config.folder / "finetune" / "runs" / name).mkdir(parents=True)
        (config.folder / "finetune" / "runs" / name / "robustness_digits.json").write_text("{}")


def test_finished_work_is_not_timed(tmp_path, asked, capsys):
    config = _pretrained_here_study(tmp_path, pretrained=True)
    _finish_runs(config, evaluated=True)
    rows = estimate.estimate_study(config)
    assert asked == [] and "timing" not in capsys.readouterr().out
    assert sum(r["estimated_s"] for r in rows if r["stage"] != "report") == 0


def test_runs_left_to_evaluate_time_the_evaluation_only(tmp_path, asked):
    config = _pretrained_here_study(tmp_path, pretrained=True)
    _finish_runs(config, evaluated=False)
    rows = {r["stage"]: r for r in estimate.estimate_study(config)}
    assert asked == [[]] and rows["finetune"]["runs"] == 0 and rows["evaluate"]["runs"] == 2


def test_time_model_times_the_evaluation_alone_and_restores_the_weights():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    timing = estimate.time_model(model, (3, 2, 2), [], 3, eval_images=4)
    assert timing["train_step_s"] == {} and timing["eval_image_s"] > 0
    timing = estimate.time_model(model, (3, 2, 2), [2, 4, 2], 3, eval_images=4)
    assert sorted(timing["train_step_s"]) == [2, 4]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize(("batches", "kwargs"), [([0], {}), (["4"], {}), ([True], {}), ([4], {"eval_images": 0}),
                                                 ([4], {"repeats": 1.5}), ([4], {"eval_images": True})])
def test_time_model_refuses_sizes_that_are_not_positive_ints(batches, kwargs):
    with pytest.raises(ValueError, match="must be positive ints"):
        estimate.time_model(nn.Linear(12, 3), (3, 2, 2), batches, 3, **kwargs)


def test_estimate_study_of_a_yaml_path_names_the_loader():
    with pytest.raises(TypeError, match=r"load_study_config\(path\), got str"):  # was AttributeError 'accelerator'
        estimate.estimate_study("configs/study.yaml")


@pytest.mark.parametrize(("grid", "ratio", "match"), [
    ([10, 100], 1.0, "ratio must be a number > 1"),  # was ZeroDivisionError
    ([10, 100], 0.5, "ratio must be a number > 1"),  # was 'math domain error'
    ([10, 100], float("nan"), "ratio must be a number > 1"),  # was 0 points, silently
    ([0, 100], 2.0, "grid must be increasing positive ints"),  # was ZeroDivisionError
    ([1000, 10], 2.0, "grid must be increasing positive ints"),  # was 0 points, silently (sorted: 3)
])
def test_refine_points_refuses_what_no_sweep_can_have(grid, ratio, match):
    with pytest.raises(ValueError, match=match):
        estimate.refine_points(grid, ratio)


def test_time_corruptions_of_no_images_is_refused():
    with pytest.raises(ValueError, match="images must be a positive int"):  # was ZeroDivisionError
        estimate.time_corruptions(32, 32, images=0)


class _Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear, self.calls = nn.Linear(12, 3), 0

    def forward(self, x):
        self.calls += 1
        return self.linear(x.flatten(1))


def test_a_slow_warm_up_is_followed_by_one_timed_step(monkeypatch):
    """ViT-B/16 at 224 px on a CPU: 3 steps per batch size (1.6 s per image each) kept the estimate silent for
    minutes; a warm-up over SLOW_STEP_S now gets one timed step (and the evaluation one timed forward)."""
    model = _Counting()
    estimate.time_model(model, (3, 2, 2), [2, 4], 3, repeats=2, eval_images=4)
    assert model.calls == 3 * 3  # fast: warm-up + 2 timed, for each batch size and the evaluation
    monkeypatch.setattr(estimate, "SLOW_STEP_S", 0.0, raising=False)
    model.calls = 0
    timing = estimate.time_model(model, (3, 2, 2), [2, 4], 3, repeats=2, eval_images=4)
    assert model.calls == 3 * 2 and timing["eval_image_s"] > 0 and all(v > 0 for v in timing["train_step_s"].values())
