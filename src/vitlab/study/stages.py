"""The stages of ``vitlab study`` (see `vitlab.study.run`): pretrain, fine-tune, evaluate, intrinsic dimension, tables.

Each stage reuses the library function behind the subcommand that does the job alone (`vitlab.train.fit`, the
one-process-per-run launcher `vitlab.study.launch`, `vitlab.eval.robustness.robustness_report`,
`vitlab.eval.diagnostics.diagnose_checkpoint`, `vitlab.study.intrinsic.run_intrinsic_dim`) and skips what is already
done. The runs' specs and names come from `vitlab.study.plan`.

Usage (with a loaded `vitlab.study.config.StudyConfig`)::

    weights = pretrain_backbones(config)
    rows = run_finetune(config, finetune_specs(config, weights))
"""

from __future__ import annotations

import json
from contextlib import redirect_stdout
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitlab.eval.corruptions import SEVERITIES
from vitlab.study.cache import cache_differences, config_hash, ensure_cache_matches, write_record
from vitlab.study.config import StudyConfig
from vitlab.study.launch import cached_rows, launch_runs
from vitlab.study.plan import backbone_model, split_sizes
from vitlab.study.progress import sweep_progress
from vitlab.study.results import read_result_rows, write_csv
from vitlab.train.arguments import load_run_config_file
from vitlab.yaml_loader import load_yaml_file

if TYPE_CHECKING:
    from vitlab.train.config import RunConfig

__all__ = ["PLACEMENT_KEYS", "evaluate_runs", "pretrain_backbones", "pretrain_config", "pretraining_differences",
           "run_finetune", "run_intrinsic", "write_tables"]

#: Hash of the evaluation settings that made a run folder's robustness and diagnostics JSON (see `evaluate_runs`).
_EVALUATION_RECORD = "evaluation_key.txt"


#: Keys of a pretraining config that say where it ran, not what it made: a backbone pretrained with `vitlab fit
#: --config configs/pretrain_vit_mnist.yaml` (accelerator cpu) is the study's (accelerator auto).
PLACEMENT_KEYS = ("trainer.accelerator",)


def _fit_config(run_dir: Path) -> dict[str, Any] | None:
    """What `vitlab fit` recorded in ``run_dir/config.yaml`` (for a folder without a cache record)."""
    saved = run_dir / "config.yaml"
    loaded = load_yaml_file(saved) if saved.is_file() else None
    return loaded if isinstance(loaded, dict) else None


def pretraining_differences(config: StudyConfig, label: str) -> list[str] | None:
    """How backbone ``label``'s cached pretraining folder differs from its pretraining config (`[]`: reusable;
    ``None``: nothing cached there, or no record of what made it). Reads only (``vitlab study --estimate_only``)."""
    run_config = pretrain_config(config, label)
    run_dir = Path(run_config.output_dir) / run_config.name
    if not (run_dir / "model.safetensors").is_file():
        return None
    return cache_differences(run_dir, asdict(run_config), _fit_config(run_dir), PLACEMENT_KEYS)


def pretrain_config(config: StudyConfig, label: str) -> RunConfig:
    """The `vitlab fit` config that pretrains backbone ``label`` (its accelerator replaced by the study's)."""
    run_config = load_run_config_file(config.backbones[label].pretrain)
    return replace(run_config, trainer={**run_config.trainer, "accelerator": config.accelerator})


def pretrain_backbones(config: StudyConfig, reuse_cached_as_is: bool = False) -> dict[str, str]:
    """Pretrain (or find cached) every backbone the study uses; returns label -> its weights: the run folder with
    model.safetensors, or the ``pretrained`` spec of a backbone that names its weights (no pretraining).

    A run folder is reused (or resumed from ``last.ckpt``) only when the configuration that made it (its cache
    record, else its ``config.yaml``) equals the backbone's pretraining config; otherwise it is refused with the
    differing keys named (``reuse_cached_as_is``: use it anyway). See `vitlab.study.cache`.
    """
    from vitlab.train import fit

    weights = {}
    for label in config.used_backbones():
        spec = config.backbones[label]
        if spec.given_weights:
            from vitlab.checkpoint.pretrained import create_model

            # load them once now: weights neither cached nor downloadable failed every fine-tuning run in turn
            create_model(spec.model, spec.pretrained)
            print(f"{label}: pretrained weights {spec.model} from {spec.pretrained} (no pretraining stage)", flush=True)
            weights[label] = spec.pretrained
            continue
        run_config = pretrain_config(config, label)
        run_dir = Path(run_config.output_dir) / run_config.name
        wanted = asdict(run_config)
        if (run_dir / "model.safetensors").is_file() or (run_dir / "checkpoints" / "last.ckpt").is_file():
            ensure_cache_matches(run_dir, wanted, f"the {label} backbone's pretraining", reuse_cached_as_is,
                                 fallback=_fit_config(run_dir), ignore=PLACEMENT_KEYS)
        if (run_dir / "model.safetensors").is_file():
            print(f"{label}: cached pretrained weights {run_dir / 'model.safetensors'} (same configuration)",
                  flush=True)
        else:
            resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
            print(f"{label}: {'resuming' if resume else 'starting'} pretraining "
                  f"`vitlab fit --config {config.backbones[label].pretrain}`", flush=True)
            fit(run_config, resume=resume)
            write_record(run_dir, wanted)  # after fit: a record in the folder beforehand would make Lightning warn
        weights[label] = str(run_dir)
    return weights


def run_finetune(config: StudyConfig, specs: list[dict[str, Any]],
                 reuse_cached_as_is: bool = False) -> list[dict[str, Any]]:
    """Run every spec not yet in ``finetune/results.csv`` with the same configuration (one process each; see
    `vitlab.study.launch.cached_rows`); returns the rows of ``specs``."""
    results = config.folder / "finetune" / "results.csv"
    rows, todo = cached_rows(read_result_rows(results), specs, config.folder / "finetune" / "runs",
                             reuse_cached_as_is)
    print(f"{len(specs)} fine-tuning runs, {len(specs) - len(todo)} already done", flush=True)
    rows, failed = launch_runs(todo, rows, results, "study fine-tuning")
    if failed:
        raise ValueError(f"{len(failed)} fine-tuning run(s) failed: {failed}; see their log.txt under "
                         f"{config.folder / 'finetune' / 'runs'}, then rerun the same command (finished runs are kept)")
    wanted = {s["config"]["name"] for s in specs}
    return [row for row in rows if row["run"] in wanted]


def _run_dir(config: StudyConfig, run: str) -> Path:
    return config.folder / "finetune" / "runs" / run


def evaluate_runs(config: StudyConfig, rows: list[dict[str, Any]]) -> None:
    """Generated-corruption and negative-view accuracy of every run (JSON in its folder; skipped when present and made
    with the same evaluation settings for the same run, see ``evaluation_key.txt``)."""
    from vitlab.eval.evaluate import command_line, diagnose_checkpoint, robustness_report

    ev = config.evaluation
    outputs = {}
    for row in rows:  # results made with other evaluation settings (or of unknown origin) are evaluated again
        run_dir = _run_dir(config, row["run"])
        files = (run_dir / f"robustness_{config.downstream}.json",
                 run_dir / f"diagnose_negatives_{config.downstream}.json")
        key = config_hash({"evaluation": asdict(ev), "downstream": config.downstream, "run": row.get("config_hash")})
        record = run_dir / _EVALUATION_RECORD
        if not record.is_file() or record.read_text().strip() != key:
            for file in files:
                file.unlink(missing_ok=True)
            record.write_text(key + "\n")
        outputs[row["run"]] = (run_dir, *files)
    todo = sum(not (rob.is_file() and diag.is_file()) for _, rob, diag in outputs.values())
    with sweep_progress(todo, "study evaluation") as bar:
        for i, row in enumerate(rows, 1):
            run_dir, robustness, diagnose = outputs[row["run"]]
            ran = not (robustness.is_file() and diagnose.is_file())
            with (run_dir / "evaluate_log.txt").open("a") as log, redirect_stdout(log):
                if not robustness.is_file():
                    options = dict(checkpoint=str(run_dir), n=str(ev.corruption_n), root=config.root)
                    robustness_report(**options, command=command_line("vitlab robustness", options))
                if not diagnose.is_file():
                    options = dict(checkpoint=str(run_dir), n=str(ev.negative_view_n), patch_size=ev.patch_size,
                                   kinds=list(ev.kinds), root=config.root)
                    diagnose_checkpoint(**options, command=command_line("vitlab diagnose-negatives", options))
            bar.update(int(ran))
            rob, diag = json.loads(robustness.read_text()), json.loads(diagnose.read_text())
            views = ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in diag["views"].items() if k != "clean")
            bar.write(f"[{i}/{len(rows)}] {row['run']}: corruption accuracy {rob['metrics']['mean_accuracy']:.4f} "
                      f"(N={rob['n']}); negative views: {views}")


def run_intrinsic(config: StudyConfig, weights: dict[str, str],
                  reuse_cached_as_is: bool = False) -> dict[str, dict[str, Any]]:
    """The d90 sweep (and per-module sweep) of each listed backbone; returns label -> the sweep summary.

    A sweep folder made by another configuration is refused (see `vitlab.study.intrinsic.run_intrinsic_dim`)
    unless ``reuse_cached_as_is``."""
    from vitlab.study.intrinsic import run_intrinsic_dim
    from vitlab.train.config import ModelConfig

    spec = config.intrinsic_dim
    if not spec.backbones:
        print("intrinsic_dim.backbones is empty: stage skipped")
        return {}
    base = load_run_config_file(spec.config)
    summaries = {}
    for label in spec.backbones:
        backbone = config.backbones[label]
        model, size = backbone_model(weights[label], backbone.model, {}, backbone.img_size)
        run_config = replace(base, name=label, output_dir=str(config.folder / "intrinsic"),
                             model=ModelConfig(**model),
                             data=replace(base.data, name=config.downstream, root=config.root, img_size=size),
                             trainer={**base.trainer, "accelerator": config.accelerator})
        summaries[label] = run_intrinsic_dim(run_config, reuse_cached_as_is=reuse_cached_as_is)
        if spec.per_module:
            table = run_intrinsic_dim(run_config, per_module=True, reuse_cached_as_is=reuse_cached_as_is)
            print(f"{label}: per-module ranking {[r['module'] for r in table.get('per_module', [])]}")
        if spec.from_scratch:
            scratch = replace(run_config, name=f"{label}_scratch", model=replace(run_config.model, pretrained=None))
            summaries[scratch.name] = run_intrinsic_dim(scratch, reuse_cached_as_is=reuse_cached_as_is)
    for name, summary in summaries.items():
        print(f"{name}: reference {summary['reference']:.4f}, d90 {summary.get('d90')} "
              f"(interpolated {summary.get('d90_interpolated')})")
    return summaries


def _backbone_record(weights: str, spec: Any) -> dict[str, Any]:
    """What the report says of a backbone: its architecture, size and where its weights came from."""
    import math

    from safetensors import safe_open

    from vitlab.checkpoint import read_metadata, resolve_pretrained, resolve_weights_path

    if spec.given_weights:
        import timm
        import torch

        source = resolve_pretrained(weights, spec.model)
        with torch.device("meta"):  # counted without allocating
            parameters = sum(p.numel() for p in timm.create_model(source.architecture()).parameters())
        cfg = source.pretrained_cfg()
        described = source.describe()
        return {"model": spec.model, "parameters": parameters,
                "weights": described.get("hub_id") or described.get("path") or weights,
                "pretrain_data": cfg.get("tag") or source.source, "img_size": spec.img_size,
                "pretrain_accuracy": None}
    run_dir = Path(weights)
    meta = read_metadata(run_dir)
    with safe_open(str(resolve_weights_path(run_dir)), framework="pt") as handle:
        parameters = sum(math.prod(handle.get_slice(k).get_shape()) for k in handle.keys())
    extra = meta.get("extra", {})
    return {"model": meta["model_name"], "parameters": parameters, "weights": str(run_dir),
            "pretrain_data": extra.get("data", {}).get("name"), "img_size": extra.get("data", {}).get("img_size"),
            "pretrain_accuracy": extra.get("metrics", {}).get("test/acc")}


def write_tables(config: StudyConfig, rows: list[dict[str, Any]], weights: dict[str, str]) -> dict[str, Any]:
    """Write ``results.csv`` (one row per run) and ``robustness.csv`` (run, corruption, severity, accuracy) from the
    run folders; returns the ``study.json`` fields that describe the data, evaluation sets and backbones."""
    table, long, rob, diag = [], [], {}, {}
    for row in rows:
        run_dir = _run_dir(config, row["run"])
        rob = json.loads((run_dir / f"robustness_{config.downstream}.json").read_text())
        diag = json.loads((run_dir / f"diagnose_negatives_{config.downstream}.json").read_text())
        metrics, per_severity = rob["metrics"], {int(k): v for k, v in rob["metrics"]["per_severity"].items()}
        entry = {key: row[key] for key in ("run", "backbone", "method", "negatives", "shots", "seed")}
        entry.update(trainable_params=row["trainable_params"], clean_acc=row["accuracy"],
                     corruption_acc=metrics["mean_accuracy"],
                     **{f"corruption_acc_s{s}": per_severity.get(s) for s in SEVERITIES},
                     extra_corruption_acc=metrics.get("extra_mean_accuracy"),
                     **{f"neg_{kind}_{short}": diag["views"].get(kind, {}).get(measure)
                        for short, measure in (("acc", "accuracy"), ("conf", "confidence"))
                        for kind in ("shuffle", "rotate", "infill")},
                     train_time_s=row.get("train_time_s"), run_dir=str(run_dir.relative_to(config.folder)))
        table.append(entry)
        long += [{"run": row["run"], "corruption": c, "severity": int(s), "accuracy": a}
                 for c, by_severity in rob["accuracy"].items() for s, a in by_severity.items()]
    write_csv(table, config.folder / "results.csv")
    write_csv(long, config.folder / "robustness.csv")
    backbones = {label: _backbone_record(source, config.backbones[label]) for label, source in weights.items()}
    from vitlab.data import build_datamodule

    train_images, test_images = split_sizes(build_datamodule(config.downstream, root=config.root))
    return {
        "data": {"pretrain": ", ".join(sorted({b["pretrain_data"] for b in backbones.values() if b["pretrain_data"]})),
                 "downstream": config.downstream, "train_images": train_images,
                 "test_images": test_images,
                 "img_size": next((b["img_size"] for b in backbones.values() if b["img_size"]), None)},
        "corruption": {"n": rob.get("n"), "severities": list(SEVERITIES),
                       "source": f"generated with imagecorruptions-imaug from the first {rob.get('n')} "
                                 f"{config.downstream} test images (a generated set, not a published benchmark)"},
        "negative_views": {"n": diag.get("n"), "chance": diag.get("chance"), "patch_size": diag.get("patch_size")},
        "backbones": backbones,
    }
