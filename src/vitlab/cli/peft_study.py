"""``vitlab peft-study``: every fine-tuning method on one pretrained backbone and dataset, one process per run.

By default the small ViT pretrained on MNIST (``vitlab fit --config configs/pretrain_vit_mnist.yaml`` writes
``runs/pretrain_vit_mnist``) is fine-tuned on Fashion-MNIST with every method of
`vitlab.peft.study.STUDY_METHODS`: few-shot k ∈ {5, 20} examples per class × seeds {0, 1, 2}, plus the full training
set with seed 0. Each run is a `vitlab.train.fit` run in its own Python process, so its peak memory (the child's
``ru_maxrss`` from ``os.wait4``) is its own. Few-shot subsets are drawn with `few_shot_indices` from the training split
(after the validation split is carved); validation is off and the accuracy is top-1 on the official test set.

Output folder ``<output_dir>/<name>`` (``--output_dir`` is the parent folder, as for ``vitlab fit`` and ``vitlab
study``; default ``runs/peft_study``):

- ``runs/<method>-k<k>-s<seed>/`` and ``runs/<method>-full-s<seed>/``: each run's folder; ``log.txt`` is its output;
- ``results.csv``: one row per run (run, method, shots, seed, accuracy, trainable_params, adaptation_params,
  train_size, steps, train_time_s, peak_memory_mb, wall_time_s, config_hash), rewritten after every run;
- ``summary.csv``: per (method, shots) the accuracy mean ± sample std over seeds, means of time and memory;
- ``accuracy_vs_params.png``: accuracy against trainable parameters (log x), one panel per shots setting.

Resumable: the same command again skips every run that has a row in ``results.csv`` made by the same configuration
(the row's ``config_hash``: the run's spec and the backbone's weights); a run whose configuration changed is redone
(``--reuse_cached_as_is true`` keeps it). Rows of runs not asked for now are kept and the summary covers all of them,
so use another ``--name`` when you change the budget. Needs ``os.wait4`` (Linux, macOS).

Example:
    vitlab peft-study --methods '[linear, kadaptation]' --shots '[5]' --seeds '[0]' --full_data false --steps 50
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser, Namespace

from vitlab.cli.cache import config_hash, differing_keys
from vitlab.cli.progress import sweep_progress
from vitlab.errors import ConfigError

__all__ = ["DEFAULT_BACKBONE", "backbone_model", "build_peft_study_parser", "launch_run", "plan_study",
           "read_result_rows", "run_peft_study", "run_study"]

DEFAULT_BACKBONE = "runs/pretrain_vit_mnist"
_SPEC, _RESULT = "study_spec.json", "study_result.json"
_INT_COLUMNS = ("seed", "trainable_params", "adaptation_params", "train_size", "steps")
_FLOAT_COLUMNS = ("accuracy", "train_time_s", "peak_memory_mb", "peak_gpu_memory_mb", "wall_time_s")


def build_peft_study_parser() -> ArgumentParser:
    """The ``vitlab peft-study`` parser (lists as everywhere in vitlab: ``--shots '[5, 20]'``; the older
    comma-separated form ``--shots 5,20`` is still accepted)."""
    parser = ArgumentParser(prog="vitlab peft-study", description="Fine-tune one pretrained backbone with every PEFT "
                            "method (few-shot and full data, one process per run); writes results.csv, summary.csv "
                            "and accuracy_vs_params.png. Rerunning skips finished runs.")
    parser.add_argument("--backbone", type=str, default=DEFAULT_BACKBONE,
                        help="starting weights: a vitlab run folder or model.safetensors, a plain weights file "
                        "(.safetensors/.pth, with --model), timm (with --model NAME[.TAG]), hf-hub:ORG/NAME, or 'none' "
                        "(random weights)")
    parser.add_argument("--model", type=str | None, default=None, help="timm name (needed with --backbone none)")
    parser.add_argument("--model_kwargs", type=dict, default={}, help="extra timm.create_model keywords (JSON)")
    parser.add_argument("--data", type=str, default="fashion_mnist", help="downstream dataset (vitlab data list)")
    parser.add_argument("--root", type=str | None, default=None, help="data folder (default: vitlab's cache)")
    parser.add_argument("--img_size", type=int | None, default=None, help="input size (default: the backbone's)")
    parser.add_argument("--methods", type=list[str] | str | None, default=None,
                        help="methods, e.g. '[linear, kadaptation]' (default: every method of "
                        "vitlab.peft.study.STUDY_METHODS)")
    parser.add_argument("--method_options", type=dict, default={},
                        help='per-method peft options merged over the defaults, JSON: {"lora": {"r": 8}}')
    parser.add_argument("--shots", type=list[int] | str, default=[5, 20], help="k (examples per class), e.g. '[5, 20]'")
    parser.add_argument("--seeds", type=list[int] | str, default=[0, 1, 2], help="seeds of the few-shot runs, e.g. "
                        "'[0, 1, 2]'")
    parser.add_argument("--full_data", type=bool, default=True, help="also fine-tune on the whole training split")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps of each few-shot run")
    parser.add_argument("--full_epochs", type=int, default=1, help="epochs of each full-data run")
    parser.add_argument("--batch_size", type=int, default=128, help="batch size (few-shot: at most k x classes)")
    parser.add_argument("--accelerator", type=str, default="auto", help="cpu, gpu or auto")
    parser.add_argument("--name", type=str, default="peft_study", help="study name: the study folder is "
                        "<output_dir>/<name>")
    parser.add_argument("--output_dir", type=str, default="runs", help="parent folder of the study folder")
    parser.add_argument("--keep_checkpoints", type=bool, default=False, help="keep each run's last.ckpt")
    parser.add_argument("--reuse_cached_as_is", type=bool, default=False,
                        help="reuse every run in results.csv even if another configuration made it (default: such "
                        "runs are redone)")
    return parser


def _int_list(text: str | Sequence[int], option: str) -> list[int]:
    try:
        values = [int(v) for v in (text.split(",") if isinstance(text, str) else text) if str(v).strip()]
    except ValueError:
        raise ValueError(f"{option} takes a list of integers such as '[5, 20]' (or comma-separated integers such as "
                         f"5,20); got {text!r}") from None
    return values


def backbone_model(backbone: str | None, model: str | None, model_kwargs: Mapping[str, Any],
                   img_size: int | None) -> tuple[dict[str, Any], int]:
    """``(model section, img_size)`` of the runs.

    ``backbone`` is a vitlab ``model.safetensors`` or run folder (the architecture comes from its metadata), any
    other ``model.pretrained`` form of `vitlab.checkpoint.resolve_pretrained` (``timm``, ``hf-hub:ORG/NAME``, a plain
    weights file; ``model`` names the architecture, except for ``hf-hub:`` where the Hub config does), or ``none``
    (random init of ``model``).
    """
    from vitlab.checkpoint import read_metadata, resolve_pretrained

    if backbone is None or str(backbone).lower() == "none":
        if not model:
            raise ValueError("--backbone none needs --model <timm name>: the architecture to train from random init")
        kwargs = dict(model_kwargs)
        size = img_size or kwargs.pop("img_size", 32)
        kwargs.pop("img_size", None)
        return {"name": model, "kwargs": kwargs, "pretrained": None}, size
    hub = str(backbone).startswith("hf-hub:")
    if str(backbone) == "timm" or hub or (Path(backbone).is_file() and not _is_vitlab_file(backbone)):
        if not (model or hub):
            raise ValueError(f"--backbone {backbone} needs --model <timm name>: the architecture its weights are for")
        weights = resolve_pretrained(backbone, model or str(backbone))
        kwargs = dict(model_kwargs)
        size = img_size or kwargs.pop("img_size", None) or int((weights.pretrained_cfg().get("input_size")
                                                                or (3, 224, 224))[-1])
        kwargs.pop("img_size", None)
        pretrained = weights.location if weights.source == "file" else str(backbone)
        return {"name": weights.architecture() if hub else model, "kwargs": kwargs, "pretrained": pretrained}, size
    if not Path(backbone).exists():
        raise FileNotFoundError(f"no pretrained backbone at {backbone}: train it with `vitlab fit --config "
                                "configs/pretrain_vit_mnist.yaml` (writes runs/pretrain_vit_mnist), or pass "
                                "--backbone PATH (a vitlab run folder or a weights file), --backbone timm / "
                                "hf-hub:ORG/NAME with --model, or --backbone none")
    meta = read_metadata(backbone)
    if meta["kind"] != "model":
        raise ValueError(f"{backbone} holds a {meta['kind']!r} checkpoint; the study needs a whole pretrained model "
                         "(kind 'model', written by `vitlab fit` without a peft method)")
    if model and model != meta["model_name"]:
        raise ValueError(f"--model {model} differs from the backbone's architecture {meta['model_name']}; drop --model")
    kwargs = {k: v for k, v in meta.get("model_kwargs", {}).items() if k != "num_classes"}
    size = img_size or kwargs.pop("img_size", None) or meta.get("extra", {}).get("data", {}).get("img_size", 32)
    kwargs.pop("img_size", None)
    return {"name": meta["model_name"], "kwargs": {**kwargs, **model_kwargs}, "pretrained": str(backbone)}, size


def _is_vitlab_file(path: str | Path) -> bool:
    from vitlab.checkpoint import has_vitlab_metadata

    return Path(path).suffix == ".safetensors" and has_vitlab_metadata(path)


def plan_study(backbone: str | None = DEFAULT_BACKBONE, data: str = "fashion_mnist", *, model: str | None = None,
               model_kwargs: Mapping[str, Any] | None = None, root: str | None = None, img_size: int | None = None,
               methods: str | Sequence[str] | None = None, method_options: Mapping[str, Any] | None = None,
               shots: str | Sequence[int] = (5, 20), seeds: str | Sequence[int] = (0, 1, 2), full_data: bool = True,
               steps: int = 200, full_epochs: int = 1, batch_size: int = 128, accelerator: str = "auto",
               output_dir: str = "runs/peft_study") -> list[dict[str, Any]]:
    """One spec per run: ``{"config": RunConfig fields, "few_shot": {"k", "seed"} | None, "method", "shots", "seed"}``.

    Few-shot runs train ``steps`` optimizer steps on ``k x classes`` images (batch ``min(batch_size, k x classes)``);
    full-data runs train ``full_epochs`` epochs. Warm-up is the first 10 % of the steps; ``optim.lr`` is the method's
    (``STUDY_METHODS``). Arguments mirror ``vitlab peft-study --help``.

    Example:
        >>> specs = plan_study("none", "digits", model="vit_vitlab_tiny_patch4_32", methods="linear", shots="5",
        ...                    seeds="0")
        >>> [(s["config"]["name"], s["config"]["trainer"]["max_steps"]) for s in specs]
        [('linear-k5-s0', 200), ('linear-full-s0', -1)]
    """
    from vitlab.data import build_datamodule
    from vitlab.peft.methods import PEFT_METHODS
    from vitlab.peft.study import STUDY_METHODS, study_run_configs

    if methods is None:
        methods = list(STUDY_METHODS)
    names = [m.strip() for m in methods.split(",") if m.strip()] if isinstance(methods, str) else list(methods)
    unknown = [m for m in names if m not in STUDY_METHODS and m not in PEFT_METHODS]
    if not names or unknown:
        valid = sorted(set(STUDY_METHODS) | set(PEFT_METHODS))
        raise ValueError(f"unknown or missing method(s) {unknown} in --methods; choose from {valid}")
    shots, seeds = _int_list(shots, "--shots"), _int_list(seeds, "--seeds")
    if any(k < 1 for k in shots) or (not shots and not full_data) or (shots and not seeds):
        raise ValueError(f"need --shots >= 1 with at least one --seeds value, or --full_data true; got shots={shots} "
                         f"seeds={seeds}")
    if steps < 1 or full_epochs < 1 or batch_size < 1:
        raise ValueError(f"--steps, --full_epochs and --batch_size must be >= 1, got {steps}, {full_epochs}, "
                         f"{batch_size}")
    extra = dict(method_options or {})
    if set(extra) - set(names):
        raise ValueError(f"--method_options names {sorted(set(extra) - set(names))}, which are not in --methods "
                         f"{names}: add them to --methods or drop their options")
    specs_by_method = {}
    for name in names:
        spec = dict(STUDY_METHODS.get(name, {"options": {}, "lr": 3e-3}))
        spec["options"] = {**spec["options"], **extra.get(name, {})}
        specs_by_method[name] = spec
    model_section, size = backbone_model(backbone, model, model_kwargs or {}, img_size)
    backbone_sha256 = None
    if model_section["pretrained"]:
        from vitlab.checkpoint import resolve_pretrained

        backbone_sha256 = resolve_pretrained(model_section["pretrained"], model_section["name"]).describe()["sha256"]
    num_classes = build_datamodule(data, root=root, img_size=size).num_classes
    base_trainer = {"accelerator": accelerator, "devices": 1, "limit_val_batches": 0, "num_sanity_val_steps": 0,
                    "enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 1}
    runs = study_run_configs(model_section, {"name": data, "root": root, "img_size": size, "batch_size": batch_size},
                             methods=specs_by_method, shots=shots, seeds=seeds, full_seed=seeds[0] if seeds else 0)
    specs = []
    for run in runs:
        few_shot = run["data"].pop("few_shot")
        if few_shot is None and not full_data:
            continue
        if few_shot is None:
            epochs, max_steps = full_epochs, -1
        else:
            n_train = few_shot["k"] * num_classes
            run["data"]["batch_size"] = min(batch_size, n_train)
            epochs, max_steps = math.ceil(steps / math.ceil(n_train / run["data"]["batch_size"])), steps
        run["trainer"] = {**base_trainer, "max_epochs": epochs, "max_steps": max_steps}
        run["optim"]["warmup_epochs"] = round(0.1 * epochs, 6)
        run["output_dir"] = str(Path(output_dir) / "runs")
        specs.append({"config": run, "few_shot": few_shot, "method": run["peft"]["method"],
                      "shots": "full" if few_shot is None else few_shot["k"], "seed": run["seed"],
                      "backbone_sha256": backbone_sha256})
    return specs


def read_result_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``results.csv`` written by `run_study` (numbers parsed; ``[]`` when the file does not exist)."""
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            row = {k: v for k, v in row.items() if v not in (None, "")}
            row["shots"] = row["shots"] if row["shots"] == "full" else int(row["shots"])
            row.update({k: int(row[k]) for k in _INT_COLUMNS if k in row})
            row.update({k: float(row[k]) for k in _FLOAT_COLUMNS if k in row})
            rows.append(row)
    return rows


def cached_rows(rows: list[dict[str, Any]], specs: list[dict[str, Any]], runs_dir: Path,
                reuse_cached_as_is: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split ``specs`` into ``(rows to keep, specs to run)``: a run's row is reused only when its ``config_hash``
    equals the hash of the spec asked for now (or ``reuse_cached_as_is``); a row made by another configuration is
    dropped and its run redone, with the differing keys printed (from the run folder's ``study_spec.json``).
    """
    wanted = {spec["config"]["name"]: spec for spec in specs}
    reusable = {row["run"] for row in rows if row["run"] in wanted
                and (reuse_cached_as_is or row.get("config_hash") == config_hash(wanted[row["run"]]))}
    keep = [row for row in rows if row["run"] not in wanted or row["run"] in reusable]  # file order kept
    todo = [spec for name, spec in wanted.items() if name not in reusable]
    for name in sorted({row["run"] for row in rows} & set(wanted) - reusable):
        saved = runs_dir / name / _SPEC
        changed = differing_keys(json.loads(saved.read_text()), wanted[name]) if saved.is_file() else ["no record"]
        print(f"{name}: cached result made by another configuration ({'; '.join(changed[:4])}), run again "
              "(--reuse_cached_as_is true keeps it)", flush=True)
    return keep, todo


def launch_run(spec: dict[str, Any], run_dir: Path, keep_checkpoints: bool) -> dict[str, Any]:
    """Run one spec in a child process; returns its result row (raises ``RuntimeError`` if the child failed).

    A spec is what `plan_study` returns; its ``config`` may also hold a ``negatives`` section (``vitlab study``)."""
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted run starts over
    run_dir.mkdir(parents=True)
    (run_dir / _SPEC).write_text(json.dumps(spec, indent=2) + "\n")
    start = time.perf_counter()
    with (run_dir / "log.txt").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "vitlab.cli.peft_study", str(run_dir / _SPEC)],
                                stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak resident memory
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not (run_dir / _RESULT).is_file():
        tail = (run_dir / "log.txt").read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"exit status {proc.returncode}: {tail[0]} (log: {run_dir / 'log.txt'})")
    if not keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    result = json.loads((run_dir / _RESULT).read_text())
    peak_mb = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)  # bytes on macOS, KiB on Linux
    row = {"run": spec["config"]["name"], "method": spec["method"], "shots": spec["shots"], "seed": spec["seed"],
           **result, "peak_memory_mb": round(peak_mb, 1), "wall_time_s": round(time.perf_counter() - start, 2),
           "config_hash": config_hash(spec)}
    return row


def run_study(output_dir: str = "runs/peft_study", keep_checkpoints: bool = False, reuse_cached_as_is: bool = False,
              **options: Any) -> dict[str, Any]:
    """Run (or resume) a study; returns ``{"results", "summary", "plot"}`` paths and the result ``rows``.

    Args:
        output_dir: the study folder (see the module docstring for its contents).
        keep_checkpoints: keep each run's ``checkpoints/last.ckpt`` (deleted by default to save disk).
        reuse_cached_as_is: reuse every run already in ``results.csv`` even when another configuration made it
            (by default such a run is redone; see `cached_rows`).
        **options: `plan_study` arguments (backbone, data, methods, shots, seeds, steps, ...).

    Raises:
        ValueError: bad options, or some runs failed (the others are kept; rerun the command to retry them).
    """
    from vitlab.peft.study import write_csv

    specs = plan_study(output_dir=output_dir, **options)
    out = Path(output_dir)
    results_path = out / "results.csv"
    rows, todo = cached_rows(read_result_rows(results_path), specs, out / "runs", reuse_cached_as_is)
    failed = []
    for spec in specs:
        if spec not in todo:
            print(f"{spec['config']['name']}: already in {results_path} (same configuration), skipped", flush=True)
    with sweep_progress(len(todo), "peft-study") as bar:
        for i, spec in enumerate(todo, 1):
            name = spec["config"]["name"]
            try:
                row = launch_run(spec, Path(spec["config"]["output_dir"]) / name, keep_checkpoints)
            except RuntimeError as err:
                failed.append(name)
                bar.write(f"[{i}/{len(todo)}] {name}: FAILED, {err}")
                bar.update(1)
                continue
            rows = [r for r in rows if r["run"] != name] + [row]
            write_csv(rows, results_path)
            bar.write(f"[{i}/{len(todo)}] {name}: accuracy {row['accuracy']:.4f}, {row['trainable_params']:,} "
                      f"trainable parameters, {row['train_time_s']:.1f} s, peak {row['peak_memory_mb']:.0f} MB")
            bar.update(1)
    paths: dict[str, Any] = {"results": results_path, "rows": rows}
    if rows:
        from vitlab.peft.study import plot_accuracy_vs_params, summarize_study

        summary = summarize_study(rows)
        paths["summary"] = write_csv(summary, out / "summary.csv")
        title = f"{specs[0]['config']['model']['name']} on {specs[0]['config']['data']['name']}"
        paths["plot"] = plot_accuracy_vs_params(summary, out / "accuracy_vs_params.png", title=title)
        print(f"\n{'method':<12} {'shots':>5} {'accuracy (%)':>14} {'trainable':>11} {'train s':>8} {'peak MB':>8}")
        for s in summary:
            acc = f"{100 * s['accuracy_mean']:.2f} ± {100 * s['accuracy_std']:.2f}"
            print(f"{s['method']:<12} {s['shots']!s:>5} {acc:>14} {s['trainable_params']:>11,} "
                  f"{s.get('train_time_s', float('nan')):>8.1f} {s.get('peak_memory_mb', float('nan')):>8.0f}")
        print(f"wrote {results_path}, {paths['summary']}, {paths['plot']}")
    if failed:
        raise ValueError(f"{len(failed)} run(s) failed: {failed}; see their log.txt, then rerun the same command "
                         "(finished runs are skipped)")
    return paths


def run_peft_study(ns: Namespace) -> dict[str, Any]:
    """The ``vitlab peft-study`` subcommand: `run_study` in ``<output_dir>/<name>`` with the parsed options."""
    options = ns.as_dict()
    name, parent = options.pop("name"), options.pop("output_dir")
    if not name or Path(name).name != name or name in (".", ".."):
        raise ConfigError(f"--name must be a plain folder name (the study folder is <output_dir>/<name>), got {name!r}")
    return run_study(output_dir=str(Path(parent) / name), **options)


def _child(spec_path: str) -> int:
    """Child process: one `fit` run from a spec file; writes ``study_result.json`` beside it."""
    import lightning as L
    import torch
    from torch.utils.data import Subset

    from vitlab.peft.methods import count_parameters
    from vitlab.peft.study import few_shot_indices
    from vitlab.train import fit
    from vitlab.train.config import DataConfig, ModelConfig, NegativesConfig, OptimConfig, PeftConfig, RunConfig

    spec = json.loads(Path(spec_path).read_text())
    raw = spec["config"]
    config = RunConfig(name=raw["name"], seed=raw["seed"], output_dir=raw["output_dir"], trainer=raw["trainer"],
                       model=ModelConfig(**raw["model"]), data=DataConfig(**raw["data"]),
                       optim=OptimConfig(**raw["optim"]), peft=PeftConfig(**raw["peft"]),
                       negatives=NegativesConfig(**raw.get("negatives", {})))

    class StudyCallback(L.Callback):
        """Swaps in the few-shot subset after the datamodule's setup; counts parameters and times training."""

        def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
            dm = trainer.datamodule
            if spec["few_shot"] and not isinstance(dm.train_dataset, Subset):
                dataset = dm.train_dataset
                labels = dataset.labels if hasattr(dataset, "labels") else [s[1] for s in dataset.samples]
                picked = few_shot_indices(labels, spec["few_shot"]["k"], spec["few_shot"]["seed"])
                dm.train_dataset = Subset(dataset, picked.tolist())
            self.train_size = len(dm.train_dataset)

        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.params, self.start = count_parameters(pl_module.model), time.perf_counter()

        def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.train_time_s, self.steps = time.perf_counter() - self.start, trainer.global_step

    callback = StudyCallback()
    result = fit(config, callbacks=[callback])
    out = {"accuracy": result.metrics["test/acc"], "trainable_params": callback.params["trainable"],
           "adaptation_params": callback.params["adaptation"], "train_size": callback.train_size,
           "steps": callback.steps, "train_time_s": round(callback.train_time_s, 3)}
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        out["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    (Path(spec_path).parent / _RESULT).write_text(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
