"""`write_study_report`, `results_markdown` and `update_readme` on a synthetic study folder with known numbers."""

from __future__ import annotations

import base64
import csv
import html
import json
import shutil
import statistics
from pathlib import Path

import pytest
from PIL import Image

from vitlab.study.report import (
    END_MARKER,
    REQUIRED_COLUMNS,
    START_MARKER,
    results_markdown,
    update_readme,
    write_study_report,
)

METHODS = {"full": 60_000, "lora": 1_234, "kadaptation": 567}
NEGATIVES = ("none", "rotate_l2")
COMMAND = "vitlab study --config configs/study.yaml --set 'finetune.steps<50'"
ACCURACIES = ("clean_acc", "corruption_acc", "corruption_acc_s1", "corruption_acc_s2", "corruption_acc_s3",
              "corruption_acc_s4", "corruption_acc_s5", "extra_corruption_acc", "neg_shuffle_acc", "neg_rotate_acc",
              "neg_infill_acc")


def _accuracies(m: int, n: int, shots: int | str, seed: int) -> dict[str, float | str]:
    """Hand-chosen fractions: method m, negatives n, shots and seed each shift them by a fixed amount."""
    clean = 0.6012 + 0.0531 * m + 0.0107 * n + (0.1203 if shots == "full" else 0.0) + 0.0174 * seed
    values: dict[str, float | str] = {"clean_acc": round(clean, 4)}
    for s in range(1, 6):
        values[f"corruption_acc_s{s}"] = round(clean - 0.0413 * s - 0.0021 * seed, 4)
    values["corruption_acc"] = round(statistics.mean(values[f"corruption_acc_s{s}"] for s in range(1, 6)), 4)
    values["extra_corruption_acc"] = round(clean - 0.0876 + 0.0033 * seed, 4)
    values["neg_shuffle_acc"] = round(0.2104 - 0.0312 * n + 0.0058 * seed, 4)
    values["neg_rotate_acc"] = round(0.4517 - 0.1022 * n - 0.0049 * seed, 4)
    values["neg_infill_acc"] = "" if (m, shots) == (0, "full") else round(0.3311 + 0.0123 * m + 0.0071 * seed, 4)
    return values


def _write_csv(path: Path, header: list[str] | tuple[str, ...], rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


def make_study(root: Path, intrinsic: bool = True) -> Path:
    """1 backbone x 3 methods x 2 negatives x shots {5 (seeds 0, 1), full (seed 0)}: 18 runs."""
    study = root / "study"
    rows, robustness = [], []
    for m, (method, params) in enumerate(METHODS.items()):
        for n, negatives in enumerate(NEGATIVES):
            for shots, seeds in ((5, (0, 1)), ("full", (0,))):
                for seed in seeds:
                    run = f"vit-{method}-{negatives}-{shots}-s{seed}"
                    acc = _accuracies(m, n, shots, seed)
                    rows.append(dict(run=run, backbone="vit", method=method, negatives=negatives, shots=shots,
                                     seed=seed, trainable_params=params, train_time_s=12.5, run_dir=f"runs/{run}",
                                     **acc))
                    robustness += [dict(run=run, corruption="gaussian_noise", severity=s,
                                        accuracy=acc[f"corruption_acc_s{s}"]) for s in range(1, 6)]
                    metrics = [dict(epoch=0, step=k, **{"train/loss_step": round(2.3 - 0.1 * k - 0.05 * m, 3)})
                               for k in range(0, 20, 5)]
                    metrics.append({"epoch": 0, "step": 19, "train/loss_epoch": 1.5, "test/acc": acc["clean_acc"]})
                    if method == "kadaptation":  # no step losses: the curve falls back to train/loss_epoch
                        metrics = [{"epoch": e, "step": 10 * e + 9, "train/loss_epoch": 2.0 - 0.3 * e}
                                   for e in range(3)]
                    _write_csv(study / "runs" / run / "metrics.csv",
                               ["epoch", "step", "train/loss_step", "train/loss_epoch", "test/acc"], metrics)
    _write_csv(study / "results.csv", REQUIRED_COLUMNS, rows)
    _write_csv(study / "robustness.csv", ["run", "corruption", "severity", "accuracy"], robustness)
    meta = dict(name="unit-study", command=COMMAND, vitlab_version="0.9.0", torch_version="2.5.1",
                hardware="2 CPU cores (AMD EPYC 7B13), no GPU", started="2025-01-02T03:04:05", wall_time_s=3690.0,
                stages=[dict(stage="pretrain", estimated_s=600.0, measured_s=None, status="cached"),
                        dict(stage="finetune", estimated_s=600.0, measured_s=750.0, status="done"),
                        dict(stage="evaluate", estimated_s=0.0, measured_s=90.0, status="cached")],
                data=dict(pretrain="mnist", downstream="fashion_mnist", img_size=32, train_images=60000,
                          test_images=10000),
                corruption=dict(n=200, severities=[1, 2, 3, 4, 5],
                                source="A generated corruption set (N < 10k & seeded), not the published benchmark."),
                negative_views=dict(n=1000, chance=0.1, patch_size=8),
                backbones={"vit": dict(model="vit_tiny_patch16_224", parameters=60000, pretrain_accuracy=0.98,
                                       weights="runs/pretrain_vit/model.safetensors")})
    (study / "study.json").write_text(json.dumps(meta))
    if intrinsic:
        sweep = dict(reference=0.85, threshold=0.765, points={"10": 0.31, "100": 0.62, "1000": 0.81, "10000": 0.84},
                     d90=1000, d90_interpolated=562.34, complete=True, test_images=500)  # written before projection
        (study / "intrinsic" / "vit").mkdir(parents=True)
        (study / "intrinsic" / "vit" / "intrinsic_dim.json").write_text(json.dumps(sweep))
        header = ["rank", "module", "d90", "d90_interpolated", "reached", "num_params", "best_accuracy",
                  "reference_accuracy", "threshold", "targets"]
        table = [dict(rank=1, module="attn.q", d90=1000, d90_interpolated=612.7, reached="True", num_params=4608,
                      best_accuracy=0.80, reference_accuracy=0.85, threshold=0.765, targets="qkv@q;head"),
                 dict(rank=2, module="mlp.fc1", d90=1000, d90_interpolated=880.0, reached="True", num_params=9216,
                      best_accuracy=0.79, reference_accuracy=0.85, threshold=0.765, targets="mlp.fc1;head"),
                 dict(rank=3, module="attn.proj", d90="", d90_interpolated="", reached="False", num_params=2304,
                      best_accuracy=0.70, reference_accuracy=0.85, threshold=0.765, targets="attn.proj;head")]
        _write_csv(study / "intrinsic" / "vit" / "intrinsic_dim_per_module.csv", header, table)
    return study


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    study = make_study(tmp_path_factory.mktemp("full"))
    out = write_study_report(study)
    return dict(out, study=study, md=out["markdown"].read_text(encoding="utf-8"),
                html_text=out["html"].read_text(encoding="utf-8"))


def _row(markdown: str, *keys: str) -> list[str]:
    """The cells of the one markdown table row starting with ``keys``."""
    prefix = "| " + " | ".join(keys) + " |"
    lines = [line for line in markdown.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, (prefix, lines)
    return [cell.strip() for cell in lines[0].strip("|").split(" | ")]


T_975_1DF = 12.706204736  # Student t quantile, 97.5 %, 1 degree of freedom (2 seeds)


def _expected_cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f} (1 seed)"
    assert len(values) == 2
    mean, std = statistics.mean(values), statistics.stdev(values)
    half = T_975_1DF * std / 2 ** 0.5
    return f"{100 * mean:.2f} ± {100 * std:.2f} [{100 * (mean - half):.2f}, {100 * (mean + half):.2f}]"


def _group_inputs(study: Path, method: str, negatives: str, shots: str) -> list[dict]:
    with (study / "results.csv").open(newline="") as handle:
        return [r for r in csv.DictReader(handle) if (r["method"], r["negatives"], r["shots"]) == (method, negatives,
                                                                                                     shots)]


def test_files_and_plots_exist_and_are_pngs(report: dict) -> None:
    assert report["markdown"].is_file() and report["html"].is_file()
    names = {"accuracy_vs_params", "robustness_by_severity", "intrinsic_dim", "per_module", "training_curves"}
    assert set(report["plots"]) == names
    for name, path in report["plots"].items():
        assert path == report["study"] / "plots" / f"{name}.png"
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 200
            image.verify()
        assert f"](plots/{name}.png)" in report["md"]


@pytest.mark.parametrize("method,negatives", [("lora", "rotate_l2"), ("kadaptation", "none")])
def test_table_numbers_are_mean_and_sample_std_of_inputs(report: dict, method: str, negatives: str) -> None:
    inputs = _group_inputs(report["study"], method, negatives, "5")
    assert len(inputs) == 2
    cells = _row(report["md"], "vit", method, negatives, "5")
    columns = ("clean_acc", "corruption_acc", "corruption_acc_s5", "extra_corruption_acc", "neg_shuffle_acc",
               "neg_rotate_acc", "neg_infill_acc")
    expected = [_expected_cell([float(r[c]) for r in inputs]) for c in columns]
    assert cells == ["vit", method, negatives, "5", "2", f"{METHODS[method]:,}", *expected]
    assert " ± " in expected[0] and expected[0] != expected[1]
    row = next(r for r in report["rows"] if (r["method"], r["negatives"], r["shots"]) == (method, negatives, 5))
    assert row["clean_acc"] == pytest.approx(statistics.mean(float(r["clean_acc"]) for r in inputs))
    # single seed: "(1 seed)", no ± ; HTML holds the same cells
    full = _row(report["md"], "vit", method, negatives, "full")
    inputs_full = _group_inputs(report["study"], method, negatives, "full")
    assert full[4] == "1" and " ± " not in full[6] and full[6] == _expected_cell([float(inputs_full[0]["clean_acc"])])
    assert full[6].endswith(" (1 seed)")
    for cell in expected + full[6:]:
        assert f"<td>{html.escape(cell)}</td>" in report["html_text"]


def test_one_results_table_with_all_groups(report: dict) -> None:
    assert report["md"].startswith("# vitlab study report: unit-study\n")
    assert len(report["rows"]) == 12  # 3 methods x 2 negatives x 2 shots settings
    assert report["md"].count("| backbone | method | negatives | shots | seeds | trainable params | clean % |") == 1


def test_empty_accuracy_cell_shows_dash(report: dict) -> None:
    cells = _row(report["md"], "vit", "full", "none", "full")
    assert cells[-1] == "–" and cells[-2] != "–"
    assert _row(report["md"], "vit", "lora", "none", "full")[-1] != "–"


def test_header_intrinsic_per_module_and_stage_tables(report: dict) -> None:
    md = report["md"]
    assert f"`{COMMAND}`" in md and "2 CPU cores (AMD EPYC 7B13), no GPU" in md and "61.5 min" in md
    assert "vitlab 0.9.0, torch 2.5.1" in md and "N = 200" in md and "not the published benchmark" in md
    assert "N = 1000 test images, chance 10.00 %" in md
    assert "Backbone vit: vit_tiny_patch16_224, 60,000 parameters, pretraining accuracy 98.00 %" in md
    assert _row(md, "vit", "85.00", "76.50") == ["vit", "85.00", "76.50", "1,000", "562", "4", "fastfood, global norm"]
    assert "vit: N = 500 (test images)" in md
    assert _row(md, "vit", "1", "attn.q") == ["vit", "1", "attn.q", "613", "80.00"]
    assert _row(md, "vit", "3", "attn.proj") == ["vit", "3", "attn.proj", "not reached", "70.00"]
    assert _row(md, "pretrain") == ["pretrain", "10.0", "–", "cached (time of its run not recorded)"]
    assert _row(md, "finetune") == ["finetune", "10.0", "12.5", "done"]
    assert _row(md, "evaluate") == ["evaluate", "0.0", "1.5", "cached (measured: when it ran)"]  # not 0.0


def test_every_plot_has_an_svg_beside_it_linked_from_the_report(report: dict) -> None:
    for name, path in report["plots"].items():
        svg = path.with_suffix(".svg")
        assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()[:2000]
        assert f"](plots/{name}.svg)" in report["md"] and f'href="plots/{name}.svg"' in report["html_text"]
        assert "study unit-study" in svg.read_text()  # the plot's title names the study


def test_negative_view_columns_say_lower_is_better_and_n_is_stated(report: dict) -> None:
    header = next(line for line in report["md"].splitlines() if line.startswith("| backbone | method |"))
    for kind in ("shuffle", "rotate", "infill"):
        assert f"| {kind} % (lower is better) |" in header + " |"
    assert "clean on N = 10,000 test images" in report["md"]
    assert "on N = 200 test images per corruption and severity" in report["md"]
    assert "accuracy on N = 1,000 negative views" in report["md"]


@pytest.mark.parametrize(("line", "expected"), [("1 CPU threads (x), no GPU used", "1 CPU thread (x), no GPU used"),
                                                ("2 CPU threads (x), no GPU used", "2 CPU threads (x), no GPU used"),
                                                ("11 CPU threads (x)", "11 CPU threads (x)")])
def test_hardware_line_counts_threads_in_the_right_number(tmp_path: Path, line: str, expected: str) -> None:
    study = make_study(tmp_path, intrinsic=False)
    meta = json.loads((study / "study.json").read_text())
    (study / "study.json").write_text(json.dumps({**meta, "hardware": line}))
    assert f"Hardware: {expected}\n" in write_study_report(study)["markdown"].read_text()
    assert f"(hardware: {expected};" in results_markdown(study)


def test_plots_carry_error_bars_of_the_seeds(report: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from matplotlib.container import ErrorbarContainer

    from vitlab.study import plots as study_plots

    figures = []
    monkeypatch.setattr(study_plots, "_save", lambda fig, out, title=None: figures.append(fig) or Path(out))
    rows = [r for r in report["rows"] if r["shots"] == 5 and r["method"] == "lora"]
    study_plots.plot_robustness_by_severity(rows, tmp_path / "r.png")
    study_plots.plot_accuracy_vs_params(rows, tmp_path / "a.png")
    for fig in figures:
        bars = [c for ax in fig.axes for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert bars and all(c.has_yerr for c in bars)
    # the severity plot's bars are ± the seeds' sample std of each point
    bar = next(c for c in figures[0].axes[0].containers if isinstance(c, ErrorbarContainer))
    (segments,) = [lines.get_segments() for lines in bar.lines[2]]
    half_heights = [abs(seg[1][1] - seg[0][1]) / 2 for seg in segments]
    row = next(r for r in rows if r["negatives"] == "none")
    expected = [100 * row["clean_acc_std"]] + [100 * row[f"corruption_acc_s{s}_std"] for s in range(1, 6)]
    assert half_heights == pytest.approx(expected)


def test_html_is_self_contained_and_escaped(report: dict) -> None:
    page = report["html_text"]
    assert page.count("data:image/png;base64,") == len(report["plots"]) == 5
    assert "<img" in page and 'src="plots/' not in page and "<style>" in page
    assert html.escape(COMMAND) in page and "finetune.steps&lt;50" in page and "steps<50" not in page
    assert "<td>562</td>" in page and "vitlab study report: unit-study" in page
    assert "(N &lt; 10k &amp; seeded)" in page and "N < 10k" not in page
    embedded = [base64.b64decode(chunk.split('"', 1)[0]) for chunk in page.split("data:image/png;base64,")[1:]]
    assert sorted(embedded) == sorted(path.read_bytes() for path in report["plots"].values())


def test_without_intrinsic_files(tmp_path: Path) -> None:
    study = make_study(tmp_path)
    assert (write_study_report(study)["plots"].keys() >= {"intrinsic_dim", "per_module"})
    shutil.rmtree(study / "intrinsic")
    out = write_study_report(study)
    md, page = out["markdown"].read_text(), out["html"].read_text()
    assert set(out["plots"]) == {"accuracy_vs_params", "robustness_by_severity", "training_curves"}
    assert not (study / "plots" / "intrinsic_dim.png").exists() and not (study / "plots" / "per_module.png").exists()
    assert "Intrinsic dimension: not run in this study." in md and "Intrinsic dimension: not run" in page
    assert "Per-module intrinsic dimension: not run in this study." in md
    assert page.count("data:image/png;base64,") == 3 and "intrinsic_dim.png" not in md


def test_update_readme_replaces_only_between_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    before, after = "# vitlab\n\nIntro text.\n\n## Results\n\n", "\n\n## Install\n\npip install vitlab\n"
    readme.write_text(f"{before}{START_MARKER}\nold numbers\n{END_MARKER}{after}")
    update_readme(readme, "| a | b |\n")
    text = readme.read_text()
    assert text == f"{before}{START_MARKER}\n| a | b |\n{END_MARKER}{after}"
    update_readme(readme, "| a | b |\n")
    assert readme.read_text() == text
    update_readme(readme, "new")
    assert readme.read_text() == f"{before}{START_MARKER}\nnew\n{END_MARKER}{after}"


@pytest.mark.parametrize("missing", [START_MARKER, END_MARKER])
def test_update_readme_without_marker_raises(tmp_path: Path, missing: str) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# vitlab\n{START_MARKER}\nx\n{END_MARKER}\n".replace(missing, ""))
    with pytest.raises(ValueError, match="add the two marker lines") as info:
        update_readme(readme, "snippet")
    assert START_MARKER in str(info.value) and END_MARKER in str(info.value)
    assert "snippet" not in readme.read_text()


def test_results_markdown_snippet(report: dict, tmp_path: Path) -> None:
    snippet = results_markdown(report["study"])
    assert f"`{COMMAND}`" in snippet and "2 CPU cores" in snippet and "61.5 min" in snippet
    assert _row(snippet, "vit", "lora", "rotate_l2", "5") == _row(report["md"], "vit", "lora", "rotate_l2", "5")
    assert _row(snippet, "vit", "85.00") == _row(report["md"], "vit", "85.00")
    assert snippet.count("![") == 1 and f"]({report['study'].as_posix()}/plots/accuracy_vs_params.png)" in snippet
    readme = tmp_path / "README.md"
    readme.write_text(f"## Results\n{START_MARKER}\n{END_MARKER}\n")
    update_readme(readme, snippet)
    assert snippet.strip() in readme.read_text()


def test_missing_files_raise_with_hint(tmp_path: Path) -> None:
    study = make_study(tmp_path, intrinsic=False)
    (study / "results.csv").unlink()
    with pytest.raises(FileNotFoundError, match="vitlab study --config configs/study.yaml"):
        write_study_report(study)
    with pytest.raises(FileNotFoundError, match="vitlab study"):
        results_markdown(tmp_path / "nowhere")


def test_bad_results_csv_raises(tmp_path: Path) -> None:
    study = make_study(tmp_path, intrinsic=False)
    text = (study / "results.csv").read_text()
    (study / "results.csv").write_text(text.replace("neg_infill_acc", "infill", 1).replace(",run_dir", ",dir", 1))
    with pytest.raises(ValueError, match=r"\['neg_infill_acc', 'run_dir'\]"):
        write_study_report(study)
    rows = list(csv.DictReader(text.splitlines()))
    rows[3]["clean_acc"] = "91.5"
    _write_csv(study / "results.csv", REQUIRED_COLUMNS, rows)
    with pytest.raises(ValueError, match=r"line 5: clean_acc=91.5 is not a fraction"):
        write_study_report(study)


def test_training_curves_plot_cross_entropy_and_negative_loss_apart(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    from vitlab.study import plots as study_plots
    from vitlab.study.results import training_curves

    header = ["epoch", "step", "train/loss_step", "train/negatives/loss_step", "train/loss_ce"]
    _write_csv(tmp_path / "a" / "metrics.csv", header, [  # the l2 term goes below 0, and the total with it
        {"epoch": 0, "step": 4, "train/loss_step": 0.4, "train/negatives/loss_step": -1.1},
        {"epoch": 0, "step": 9, "train/loss_ce": 1.5},
        {"epoch": 1, "step": 14, "train/loss_step": -0.3, "train/negatives/loss_step": -1.2},
        {"epoch": 1, "step": 19, "train/loss_ce": 0.9}])
    _write_csv(tmp_path / "b" / "metrics.csv", ["epoch", "step", "train/loss_step"], [  # before train/loss_ce
        {"epoch": 0, "step": 4, "train/loss_step": 2.0}, {"epoch": 0, "step": 9, "train/loss_step": 1.8}])
    runs = [dict(run=name, backbone="vit", method="full", negatives=neg, shots=5, run_dir=name)
            for name, neg in (("a", "rotate_l2"), ("b", "none"))]
    curves = training_curves(tmp_path, runs)
    assert curves[0]["points"] == [(9, 1.5), (19, 0.9)] and curves[0]["y_label"] == "cross-entropy"
    assert curves[0]["negative_points"] == [(4, -1.1), (14, -1.2)]
    assert curves[1]["points"] == [(4, 2.0), (9, 1.8)] and curves[1]["y_label"] == "training loss (total)"
    assert curves[1]["negative_points"] == []
    figures = []
    monkeypatch.setattr(study_plots, "_save", lambda fig, out, title=None: figures.append(fig) or Path(out))
    study_plots.plot_training_curves(curves, tmp_path / "curves.png")
    top, bottom = figures[0].axes
    assert [list(line.get_ydata()) for line in top.get_lines()] == [[1.5, 0.9], [2.0, 1.8]]
    assert [list(line.get_ydata()) for line in bottom.get_lines()] == [[-1.1, -1.2]]
    assert bottom.get_title() == "5 shots per class: negative loss (unweighted)"
    assert top.get_ylabel() == "cross-entropy / training loss (total)"  # an old run's total is labelled as such


def test_intrinsic_note_names_the_images_behind_the_metric() -> None:
    from vitlab.study.report import _intrinsic_table

    sweep = dict(reference=0.85, threshold=0.765, points={"10": 0.31}, d90=None, d90_interpolated=None, complete=True)
    sweeps = {"vit": dict(sweep, metric="val/acc", eval_images=6000), "old": sweep}
    (_, (_, note)) = _intrinsic_table({"sweeps": sweeps})
    assert "vit: N = 6,000 (validation images)" in note and "old: N = not recorded (test images)" in note
