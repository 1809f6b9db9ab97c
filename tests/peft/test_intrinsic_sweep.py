"""d90 sweeps: grid, d90, resumable CSV with claims, plot, per-module table, and a real sweep on digits."""

import json
import os

import pytest
import timm
import torch
from sklearn.datasets import load_digits
from torch import nn

from vitlab.peft.intrinsic import SubspaceConfig, wrap_in_subspace
from vitlab.peft.intrinsic.mnist_fc import MnistFC
from vitlab.peft.intrinsic.per_module import (
    PER_MODULE_CSV,
    PER_MODULE_JSON,
    ModuleRecord,
    available_module_kinds,
    module_kind_targets,
    read_module_table,
    run_per_module_sweep,
    select_modules,
    write_module_table,
)
from vitlab.peft.intrinsic.sweep import find_d90, log_grid, read_sweep, refinement_point, run_sweep
from vitlab.peft.intrinsic.trainer import FitSettings, fit_classifier

from ..meta_probe import MetaProbe, Ran


def test_log_grid():
    assert log_grid(10, 1000, 3) == [10, 100, 1000]
    assert log_grid(1, 4, 10) == [1, 2, 3, 4]  # rounding duplicates dropped
    with pytest.raises(ValueError, match="start <= stop"):
        log_grid(100, 10, 3)


def test_find_d90_raw_and_interpolated():
    d90 = find_d90({10: 0.2, 100: 0.6, 1000: 0.9, 10000: 0.95}, reference=0.8)
    assert d90.threshold == pytest.approx(0.72) and d90.raw == 1000
    assert d90.interpolated == pytest.approx(100 * 10 ** 0.4)  # 0.72 is 40 % of the way from 0.6 to 0.9
    assert find_d90({10: 0.9}, reference=0.9).interpolated == 10.0
    assert find_d90({10: 0.1, 20: 0.2}, reference=1.0).raw is None


def test_sweep_resumes_and_records_the_reference_once(tmp_path):
    calls, ref_calls = [], []

    def train(dim):
        calls.append(dim)
        if dim == 100 and len(calls) == 2:
            raise KeyboardInterrupt  # interrupted in the middle of the second point
        return min(1.0, dim / 500)

    def reference():
        ref_calls.append(1)
        return 1.0

    csv_path = tmp_path / "sweep.csv"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(train, [10, 100, 1000], csv_path, reference=reference)
    assert [(r["group"], r["dim"]) for r in read_sweep(csv_path)] == [("reference", None), ("all", 10)]
    result = run_sweep(train, [10, 100, 1000], csv_path, reference=reference, plot_path=tmp_path / "sweep.png")
    assert calls == [10, 100, 100, 1000] and ref_calls == [1]
    assert result.complete and result.points == {10: 0.02, 100: 0.2, 1000: 1.0}
    assert result.d90.raw == 1000 and (tmp_path / "sweep.png").stat().st_size > 1000
    assert "<svg" in (tmp_path / "sweep.svg").read_text()[:2000]  # a vector copy beside the PNG
    assert not (tmp_path / "sweep.csv.locks").exists() or not any((tmp_path / "sweep.csv.locks").iterdir())
    with pytest.raises(ValueError, match="records reference accuracy 1.0"):
        run_sweep(train, [10], csv_path, reference=0.5)


def test_claims_skip_points_held_by_live_processes_and_take_over_dead_ones(tmp_path):
    locks = tmp_path / "sweep.csv.locks"
    locks.mkdir()
    host = os.uname().nodename
    (locks / "all-1.lock").write_text(f"{host}:{os.getpid()}")  # alive: another worker is on it
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    (locks / "all-2.lock").write_text(f"{host}:{dead}")  # its process has died
    result = run_sweep(lambda d: 0.5, [1, 2], tmp_path / "sweep.csv", reference=1.0, stop_after_reached=None)
    assert result.points == {2: 0.5} and not result.complete


def test_stop_after_reached_skips_larger_dims(tmp_path):
    seen = []
    result = run_sweep(lambda d: seen.append(d) or (1.0 if d >= 20 else 0.0), [10, 20, 40, 80], tmp_path / "s.csv",
                       reference=1.0, stop_after_reached=1)
    assert seen == [10, 20] and result.d90.raw == 20 and not result.complete


def _digits():
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def test_a_small_sweep_on_digits_finds_d90_and_writes_its_plot(tmp_path):
    train, test = _digits()
    settings = FitSettings(epochs=8, batch_size=64, lr=0.1)

    def train_and_eval(dim):
        # Li et al.'s global normalisation, as in their MNIST FC anchor (per-tensor wants a smaller lr on this net)
        config = SubspaceConfig(dim=dim, projection_norm="global")
        model = wrap_in_subspace(MnistFC(in_features=64, hidden=(32,)), config)
        return fit_classifier(model, train, test, settings).accuracy

    def reference():
        return fit_classifier(MnistFC(in_features=64, hidden=(32,)), train, test,
                              FitSettings(epochs=20, batch_size=32, lr=3e-3)).accuracy

    result = run_sweep(train_and_eval, [2, 8, 32, 128, 512], tmp_path / "sweep.csv", reference=reference,
                       plot_path=tmp_path / "sweep.png")
    assert result.reference > 0.9
    assert result.points[2] < 0.9 * result.reference <= result.points[512]
    assert result.d90.raw in (8, 32, 128, 512) and 2 < result.d90.interpolated <= result.d90.raw
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_per_module_table_ranks_writes_and_reads_back(tmp_path):
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2,
                              num_classes=10)
    kinds = available_module_kinds(model)
    assert kinds == ["attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc1", "mlp.fc2"]
    targets = module_kind_targets(model, "attn.q")
    assert targets == ["qkv@q", "head"]
    wrapped = wrap_in_subspace(model, SubspaceConfig(dim=10, target_modules=targets))
    assert wrapped.num_params == 2 * (48 * 48 + 48) + 48 * 10 + 10
    scale = {"attn.q": 10, "attn.k": 400, "attn.v": 40, "attn.proj": 100, "mlp.fc1": 1000, "mlp.fc2": 10**6}

    def train_and_eval(kind, dim):
        return min(1.0, dim / scale[kind])

    records = run_per_module_sweep(model, train_and_eval, [10, 100, 1000], tmp_path, reference=1.0)
    assert [r.module for r in records] == ["attn.q", "attn.v", "attn.proj", "attn.k", "mlp.fc1", "mlp.fc2"]
    assert [r.rank for r in records] == [1, 2, 3, 4, 5, 6] and not records[-1].reached
    assert records[0].num_params == 2 * (48 * 48 + 48) and records[0].targets == ("qkv@q", "head")
    assert select_modules(records) == ["attn.q", "attn.v"]
    payload = json.loads((tmp_path / PER_MODULE_JSON).read_text())
    assert payload["modules"][1]["module"] == "attn.v" and "selection_rule" in payload
    assert read_module_table(tmp_path / PER_MODULE_CSV) == records == read_module_table(tmp_path)
    assert (tmp_path / "intrinsic_dim_per_module.png").exists()
    with pytest.raises(ValueError, match="unknown module kinds"):
        run_per_module_sweep(model, train_and_eval, [10], tmp_path, reference=1.0, kinds=["attn.qq"])


def _records() -> list[ModuleRecord]:
    return [ModuleRecord(rank=1, module="attn.proj", d90=1000, d90_interpolated=612.5, reached=True, num_params=4608,
                         best_accuracy=0.8, reference_accuracy=0.85, threshold=0.765, targets=("attn.proj", "head")),
            ModuleRecord(rank=2, module="mlp.fc1", d90=None, d90_interpolated=None, reached=False, num_params=9216,
                         best_accuracy=0.7, reference_accuracy=0.85, threshold=0.765, targets=("mlp.fc1", "head"))]


def test_module_table_of_an_earlier_version_reads_with_todays_kind_names(tmp_path):
    records = _records()
    write_module_table(records, tmp_path / "now")
    old = tmp_path / "old"
    old.mkdir()
    # earlier versions: the JSON said attn_out / mlp_fc1 (plus kadaptation_kind), the CSV of older ones likewise
    payload = json.loads((tmp_path / "now" / PER_MODULE_JSON).read_text())
    for row, name in zip(payload["modules"], ["attn_out", "mlp_fc1"], strict=True):
        row["kadaptation_kind"], row["module"] = row["module"], name
    (old / PER_MODULE_JSON).write_text(json.dumps(payload))
    text = (tmp_path / "now" / PER_MODULE_CSV).read_text()
    (old / PER_MODULE_CSV).write_text(text.replace(",attn.proj,", ",attn_out,").replace(",mlp.fc1,", ",mlp_fc1,"))
    assert ",attn_out," in (old / PER_MODULE_CSV).read_text()
    assert read_module_table(old / PER_MODULE_JSON) == records == read_module_table(old / PER_MODULE_CSV)
    assert read_module_table(tmp_path / "now") == records
    assert [r["module"] for r in json.loads((tmp_path / "now" / PER_MODULE_JSON).read_text())["modules"]] == [
        "attn.proj", "mlp.fc1"]  # written in today's spelling only
    # old names are read-side only: a sweep asked for one is refused with its new name
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"renamed: \{'attn_q': 'attn.q'\}"):
        module_kind_targets(model, "attn_q", include_head=False)


def test_hand_written_module_table_is_ranked_by_d90(tmp_path):
    table = tmp_path / "d90.csv"
    table.write_text("module,d90,note\nmlp.fc1,900,x\nattn.v,150.0,\nhigh_mixer,nan,\nattn.q,150,\nattn.k,inf,\n"
                     "attn.proj,,\n")
    records = read_module_table(table)
    assert [(r.rank, r.module, r.d90, r.reached) for r in records] == [
        (1, "attn.v", 150, True), (2, "attn.q", 150, True), (3, "mlp.fc1", 900, True),  # ties keep the table order
        (4, "high_mixer", None, False), (5, "attn.k", None, False), (6, "attn.proj", None, False)]
    assert records[0].d90_interpolated == 150.0 and records[0].best_accuracy is None and records[0].targets == ()
    assert select_modules(records, k=2) == ["attn.v", "attn.q"]
    assert select_modules(records, k=5) == ["attn.v", "attn.q", "mlp.fc1"]
    assert select_modules(records, k=2, available={"attn.q", "mlp.fc1", "high_mixer"}) == ["attn.q", "mlp.fc1"]
    with pytest.raises(ValueError, match="name target_modules explicitly"):
        select_modules(records, available={"attn.k", "high_mixer"})
    with pytest.raises(ValueError, match="k must be >= 1"):
        select_modules(records, k=0)


@pytest.mark.parametrize(("text", "match"), [
    ("module,d90\nattn_qq,10\n", r"unknown module kind 'attn_qq'; known kinds are \['attn.q'"),
    ("module,d90\nattn.q,10\nattn_q,20\n", "each module kind once"),
    ("module,d90\n", "each module kind once"),
    ("module,d90\nattn.q,10.5\n", "whole number"),
    ("module,d90\nattn.q,ten\n", "must be a number"),
    ("module,best\nattn.q,10\n", "'module' and 'd90' only"),
    ("module,d90,rank\nattn.q,10,1\n", "has all of"),
    ("rank,module,d90,d90_interpolated,reached,num_params,best_accuracy,reference_accuracy,threshold,targets\n"
     "2,attn.q,10,9.0,True,10,0.9,0.9,0.81,qkv@q\n", r"ranks must be 1\.\.1"),
    ("rank,module,d90,d90_interpolated,reached,num_params,best_accuracy,reference_accuracy,threshold,targets\n"
     "1,attn.q,10,9.0,yes,10,0.9,0.9,0.81,qkv@q\n", "'reached' must be True or False"),
])
def test_read_module_table_refuses_bad_tables(tmp_path, text, match):
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(ValueError, match=match):
        read_module_table(tmp_path / "t.csv")


def test_read_module_table_names_the_sweep_when_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="intrinsic-dim --per_module"):
        read_module_table(tmp_path)
    (tmp_path / PER_MODULE_JSON).write_text("[1, 2]")
    with pytest.raises(ValueError, match="'modules' list"):
        read_module_table(tmp_path)


def _monotone(threshold_dim: float):
    """A fake accuracy, monotone in d, crossing 0.9 (of reference 1.0) exactly at ``threshold_dim``."""
    import math

    return lambda d: min(1.0, 0.9 * (1 + math.log(d / threshold_dim) / 10)) if d > 0 else 0.0


@pytest.mark.parametrize("true_d90", [37.0, 250.0, 999.0, 4321.0])
def test_refinement_brackets_the_threshold_within_2x_and_d90_is_the_smallest_point_reaching_it(tmp_path, true_d90):
    accuracy, seen = _monotone(true_d90), []
    grid = [10, 100, 1000, 10000]
    result = run_sweep(lambda d: seen.append(d) or accuracy(d), grid, tmp_path / "s.csv", reference=1.0,
                       stop_after_reached=1, refine_ratio=2.0)
    hits = sorted(d for d, a in result.points.items() if a >= 0.9)
    misses = sorted(d for d, a in result.points.items() if a < 0.9)
    first_hit, last_miss = hits[0], max(d for d in misses if d < hits[0])
    assert last_miss < true_d90 <= first_hit <= 2 * last_miss  # bracketed, at most 2x apart
    assert result.d90.raw == first_hit == min(d for d in seen if accuracy(d) >= 0.9)
    assert set(result.refined) == set(result.points) - set(grid) and result.refined  # points were added off the grid
    coarse_hit = min(d for d in grid if accuracy(d) >= 0.9)
    assert all(coarse_hit / 10 < d < coarse_hit for d in result.refined)  # only inside the coarse grid's gap
    assert len(seen) == len(set(seen))  # no point trained twice
    # a rerun resumes: nothing is trained again and the result is the same
    again = run_sweep(lambda d: pytest.fail(f"trained {d} again"), grid, tmp_path / "s.csv", reference=1.0,
                      stop_after_reached=1, refine_ratio=2.0)
    assert again.points == result.points and again.refined == result.refined


def test_refinement_is_off_by_default_and_needs_a_ratio_above_one(tmp_path):
    result = run_sweep(_monotone(250.0), [10, 100, 1000], tmp_path / "s.csv", reference=1.0)
    assert result.refined == () and sorted(result.points) == [10, 100, 1000] and result.d90.raw == 1000
    for bad in (1.0, 0.5, True, "2"):
        with pytest.raises(ValueError, match="max_ratio must be a number > 1"):
            run_sweep(_monotone(250.0), [10], tmp_path / "t.csv", reference=1.0, refine_ratio=bad)


def test_refinement_point_cases():
    assert refinement_point({10: 0.1, 100: 0.95}, 0.9) == 32
    assert refinement_point({10: 0.1, 32: 0.5, 100: 0.95}, 0.9) == 57
    assert refinement_point({10: 0.1, 20: 0.95}, 0.9) is None  # already 2x apart
    assert refinement_point({10: 0.95, 100: 0.97}, 0.9) is None  # reached at the smallest point
    assert refinement_point({10: 0.1, 100: 0.2}, 0.9) is None  # not reached
    assert refinement_point({2: 0.1, 3: 0.95}, 0.9, max_ratio=1.1) is None  # no integer strictly between
    assert refinement_point({10: 0.1, 40: 0.95, 100: 0.1}, 0.9) == 20  # the first hit counts, not later misses


def test_per_module_sweep_of_a_model_without_attention_or_mlp_names_the_whole_model_sweep(tmp_path):
    from torch import nn

    from vitlab.peft.intrinsic.per_module import run_per_module_sweep

    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"Sequential has none of the module kinds .* \(without --per_module\)"):
        run_per_module_sweep(cnn, lambda kind, d: 0.5, [4], tmp_path, reference=0.5)  # was 'kinds [] select nothing'
    assert not (tmp_path / "intrinsic_dim_per_module_sweep.csv").exists()


def test_per_module_grid_stops_at_the_kind_size_when_the_head_is_trained_directly(tmp_path):
    from torch import nn

    from vitlab.peft.intrinsic.per_module import run_per_module_sweep

    block = nn.Module()
    block.attn = nn.Module()
    block.attn.qkv, block.attn.proj = nn.Linear(4, 12), nn.Linear(4, 4)  # attn.proj: 20 numbers
    model = nn.Sequential(block, nn.Linear(4, 2))  # head "1": 10 numbers
    asked = []

    def point(kind, d):
        asked.append(d)
        return 0.5

    records = run_per_module_sweep(model, point, [10, 25], tmp_path, reference=0.5, kinds=["attn.proj"],
                                   head_modules=["1"], include_head=False)
    # d = 25 fits attn.proj + head (30) but not attn.proj alone (20): wrap_in_subspace refused it mid-sweep
    assert asked == [10] and records[0].targets == ("attn.proj",)
    records = run_per_module_sweep(model, point, [10, 25], tmp_path / "with_head", reference=0.5,
                                   kinds=["attn.proj"], head_modules=["1"])
    assert asked == [10, 10, 25] and records[0].targets == ("attn.proj", "1")


def test_numpy_integers_are_plain_dims(tmp_path):
    import numpy as np

    config = SubspaceConfig(dim=np.int64(100), seed=np.int32(3))  # refused as 'must be a positive int, got 100'
    assert (config.dim, config.seed) == (100, 3) and type(config.dim) is int and type(config.seed) is int
    result = run_sweep(lambda d: 0.5, np.array([10, 100]), tmp_path / "s.csv", reference=0.5)
    assert sorted(result.points) == [10, 100] and all(type(d) is int for d in result.points)



def test_fit_classifier_moves_each_batch_to_the_model():
    # the batches stayed where the data was: a model on a GPU with the data in CPU memory failed at its first step
    images, labels = torch.zeros(8, 3), torch.zeros(8, dtype=torch.long)
    with pytest.raises(Ran, match="^meta$"):
        fit_classifier(MetaProbe(), (images, labels), (images, labels), FitSettings(epochs=1, batch_size=4))


@pytest.mark.parametrize("points, reference, fraction, match", [
    ({10: float("nan"), 100: 0.95}, 1.0, 0.9, "accuracy at d=10 must be a finite accuracy"),  # was interpolated=nan
    ({10: 0.5, 100: 0.95}, 95.0, 0.9, r"reference accuracy .* 0.95, not 95\)"),  # was silently 'not reached'
    ({10: 50.0, 100: 95.0}, 1.0, 0.9, "accuracy at d=10"),  # percentages against a fraction: was d90 = 10
    ({10: 0.5}, 1.0, True, "fraction must be a number"),  # a bool was taken as 1
    ({10: 0.5}, 1.0, "0.9", "fraction must be a number"),  # was a TypeError from a comparison
])
def test_find_d90_refuses_nan_percentages_and_bad_fractions(points, reference, fraction, match):
    with pytest.raises(ValueError, match=match):
        find_d90(points, reference, fraction)


def test_refinement_point_refuses_nan_accuracies_and_threshold():
    with pytest.raises(ValueError, match="accuracy at d=10"):
        refinement_point({10: float("nan"), 1000: 0.95}, 0.9)  # was 100, as if NaN were a miss
    with pytest.raises(ValueError, match="threshold must be a finite accuracy"):
        refinement_point({10: 0.1, 1000: 0.95}, float("nan"))  # was None: "nothing to refine"


@pytest.mark.parametrize("kwargs, match", [
    ({"fraction": 1.5}, "fraction must be a number"), ({"reference": 95.0}, r"0.95, not 95\)"),
    ({"reference": float("nan")}, "reference must be a finite accuracy"),
])
def test_run_sweep_refuses_bad_fraction_and_reference_before_training(tmp_path, kwargs, match):
    calls = []
    with pytest.raises(ValueError, match=match):  # before: every point trained, then find_d90 refused (or not)
        run_sweep(lambda d: calls.append(d) or 0.5, [10, 100], tmp_path / "s.csv", **{"reference": 0.9, **kwargs})
    assert calls == [] and not (tmp_path / "s.csv").exists()


def test_run_sweep_refuses_a_percentage_from_train_and_eval(tmp_path):
    with pytest.raises(ValueError, match=r"train_and_eval\(10\) returned 95.0; .* \[0, 1\]"):
        run_sweep(lambda d: 95.0, [10], tmp_path / "s.csv", reference=0.9)
