"""One fine-tuning run per process: the launcher of ``vitlab study`` and ``vitlab peft-study``, and its cache.

`launch_run` writes the run's spec (`vitlab.study.plan`) as ``study_spec.json`` into the run folder and trains it
in a child Python process (``python -m vitlab.study.launch <spec>``, a `vitlab.train.fit` run), so its peak memory
is its own; the child writes ``study_result.json``, the launcher returns the result row. `cached_rows` decides
which rows of a results table are reused: those made by the same spec (`spec_hash`: its ``config_hash`` without the
folder it was written to, so a moved study or rows merged from another study's table stay reusable).
Needs ``os.wait4`` (Linux, macOS).

Usage (with a spec of `vitlab.study.plan.plan_study`)::

    row = launch_run(spec, Path(spec["config"]["output_dir"]) / spec["config"]["name"], keep_checkpoints=False)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vitlab.study.cache import config_hash, differing_keys

__all__ = ["cached_rows", "launch_run", "launch_runs", "spec_hash"]

_SPEC, _RESULT = "study_spec.json", "study_result.json"


def _without_folder(spec: dict[str, Any]) -> dict[str, Any]:
    config = spec.get("config")
    if not isinstance(config, dict):
        return spec
    return {**spec, "config": {k: v for k, v in config.items() if k != "output_dir"}}


def spec_hash(spec: dict[str, Any]) -> str:
    """The ``config_hash`` of a run's spec without its ``config.output_dir`` (where a run is written does not change
    what it computes).

    Example:
        >>> a = {"method": "lora", "config": {"name": "r", "output_dir": "runs/a/runs", "seed": 0}}
        >>> spec_hash(a) == spec_hash({**a, "config": {**a["config"], "output_dir": "elsewhere"}})
        True
    """
    return config_hash(_without_folder(spec))


def cached_rows(rows: list[dict[str, Any]], specs: list[dict[str, Any]], runs_dir: Path,
                reuse_cached_as_is: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split ``specs`` into ``(rows to keep, specs to run)``: a run's row is reused only when its ``config_hash``
    equals the `spec_hash` of the spec asked for now (or the spec's full ``config_hash``, output folder included,
    which earlier versions recorded; or ``reuse_cached_as_is``); a row made by another configuration is dropped and
    its run redone, with the differing keys printed (from the run folder's ``study_spec.json``).
    """
    wanted = {spec["config"]["name"]: spec for spec in specs}
    reusable = {row["run"] for row in rows if row["run"] in wanted
                and (reuse_cached_as_is or row.get("config_hash") in (spec_hash(wanted[row["run"]]),
                                                                      config_hash(wanted[row["run"]])))}
    keep = [row for row in rows if row["run"] not in wanted or row["run"] in reusable]  # file order kept
    todo = [spec for name, spec in wanted.items() if name not in reusable]
    for name in sorted({row["run"] for row in rows} & set(wanted) - reusable):
        saved = runs_dir / name / _SPEC
        changed = (differing_keys(_without_folder(json.loads(saved.read_text())), _without_folder(wanted[name]))
                   if saved.is_file() else ["no record"])
        print(f"{name}: cached result made by another configuration ({'; '.join(changed[:4])}), run again "
              "(--reuse_cached_as_is true keeps it)", flush=True)
    return keep, todo


def launch_run(spec: dict[str, Any], run_dir: Path, keep_checkpoints: bool) -> dict[str, Any]:
    """Run one spec in a child process; returns its result row (raises ``RuntimeError`` if the child failed).

    A spec is what `vitlab.study.plan.plan_study` returns; its ``config`` may also hold a ``negatives`` section
    (``vitlab study``). The row holds the spec's ``method, shots, seed``, the child's result (``accuracy``,
    ``trainable_params``, ``adaptation_params``, ``train_size``, ``steps``, ``train_time_s``), its peak memory
    ``peak_memory_mb`` (the child's ``ru_maxrss`` from ``os.wait4``), ``wall_time_s`` and the spec's ``config_hash``.
    """
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted run starts over
    run_dir.mkdir(parents=True)
    (run_dir / _SPEC).write_text(json.dumps(spec, indent=2) + "\n")
    start = time.perf_counter()
    with (run_dir / "log.txt").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "vitlab.study.launch", str(run_dir / _SPEC)],
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
           "config_hash": spec_hash(spec)}
    row.update({key: spec[key] for key in ("backbone", "negatives") if key in spec})  # a `vitlab study` run
    return row


def launch_runs(todo: list[dict[str, Any]], rows: list[dict[str, Any]], results: Path, desc: str,
                keep_checkpoints: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """`launch_run` each spec of ``todo`` in turn under a progress bar, rewriting the ``results`` table after each.

    Args:
        todo: the specs to run (`cached_rows`' second value).
        rows: the table's rows so far (`cached_rows`' first value); a run's new row replaces its old one.
        results: the CSV to rewrite (`vitlab.study.results.write_csv`).
        desc: the progress bar's label.
        keep_checkpoints: keep each run's ``checkpoints/`` (deleted by default to save disk).

    Returns:
        ``(rows, names of the runs that failed)``; a failed run is reported and skipped, the others still run.
    """
    from vitlab.study.progress import sweep_progress
    from vitlab.study.results import write_csv

    failed = []
    with sweep_progress(len(todo), desc) as bar:
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
            write_csv(rows, results)
            bar.write(f"[{i}/{len(todo)}] {name}: accuracy {row['accuracy']:.4f}, {row['trainable_params']:,} "
                      f"trainable parameters, {row['train_time_s']:.1f} s training, "
                      f"peak {row['peak_memory_mb']:.0f} MB")
            bar.update(1)
    return rows, failed


def _child(spec_path: str) -> int:
    """Child process: one `fit` run from a spec file (a few-shot run's subset is its ``data.options.few_shot``);
    writes ``study_result.json`` beside it."""
    import lightning as L
    import torch

    from vitlab.peft.methods import count_parameters
    from vitlab.train import fit
    from vitlab.train.config import DataConfig, ModelConfig, NegativesConfig, OptimConfig, PeftConfig, RunConfig

    spec = json.loads(Path(spec_path).read_text())
    raw = spec["config"]
    config = RunConfig(name=raw["name"], seed=raw["seed"], output_dir=raw["output_dir"], trainer=raw["trainer"],
                       model=ModelConfig(**raw["model"]), data=DataConfig(**raw["data"]),
                       optim=OptimConfig(**raw["optim"]), peft=PeftConfig(**raw["peft"]),
                       negatives=NegativesConfig(**raw.get("negatives", {})))

    class StudyCallback(L.Callback):
        """Counts the training images and parameters and times training."""

        def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
            self.train_size = len(trainer.datamodule.train_dataset)

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
