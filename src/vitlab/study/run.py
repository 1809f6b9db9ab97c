"""A whole study (``vitlab study``, ``vitlab demo``): Inception Transformer + negative augmentation + PEFT, end to end.

Stages, each cached so that a rerun of the same command resumes where it stopped:

1. ``pretrain``: each backbone the study uses is trained by its `vitlab fit` config (MNIST), or its cached run
   folder (``model.safetensors`` present) is used, only if that same config made it (else refused with the differing
   keys named); an interrupted pretraining resumes from ``last.ckpt``;
2. ``finetune``: the grid of `vitlab.study.config.FinetuneSpec` and the ``extra_runs`` (`vitlab.study.plan`), one
   process per run (`vitlab.study.launch.launch_run`), rows in ``finetune/results.csv``; finished runs made by the
   same configuration are skipped, others redone;
3. ``evaluate``: for every run, generated-corruption accuracy (`vitlab.eval.robustness.robustness_report`,
   ``evaluation.corruption_n`` test images, the set generated once) and negative-view accuracy
   (`vitlab.eval.diagnostics.diagnose_checkpoint`); each writes its JSON into the run folder and is skipped when
   present;
4. ``intrinsic_dim``: the d90 sweep (and with ``per_module`` the per-module sweep) of
   `vitlab.study.intrinsic.run_intrinsic_dim` on each listed backbone, fine-tuning from the pretrained weights;
   folders ``intrinsic/<backbone>/``;
5. ``report``: ``results.csv``, ``robustness.csv``, ``study.json``, ``report.md``, ``report.html`` and ``plots/``
   (`vitlab.study.report`); ``--readme README.md`` also rewrites the README's Results section from it and
   copies the report, its plots and tables to ``docs/study/`` beside the README (run folders are not versioned).

Before starting, a measured time estimate per stage is printed (`vitlab.study.estimate`); ``--estimate_only``
stops there. Every cached stage is keyed on the configuration that made it (`vitlab.study.cache`);
``--reuse_cached_as_is true`` uses it regardless. A GPU is used when present (``accelerator: auto``). Everything
lands in ``<output_dir>/<name>/``.

Usage (the library call behind ``vitlab study --config configs/study.yaml``, about an hour on 2 CPU cores)::

    report = run_study(load_study_config("configs/study.yaml"), command="vitlab study --config configs/study.yaml")
    report["markdown"]  # runs/study/report.md
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from vitlab.study.config import StudyConfig

__all__ = ["run_study"]

#: What a report says for its command when `run_study` was called from Python with ``command=""``.
PYTHON_COMMAND = "(run from Python: vitlab.study.run_study)"


def _hardware(accelerator: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    count = torch.get_num_threads()
    threads = f"{count} CPU thread{'s' if count != 1 else ''}"
    if accelerator != "cpu" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} GPU, {threads} ({cpu})"
    return f"{threads} ({cpu}), no GPU used"


#: The stages that measure what the report shows (``report`` only rewrites it from their files).
MEASURING_STAGES = ("pretrain", "finetune", "evaluate", "intrinsic_dim")

#: What each stage records of the process that ran it (``study.json``'s top-level fields of the same names).
PROVENANCE = ("hardware", "vitlab_version", "torch_version")


def _distinct(values: list[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


class _Stages:
    """Times each stage and records it in ``study.json`` (written after every stage, so a crash keeps the record).

    Each measuring stage records the hardware and versions of the processes that ran it (a list: a stage resumed
    elsewhere names both); ``study.json``'s ``hardware`` / ``vitlab_version`` / ``torch_version`` name those of the
    measuring stages, joined with "; " where they differ, so a rerun that only rewrites the report (every measuring
    stage cached) keeps the record of the run that measured the numbers. Records of earlier versions, without
    per-stage fields, keep their top-level ones for their cached stages. ``wall_time_s`` adds up the invocations
    that measured something; one that only rewrote the report adds nothing.
    """

    def __init__(self, config: StudyConfig, command: str, estimates: list[dict[str, Any]]) -> None:
        import torch

        self.path = config.folder / "study.json"
        old = json.loads(self.path.read_text()) if self.path.is_file() else {}
        earlier = {s["stage"]: s for s in old.get("stages", []) if isinstance(s, dict) and "stage" in s}
        self.current = {"hardware": _hardware(config.accelerator), "vitlab_version": _version(),
                        "torch_version": torch.__version__}
        # a record of an earlier version has only the top-level fields: they are what measured its stages
        self.old = {key: old[key] for key in PROVENANCE if isinstance(old.get(key), str)}

        def stage(e: dict[str, Any]) -> dict[str, Any]:
            before = earlier.get(e["stage"], {})
            entry = {**e, "measured_s": before.get("measured_s"), "status": "pending"}
            if e["stage"] in MEASURING_STAGES and entry["measured_s"] is not None:
                entry.update({key: before[key] if isinstance(before.get(key), list) else _distinct([self.old.get(key)])
                              for key in PROVENANCE})
            return entry

        self.record: dict[str, Any] = {
            "name": config.name, "command": command,
            "started": old.get("started", datetime.now(UTC).isoformat(timespec="seconds")),
            **self.current, "config": asdict(config),
            # measured_s adds up the time every invocation of this study spent on the stage: a cached stage keeps
            # what it took when it ran, a resumed one adds this invocation's time to the earlier ones'
            "stages": [stage(e) for e in estimates],
        }
        self.earlier_s = float(old.get("wall_time_s") or 0.0)
        self.measured = False  # whether this invocation ran a measuring stage (else its time is not the study's)
        self.start = time.perf_counter()

    def run(self, stage: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        print(f"\n== {stage} ==", flush=True)
        start = time.perf_counter()
        result = function(*args, **kwargs)
        entry = next(e for e in self.record["stages"] if e["stage"] == stage)
        if entry["estimated_s"] == 0.0 and entry["measured_s"] is not None:
            entry["status"] = "cached"
        elif stage in MEASURING_STAGES:
            earlier = entry["measured_s"] or 0.0
            entry.update(measured_s=round(earlier + time.perf_counter() - start, 1), status="done",
                         **{key: _distinct([*entry.get(key, []), self.current[key]]) for key in PROVENANCE})
            self.measured = True
        else:  # the report is rewritten whole each time: its time is that of the latest writing
            entry.update(measured_s=round(time.perf_counter() - start, 1), status="done")
        self.save()
        return result

    def save(self, **fields: Any) -> None:
        measuring = [e for e in self.record["stages"] if e["stage"] in MEASURING_STAGES]
        for key in PROVENANCE:  # before any stage ran: this process, which is about to measure
            values = _distinct([v for e in measuring for v in e.get(key, [])])
            self.record[key] = "; ".join(values) if values else self.old.get(key, self.current[key])
        # wall time of every invocation of this study that measured something (a resumed study adds up its parts)
        now = time.perf_counter() - self.start if self.measured else 0.0
        self.record.update(fields, wall_time_s=round(self.earlier_s + now, 1))
        self.path.write_text(json.dumps(self.record, indent=2, default=str) + "\n")


def _version() -> str:
    from vitlab.version import __version__

    return __version__


def run_study(config: StudyConfig, command: str, estimate_only: bool = False,
                     readme: str | None = None, reuse_cached_as_is: bool = False) -> dict[str, Any]:
    """Run (or resume) a study; returns the report paths (``{"markdown", "html", "plots", "rows"}``).

    Args:
        config: the study (`vitlab.study.config.load_study_config`).
        command: the command line, recorded in the report (``""``: the report says it ran from Python).
        estimate_only: print the per-stage time estimates and return ``{"estimates": [...]}``, writing nothing.
        readme: a README whose ``<!-- study-results:start/end -->`` section is rewritten from the report.
        reuse_cached_as_is: reuse every cached stage even when another configuration made it (`vitlab.study.cache`).
    """
    from vitlab.study.estimate import estimate_study, format_estimates
    from vitlab.study.plan import finetune_specs
    from vitlab.study.report import check_readme, write_study_report
    from vitlab.study.stages import evaluate_runs, pretrain_backbones, run_finetune, run_intrinsic, write_tables
    from vitlab.train.config import check_accelerator

    if not isinstance(command, str):
        raise TypeError(f"command must be the command line that reproduces the study (a str, '' from Python), got "
                        f"{command!r}")
    for flag, value in (("estimate_only", estimate_only), ("reuse_cached_as_is", reuse_cached_as_is)):
        if not isinstance(value, bool):  # a truthy string ('false') was taken as True
            raise TypeError(f"{flag} must be True or False, got {value!r}")
    check_accelerator(config.accelerator)
    if readme:
        check_readme(readme)  # now, not after the whole study
    folder = config.folder
    estimates = estimate_study(config)  # writes nothing: an estimate leaves no study folder behind
    print(f"study {folder}: measured time estimate per stage (cached work counts zero)\n"
          f"{format_estimates(estimates)}\n{'total':<14} {'':>4} {sum(e['estimated_s'] for e in estimates) / 60:>7.1f}"
          " min", flush=True)
    if estimate_only:
        return {"estimates": estimates}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study_config.yaml").write_text(yaml.safe_dump(asdict(config), sort_keys=False))
    stages = _Stages(config, command.strip() or PYTHON_COMMAND, estimates)
    stages.save()
    weights = stages.run("pretrain", pretrain_backbones, config, reuse_cached_as_is)
    specs = finetune_specs(config, weights)
    rows = stages.run("finetune", run_finetune, config, specs, reuse_cached_as_is)
    stages.run("evaluate", evaluate_runs, config, rows)
    stages.run("intrinsic_dim", run_intrinsic, config, weights, reuse_cached_as_is)
    extra = write_tables(config, rows, weights)
    stages.save(**extra)
    report = stages.run("report", write_study_report, folder)
    stages.save(**extra)
    report = write_study_report(folder)  # again, so the report's stage table includes the report stage itself
    print(f"\nreport: {report['markdown']} and {report['html']}")
    if readme:
        _publish(folder, Path(readme))
    return report


def _publish(folder: Path, readme: Path) -> None:
    """Copy the report and its plots to ``docs/study/`` beside the README (run folders are not versioned) and
    rewrite the README's Results section, its links pointing at the copy."""
    import shutil

    from vitlab.study.report import results_markdown, update_readme

    docs = readme.parent / "docs" / "study"
    if docs.exists():
        shutil.rmtree(docs)
    shutil.copytree(folder / "plots", docs / "plots")
    for name in ("report.md", "report.html", "results.csv", "robustness.csv", "study.json"):
        shutil.copy2(folder / name, docs / name)
    relative = docs.relative_to(readme.parent).as_posix()
    snippet = results_markdown(folder).replace(f"{folder.as_posix()}/plots/", f"{relative}/plots/")
    snippet += (f"\n\nFull report: [{relative}/report.md]({relative}/report.md) (self-contained HTML: "
                f"`{relative}/report.html`), per-run numbers in `{relative}/results.csv`.")
    update_readme(readme, snippet)
    print(f"README results section rewritten: {readme} (report copied to {docs})")
