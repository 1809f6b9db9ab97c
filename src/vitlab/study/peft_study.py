"""The ``vitlab peft-study`` driver: every fine-tuning method on one pretrained backbone and dataset, one run per
process.

By default the small ViT pretrained on MNIST (``vitlab fit --config configs/pretrain_vit_mnist.yaml`` writes
``runs/pretrain_vit_mnist``) is fine-tuned on Fashion-MNIST with every method of
`vitlab.study.plan.STUDY_METHODS`: few-shot k ∈ {5, 20} examples per class × seeds {0, 1, 2}, plus the full training
set with seed 0. Each run is a `vitlab.train.fit` run in its own Python process, so its peak memory (the child's
``ru_maxrss`` from ``os.wait4``) is its own (`vitlab.study.launch`). Few-shot subsets are the datamodule option
``data.options.few_shot`` (`vitlab.data.few_shot_indices`, from the training split after the validation split is
carved); validation is off and the accuracy is top-1 on the official test set.

Output folder ``<output_dir>/<name>`` (``--output_dir`` is the parent folder, as for ``vitlab fit`` and ``vitlab
study``; default ``runs/peft_study``):

- ``runs/<method>-k<k>-s<seed>/`` and ``runs/<method>-full-s<seed>/``: each run's folder; ``log.txt`` is its output;
- ``results.csv``: one row per run (run, method, shots, seed, accuracy, trainable_params, adaptation_params,
  train_size, steps, train_time_s, peak_memory_mb, wall_time_s, config_hash), rewritten after every run;
- ``summary.csv``: per (method, shots) the accuracy mean ± sample std over seeds
  (`vitlab.study.results.summarize_study`), means of time and memory;
- ``accuracy_vs_params.png``: accuracy against trainable parameters (log x), one panel per shots setting.

Resumable: the same command again skips every run that has a row in ``results.csv`` made by the same configuration
(the row's ``config_hash``: the run's spec and the backbone's weights); a run whose configuration changed is redone
(``--reuse_cached_as_is true`` keeps it). Rows of runs not asked for now are kept and the summary covers all of them,
so use another ``--name`` when you change the budget. Needs ``os.wait4`` (Linux, macOS).

Usage (the library call behind ``vitlab peft-study --methods '[linear, kadaptation]' --shots '[5]' --seeds '[0]'
--full_data false --steps 50``)::

    run_peft_study("runs/peft_study", methods=["linear", "kadaptation"], shots=[5], seeds=[0], full_data=False,
                   steps=50)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vitlab.errors import ConfigError
from vitlab.study.launch import cached_rows, launch_runs
from vitlab.study.plan import plan_study
from vitlab.study.plots import plot_summary_accuracy_vs_params
from vitlab.study.results import read_result_rows, summarize_study, write_csv

__all__ = ["run_peft_study"]


def run_peft_study(output_dir: str = "runs/peft_study", keep_checkpoints: bool = False,
                   reuse_cached_as_is: bool = False, **options: Any) -> dict[str, Any]:
    """Run (or resume) a peft-study; returns ``{"results", "summary", "plot"}`` paths and the result ``rows``.

    Args:
        output_dir: the study folder (see the module docstring for its contents).
        keep_checkpoints: keep each run's ``checkpoints/last.ckpt`` (deleted by default to save disk).
        reuse_cached_as_is: reuse every run already in ``results.csv`` even when another configuration made it
            (by default such a run is redone; see `vitlab.study.launch.cached_rows`).
        **options: `vitlab.study.plan.plan_study` arguments (backbone, data, methods, shots, seeds, steps, ...).

    Raises:
        ValueError: bad options, or some runs failed (the others are kept; rerun the command to retry them).
    """
    if not isinstance(output_dir, str | os.PathLike) or not str(output_dir).strip():
        raise ConfigError(f"output_dir must be the study folder (a non-empty str or pathlib.Path, e.g. "
                          f"'runs/peft_study'), got {output_dir!r}")
    for flag, value in (("keep_checkpoints", keep_checkpoints), ("reuse_cached_as_is", reuse_cached_as_is)):
        if not isinstance(value, bool):  # a truthy string ('false') was taken as True
            raise ConfigError(f"{flag} must be True or False, got {value!r}")
    output_dir = os.path.expanduser(output_dir)  # `~/runs`: a folder named `~` was made
    specs = plan_study(output_dir=output_dir, **options)
    out = Path(output_dir)
    results_path = out / "results.csv"
    rows, todo = cached_rows(read_result_rows(results_path), specs, out / "runs", reuse_cached_as_is)
    for spec in specs:
        if spec not in todo:
            print(f"{spec['config']['name']}: already in {results_path} (same configuration), skipped", flush=True)
    rows, failed = launch_runs(todo, rows, results_path, "peft-study", keep_checkpoints)
    paths: dict[str, Any] = {"results": results_path, "rows": rows}
    if rows:
        summary = summarize_study(rows)
        paths["summary"] = write_csv(summary, out / "summary.csv")
        title = f"{specs[0]['config']['model']['name']} on {specs[0]['config']['data']['name']}"
        paths["plot"] = plot_summary_accuracy_vs_params(summary, out / "accuracy_vs_params.png", title=title)
        print(f"\n{'method':<12} {'shots':>5} {'accuracy (%)':>16} {'trainable':>11} {'train s':>8} {'peak MB':>8}")
        for s in summary:
            acc = f"{100 * s['accuracy_mean']:.2f} " + (
                "(1 seed)" if s["accuracy_std"] is None else f"± {100 * s['accuracy_std']:.2f}")
            print(f"{s['method']:<12} {s['shots']!s:>5} {acc:>16} {s['trainable_params']:>11,} "
                  f"{s.get('train_time_s', float('nan')):>8.1f} {s.get('peak_memory_mb', float('nan')):>8.0f}")
        print(f"wrote {results_path}, {paths['summary']}, {paths['plot']}")
    if failed:
        raise ValueError(f"{len(failed)} run(s) failed: {failed}; see their log.txt, then rerun the same command "
                         "(finished runs are skipped)")
    return paths
