"""The report of a ``vitlab study`` folder: ``report.md``, a self-contained ``report.html`` and ``plots/*.png``.

Reads (all written by ``vitlab study``):

- ``study.json``: name, exact command, versions, hardware, times, stages, data, corruption and negative-view sets;
- ``results.csv``: one row per fine-tuning run (``REQUIRED_COLUMNS``; accuracies are fractions, empty = not run);
- ``<run_dir>/metrics.csv``: Lightning's CSVLogger output of each run (training-loss curves);
- ``intrinsic/<backbone>/intrinsic_dim.json`` and ``intrinsic_dim_per_module.csv``: optional d90 results.

``robustness.csv`` (per corruption) is not read: ``results.csv`` holds its means. Runs are grouped by
(backbone, method, negatives, shots) in order of first appearance; a cell with values from ≥ 2 seeds shows
``mean ± sample std [95 % t-interval of the mean]``, one from a single seed says ``(1 seed)``. The number N of test
images (or views) of every evaluation is stated under its table, negative-view columns say that lower is better,
every plot is written as PNG and SVG (with error bars where there are seeds), a cached stage shows the time it took
when it ran. Markdown and HTML are rendered from one list of blocks, so they hold the same text and numbers.
``results_markdown`` + ``update_readme`` put the results between the README's ``START_MARKER`` and ``END_MARKER``.

Usage (with a folder written by ``vitlab study``)::

    out = write_study_report("runs/study")
    update_readme("README.md", results_markdown("runs/study"))
"""

from __future__ import annotations

import base64
import html
import re
from functools import partial
from pathlib import Path
from typing import Any

from vitlab.study import plots as study_plots
from vitlab.study.headline import LARGER, NOISE, d90_row, headline_rows
from vitlab.study.results import REQUIRED_COLUMNS, SEVERITY_COLUMNS, load_study, training_curves

__all__ = ["END_MARKER", "PLOT_NAMES", "REQUIRED_COLUMNS", "START_MARKER", "check_readme", "results_markdown",
           "update_readme", "write_study_report"]

LOWER_IS_BETTER = " (lower is better)"
TABLE_METRICS = {"clean %": "clean_acc", "corruption %": "corruption_acc", "severity 5 %": "corruption_acc_s5",
                 "extra corruptions %": "extra_corruption_acc", f"shuffle %{LOWER_IS_BETTER}": "neg_shuffle_acc",
                 f"rotate %{LOWER_IS_BETTER}": "neg_rotate_acc", f"infill %{LOWER_IS_BETTER}": "neg_infill_acc"}
#: Negative-view confidence columns, shown when some run measured them.
CONFIDENCE_METRICS = {f"{kind} conf %{LOWER_IS_BETTER}": f"neg_{kind}_conf" for kind in ("shuffle", "rotate", "infill")}
PLOT_NAMES = ("accuracy_vs_params", "robustness_by_severity", "training_curves", "intrinsic_dim", "per_module")
START_MARKER, END_MARKER = "<!-- study-results:start -->", "<!-- study-results:end -->"
DASH, NA = "–", "n/a"
_CAPTIONS = dict(zip(PLOT_NAMES, ("Clean accuracy vs trainable parameters", "Accuracy vs corruption severity",
                                  "Training curves: cross-entropy and negative loss",
                                  "Accuracy vs subspace dimension d", "d90 per module kind"),
                     strict=True))
_CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:3px 8px}"
        "th{background:#f2f2f2}code{background:#f2f2f2;padding:1px 4px}img{max-width:100%}")
Block = tuple  # ("h", level, text) | ("p", spans) | ("ul", [spans]) | ("table", header, rows) | ("img", alt, png, svg)


def _pct(value: Any, missing: str = DASH) -> str:
    """A fraction as a percentage with 2 decimals."""
    return f"{100 * value:.2f}" if isinstance(value, int | float) else missing


def _cell(row: dict[str, Any], column: str) -> str:
    """``mean ± std [low, high]`` (95 % t-interval) over ≥ 2 seeds, ``value (1 seed)`` for one, – when not measured."""
    value, interval = row[column], row.get(f"{column}_ci")
    if not isinstance(value, int | float):
        return DASH
    if interval is None:
        return f"{_pct(value)} (1 seed)" if row.get(f"{column}_n", 1) == 1 else _pct(value)
    return f"{_pct(value)} ± {_pct(row[f'{column}_std'])} [{_pct(interval[0])}, {_pct(interval[1])}]"


def _int(value: Any, missing: str = DASH) -> str:
    return f"{value:,.0f}" if isinstance(value, int | float) else missing


def _d90(sweep: dict[str, Any], value: Any, prefix: str = "= ") -> str:
    """A d90 as the report states it: ``not reached``; ``≤ d`` when the smallest measured d already reached the
    threshold (nothing below it was measured, so that d is an upper bound, not a measured d90); else the number."""
    if not isinstance(value, int | float):
        return "not reached"
    points = sweep.get("points") or {}
    first = min(map(int, points), default=None)
    reached = sweep.get("d90")
    if first is not None and isinstance(reached, int | float) and int(reached) == first:
        return f"≤ {_int(first)}"
    return f"{prefix}{_int(value)}"


def _minutes(seconds: Any, missing: str = DASH) -> str:
    return f"{seconds / 60:.1f}" if isinstance(seconds, int | float) else missing


def _get(meta: Any, *keys: str) -> Any:
    for key in keys:
        meta = meta.get(key) if isinstance(meta, dict) else None
    return NA if meta is None else meta


def _results_blocks(study: dict[str, Any]) -> list[Block]:
    if not study["rows"]:
        return [("p", "Results: no fine-tuning run in results.csv yet.")]
    confidence = any(r.get(c) is not None for r in study["rows"] for c in CONFIDENCE_METRICS.values())
    metrics = {**TABLE_METRICS, **(CONFIDENCE_METRICS if confidence else {})}
    header = ["backbone", "method", "negatives", "shots", "seeds", "trainable params", *metrics]
    body = [[r["backbone"], r["method"], r["negatives"], str(r["shots"]), str(r["seeds"]), _int(r["trainable_params"]),
             *(_cell(r, c) for c in metrics.values())] for r in study["rows"]]
    get = partial(_get, study["meta"])
    note = ("Accuracy in %; with ≥ 2 seeds mean ± sample std over seeds [95 % t-interval of the mean], with one "
            "seed the single value, marked (1 seed) (– = not measured). "
            f"N: clean on N = {_int(get('data', 'test_images'), NA)} test images; corruption (mean over the 15 common "
            "corruptions and 5 severities), severity 5 (the 15 at severity 5) and extra corruptions (mean over the 4 "
            f"extra ones) on N = {_int(get('corruption', 'n'), NA)} test images per corruption and severity; "
            f"shuffle / rotate / infill: accuracy on N = {_int(get('negative_views', 'n'), NA)} negative views of "
            "test images (one per image and kind), lower is better: a model that cannot classify a destroyed image "
            f"is right (chance {_pct(get('negative_views', 'chance'), missing=NA)} %)."
            + (" shuffle / rotate / infill conf: mean max-softmax probability on the same views, lower is better "
               "(a model that cannot tell is near the uniform 1/K)." if confidence else ""))
    return [("table", header, body), ("p", note)]


_METRIC_NAMES = {"clean_acc": "clean accuracy", "corruption_acc": "corruption accuracy",
                 "corruption_acc_s5": "corruption accuracy, severity 5",
                 "extra_corruption_acc": "extra-corruption accuracy",
                 **{f"neg_{k}_acc": f"{k}-view accuracy{LOWER_IS_BETTER}" for k in ("shuffle", "rotate", "infill")},
                 **{f"neg_{k}_conf": f"{k}-view confidence{LOWER_IS_BETTER}" for k in ("shuffle", "rotate", "infill")}}


def _selection(selection: dict[str, Any]) -> str:
    return "/".join(str(v) for v in selection.values())


def _evaluation_n(metric: str, meta: dict[str, Any]) -> str:
    """N of the evaluation behind a results column, in words."""
    get = partial(_get, meta)
    if metric == "clean_acc":
        return f"{_int(get('data', 'test_images'), NA)} test images"
    if metric.startswith("neg_"):
        return f"{_int(get('negative_views', 'n'), NA)} views (one per test image)"
    times = {"corruption_acc": "15 corruptions × 5 severities", "corruption_acc_s5": "15 corruptions",
             "extra_corruption_acc": "4 corruptions × 5 severities"}.get(metric, "corruptions")
    return f"{_int(get('corruption', 'n'), NA)} test images × {times}"


def _side(row: dict[str, Any], side: str) -> str:
    seeds = row[f"{side}_seeds"]
    params = row[f"{side}_params"]
    return (f"{_pct(row[f'{side}_mean'])} ({seeds} seed{'s' if seeds != 1 else ''}"
            + (f", {_int(params)} trainable" if isinstance(params, int | float) else "") + ")")


def _signed(value: Any) -> str:
    return f"{100 * value:+.2f}" if isinstance(value, int | float) else DASH


def _headline_blocks(study: dict[str, Any]) -> list[Block]:
    """The "Headline effects" section: the config's comparisons and each sweep's d90 (nothing when none)."""
    config = study["meta"].get("config") if isinstance(study["meta"].get("config"), dict) else {}
    specs = config.get("headlines") or []
    if not specs:
        return []
    body = []
    for r in headline_rows(study["runs"], specs):
        spread = "1 seed" if r["spread"] is None else f"{100 * r['spread']:.2f} ({r['spread_kind']})"
        body.append([r["advance"], f"{_selection(r['a'])} (A) vs {_selection(r['b'])} (B)",
                     _METRIC_NAMES.get(r["metric"], r["metric"]), _side(r, "a"), _side(r, "b"),
                     _signed(r["difference"]), spread, _evaluation_n(r["metric"], study["meta"]), r["verdict"]])
    for name, sweep in study["sweeps"].items():
        d = d90_row(name, sweep)
        # a study's sweeps test on its downstream test split (older sweep files do not record their N)
        n = _int(sweep.get("test_images") or _get(study["meta"], "data", "test_images"), NA)
        body.append(["training (intrinsic dimension)", f"{name}: accuracy at d90 (A) vs the threshold (B)",
                     f"d90 {_d90(sweep, d['d90'])}" if d["reached"] else "d90 not reached",
                     f"{_pct(d['accuracy'])} (1 seed)", f"{_pct(d['threshold'])} (90 % of {_pct(d['reference'])})",
                     _signed(d["accuracy"] - d["threshold"]), "1 seed", f"{n} test images",
                     f"reached on its grid ({d['points']} points measured)" if d["reached"]
                     else f"not reached on its grid ({d['points']} points measured)"])
    header = ["advance", "compared", "metric", "A % (seeds, params)", "B %", "difference A − B (points)",
              "spread (points)", "N", "verdict"]
    note = ("Spread: with the same ≥ 2 seeds in both groups, the sample std over seeds of the per-seed difference "
            "(paired: a seed draws the same fine-tuning images for both groups); otherwise √(std_A² + std_B²) of the "
            "groups' sample stds over seeds (unpaired); a group with a single seed has no spread (1 seed). Verdict: "
            f"\"{LARGER}\" when |difference| > spread, else \"{NOISE}\"; a spread from 2 or 3 seeds is itself "
            "rough, so the verdict is a first look, not a significance test. Percentages: accuracy, or for the "
            "confidence rows the mean max-softmax probability (ideal on a negative view: the uniform 1/K).")
    return [("h", 2, "Headline effects"), ("table", header, body), ("p", note)]


def _not_shown_blocks(meta: dict[str, Any]) -> list[Block]:
    """The config's ``not_shown`` items as a list, `backticked` text rendered as code."""
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    items = config.get("not_shown") or []
    if not items:
        return []

    def spans(text: str) -> list[tuple[str, str]]:
        parts = re.split(r"`([^`]+)`", text)
        return [("code" if i % 2 else "text", part) for i, part in enumerate(parts) if part]

    return [("h", 2, "What this study does not show"), ("ul", [spans(item) for item in items])]


def _intrinsic_table(study: dict[str, Any]) -> list[Block]:
    sweeps = study["sweeps"]
    table = ("table", ["backbone", "reference %", "threshold %", "d90 (grid)", "d90 (interpolated)", "points measured",
                       "projection"],
             [[name, _pct(s["reference"]), _pct(s["threshold"]), _d90(s, s.get("d90"), ""),
               _d90(s, s.get("d90_interpolated"), ""), str(len(s["points"])),
               # sweeps written before the option existed used Li et al.'s global normalisation
               f"{s.get('projection', 'fastfood')}, {s.get('projection_norm', 'global')} norm"]
              for name, s in sweeps.items()])
    counts = "; ".join(
        f"{name}: N = {_int(s.get('eval_images', s.get('test_images')), 'not recorded')} "
        f"({'validation' if str(s.get('metric', 'test/acc')).startswith('val/') else 'test'} images)"
        for name, s in sweeps.items())
    note = ("Each accuracy is one run (one seed) on the sweep's evaluation images "
            f"({counts}). d90 (grid) is the smallest measured d reaching the threshold; the grid is refined between "
            "the last miss and the first hit where the sweep recorded it (refine_ratio); ≤ d: the smallest d "
            "measured already reached it, so d90 is at most d (add smaller d to measure it); projection: per_tensor = "
            "unit-norm columns per parameter tensor (Aghajanyan et al.), global = over all parameters (Li et al.).")
    return [table, ("p", note)]


def _duration(seconds: Any) -> str:
    return f"{_minutes(seconds)} min" if isinstance(seconds, int | float) else NA


def _hardware(text: Any) -> str:
    """``study.json``'s hardware line with the thread count in the right number ("1 CPU thread", "2 CPU threads")."""
    return re.sub(r"\b1 CPU threads\b", "1 CPU thread", str(text))


def _stage_row(stage: dict[str, Any]) -> list[str]:
    """Stage, estimate, measured time and status; a cached stage shows the time it took when it ran, if recorded."""
    measured, status = stage.get("measured_s"), str(_get(stage, "status"))
    ran = isinstance(measured, int | float) and measured > 0
    if status == "cached":
        status = "cached (measured: when it ran)" if ran else "cached (time of its run not recorded)"
    return [str(_get(stage, "stage")), _minutes(stage.get("estimated_s")), _minutes(measured) if ran else DASH, status]


def _header(meta: dict[str, Any]) -> list[Any]:
    get = partial(_get, meta)
    size, severities = get("data", "img_size"), get("corruption", "severities")
    return [f"Data: pretraining on {get('data', 'pretrain')}, fine-tuning and evaluation on "
            f"{get('data', 'downstream')}, {size}×{size} px, {_int(get('data', 'train_images'), NA)} training / "
            f"{_int(get('data', 'test_images'), NA)} test images",
            f"Hardware: {_hardware(get('hardware'))}",
            f"Time taken: {_duration(get('wall_time_s'))} (started {get('started')})",
            f"Versions: vitlab {get('vitlab_version')}, torch {get('torch_version')}",
            [("text", "Command: "), ("code", meta["command"])],
            f"Corruption set: N = {get('corruption', 'n')} test images, severities "
            f"{', '.join(map(str, severities)) if isinstance(severities, list) else NA}. {get('corruption', 'source')}",
            f"Negative views: N = {get('negative_views', 'n')} test images, chance "
            f"{_pct(get('negative_views', 'chance'), missing=NA)} %, patch size {get('negative_views', 'patch_size')}",
            *(f"Backbone {n}: {_get(b, 'model')}, {_int(_get(b, 'parameters'), NA)} parameters, pretraining accuracy "
              f"{_pct(_get(b, 'pretrain_accuracy'), missing=NA)} %, weights {_get(b, 'weights')}"
              for n, b in (meta.get("backbones") if isinstance(meta.get("backbones"), dict) else {}).items())]


def _blocks(study: dict[str, Any], plots: dict[str, Path]) -> list[Block]:
    meta = study["meta"]
    blocks: list[Block] = [("h", 1, f"vitlab study report: {meta['name']}"), *_headline_blocks(study),
                           ("ul", _header(meta)), *_not_shown_blocks(meta)]
    blocks += [("h", 2, "Results"), *_results_blocks(study), ("h", 2, "Plots")]
    for name in PLOT_NAMES[:3]:
        blocks.append(_image(_CAPTIONS[name], plots[name], f"plots/{name}.png") if name in plots else
                      ("p", f"{_CAPTIONS[name]}: no data in this study yet."))
    blocks.append(("h", 2, "Intrinsic dimension"))
    if "intrinsic_dim" in plots:
        blocks += [*_intrinsic_table(study),
                   _image(_CAPTIONS["intrinsic_dim"], plots["intrinsic_dim"], "plots/intrinsic_dim.png")]
    else:
        blocks.append(("p", "Intrinsic dimension: not run in this study."))
    blocks.append(("h", 2, "Intrinsic dimension per module kind"))
    if "per_module" in plots:
        rows = [[n, str(r["rank"]), r["module"], _int(r["d90_interpolated"]) if r["reached"] else "not reached",
                 _pct(r["best_accuracy"])] for n, table in study["tables"].items() for r in table]
        blocks += [("table", ["backbone", "rank", "module", "d90 interpolated", "best accuracy %"], rows),
                   ("p", "Each kind's accuracies are single runs (one seed) on the test images of the sweep's data."),
                   _image(_CAPTIONS["per_module"], plots["per_module"], "plots/per_module.png")]
    else:
        blocks.append(("p", "Per-module intrinsic dimension: not run in this study."))
    stages = [s for s in meta.get("stages") or [] if isinstance(s, dict)]
    table = [_stage_row(s) for s in stages]
    return [*blocks, ("h", 2, "Stage times"), ("table", ["stage", "estimated (min)", "measured (min)", "status"], table)
            if stages else ("p", "Stage times: not recorded in study.json.")]


def _spans(spans: Any) -> list[tuple[str, str]]:
    return [("text", spans)] if isinstance(spans, str) else list(spans)


def _md_line(spans: Any) -> str:
    def code(text: str) -> str:
        ticks = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
        pad = " " if text.startswith("`") or text.endswith("`") else ""
        return f"{ticks}{pad}{text}{pad}{ticks}"

    return "".join(t if kind == "text" else code(t) for kind, t in _spans(spans))


def _image(alt: str, png: Path, shown_as: str) -> Block:
    """An image block of ``png`` (linked as ``shown_as``) with a link to the SVG beside it when that exists."""
    svg = shown_as[: -len(".png")] + ".svg" if png.with_suffix(".svg").is_file() else None
    return ("img", alt, shown_as, svg)


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", r"\|").replace("\n", " ") for c in cells) + " |"


def _render_markdown(blocks: list[Block], image_prefix: str = "") -> str:
    render = {"h": lambda b: "#" * b[1] + " " + b[2], "p": lambda b: _md_line(b[1]),
              "ul": lambda b: "\n".join("- " + _md_line(item) for item in b[1]),
              "table": lambda b: "\n".join([_md_row(b[1]), _md_row(["---"] * len(b[1])), *map(_md_row, b[2])]),
              "img": lambda b: f"![{b[1]}]({image_prefix}{b[2]})"
                               + (f"\n\n[{b[1]} (SVG)]({image_prefix}{b[3]})" if b[3] else "")}
    return "\n\n".join(render[b[0]](b) for b in blocks) + "\n"


def _render_html(blocks: list[Block], folder: Path) -> str:
    def line(spans: Any) -> str:
        return "".join(html.escape(t) if k == "text" else f"<code>{html.escape(t)}</code>" for k, t in _spans(spans))

    def row(tag: str, cells: list[str]) -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"

    def image(b: Block) -> str:
        data = base64.b64encode((folder / b[2]).read_bytes()).decode("ascii")
        return (f'<figure><img alt="{html.escape(b[1])}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(b[1])}"
                + (f' (<a href="{html.escape(b[3])}">SVG</a>)' if b[3] else "") + "</figcaption></figure>")

    render = {"h": lambda b: f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>", "p": lambda b: f"<p>{line(b[1])}</p>",
              "ul": lambda b: "<ul>" + "".join(f"<li>{line(item)}</li>" for item in b[1]) + "</ul>",
              "table": lambda b: f"<table><thead>{row('th', b[1])}</thead><tbody>"
                                 + "".join(row("td", r) for r in b[2]) + "</tbody></table>", "img": image}
    title = html.escape(blocks[0][2])
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
            f"<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(render[b[0]](b) for b in blocks)
            + "\n</body>\n</html>\n")


def _write_plots(study: dict[str, Any]) -> dict[str, Path]:
    rows, sweeps, tables = study["rows"], study["sweeps"], study["tables"]
    curves = training_curves(study["folder"], study["runs"])
    jobs = {"accuracy_vs_params": (study_plots.plot_accuracy_vs_params, rows,
                                   any(r["clean_acc"] is not None and (r["trainable_params"] or 0) > 0 for r in rows)),
            "robustness_by_severity": (study_plots.plot_robustness_by_severity, rows,
                                       any(r[c] is not None for r in rows for c in SEVERITY_COLUMNS)),
            "training_curves": (study_plots.plot_training_curves, curves, any(c["points"] for c in curves)),
            "intrinsic_dim": (study_plots.plot_intrinsic_dim, sweeps, any(s["points"] for s in sweeps.values())),
            "per_module": (study_plots.plot_per_module, tables, any(tables.values()))}
    plots = {}
    for name, (plot, data, has_data) in jobs.items():
        path = study["folder"] / "plots" / f"{name}.png"
        if has_data:
            plots[name] = plot(data, path, title=f"study {study['meta']['name']}")
        else:  # a stale plot of an earlier report would disagree with this one
            path.unlink(missing_ok=True)
            path.with_suffix(".svg").unlink(missing_ok=True)
    return plots


def write_study_report(study_dir: str | Path) -> dict[str, Any]:
    """Write ``plots/*.png`` (+ ``.svg``), ``report.md`` and the self-contained ``report.html`` into a study folder.

    Args:
        study_dir: the folder ``vitlab study`` wrote (with ``study.json`` and ``results.csv``).

    Returns:
        ``{"markdown": Path, "html": Path, "plots": {name: Path}, "rows": [aggregated table rows]}``; a row holds
        the group keys, ``seeds`` (number of runs), ``trainable_params`` and, per accuracy column, its mean,
        ``<column>_n`` (values), ``<column>_std`` and ``<column>_ci`` (95 % t-interval ``(low, high)``) (fractions;
        ``None`` when not measured or, for the std and interval, a single value).

    Raises:
        FileNotFoundError: no study folder, ``study.json`` or ``results.csv`` (run ``vitlab study`` first).
        ValueError: a file lacks columns or keys, or holds a value that is not a number (the message names the fix).
    """
    study = load_study(study_dir)
    plots = _write_plots(study)
    blocks = _blocks(study, plots)
    markdown, page = study["folder"] / "report.md", study["folder"] / "report.html"
    markdown.write_text(_render_markdown(blocks), encoding="utf-8")
    page.write_text(_render_html(blocks, study["folder"]), encoding="utf-8")
    return {"markdown": markdown, "html": page, "plots": plots, "rows": study["rows"]}


def results_markdown(study_dir: str | Path) -> str:
    """The README "Results" snippet: command, hardware and time, results table, intrinsic-dimension table, plot link.

    Every number comes from the study folder; the image links ``<study_dir>/plots/accuracy_vs_params.png`` with
    ``study_dir`` as given (so pass it relative to the README's folder).

    Raises:
        FileNotFoundError: no study files, or no ``plots/accuracy_vs_params.png`` (call ``write_study_report`` first).
        ValueError: as ``write_study_report``.
    """
    study, png = load_study(study_dir), Path(study_dir) / "plots" / "accuracy_vs_params.png"
    if not png.is_file():
        raise FileNotFoundError(f"{png} does not exist; call write_study_report({str(study_dir)!r}) first")
    meta = study["meta"]
    where = (f" (hardware: {_hardware(_get(meta, 'hardware'))}; time taken: {_duration(meta.get('wall_time_s'))}, "
             f"started {_get(meta, 'started')}).")
    blocks: list[Block] = [("p", [("text", "Measured with "), ("code", meta["command"]), ("text", where)]),
                           *_results_blocks(study)]
    if study["sweeps"]:
        blocks += [("p", "Intrinsic dimension (d90: the smallest subspace dimension reaching the threshold, "
                         "90 % of the reference accuracy):"), *_intrinsic_table(study)]
    return _render_markdown([*blocks, _image(_CAPTIONS["accuracy_vs_params"], png, png.as_posix())])


def check_readme(readme_path: str | Path) -> str:
    """The text of a README whose Results section a study may rewrite: a file with exactly one ``START_MARKER`` line
    followed by one ``END_MARKER`` line.

    Raises:
        FileNotFoundError: no such file. ValueError: a marker is missing, duplicated or out of order.
    """
    path = Path(readme_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a file; pass the path of the README to update (--readme README.md)")
    text = path.read_text(encoding="utf-8")
    counts = [text.count(START_MARKER), text.count(END_MARKER)]
    if counts != [1, 1] or text.find(END_MARKER) < text.find(START_MARKER):
        raise ValueError(f"{path} needs exactly one {START_MARKER} line followed by one {END_MARKER} line (found "
                         f"{counts[0]} and {counts[1]}); add the two marker lines where the Results section should go")
    return text


def update_readme(readme_path: str | Path, snippet: str) -> None:
    """Replace the text between the ``START_MARKER`` and ``END_MARKER`` lines of a README (markers kept; idempotent).

    Raises:
        FileNotFoundError: no such README.
        ValueError: a marker is missing, duplicated or out of order, or the snippet itself holds a marker.
    """
    if not isinstance(snippet, str) or START_MARKER in snippet or END_MARKER in snippet:
        raise ValueError("snippet must be a str without the study-results markers (use results_markdown(...))")
    path = Path(readme_path)
    text = check_readme(path)
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    new = text[:start + len(START_MARKER)] + "\n" + snippet.strip("\n") + "\n" + text[end:]
    if new != text:
        path.write_text(new, encoding="utf-8")
