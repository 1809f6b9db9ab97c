"""vitlab.study: studies that compose training and evaluation, planned, run, cached and reported.

Layout (plan -> stages -> results -> report):

- `vitlab.study.config`: ``StudyConfig`` and `load_study_config` (a study YAML; ``configs/`` holds the packaged demo);
- `vitlab.study.plan`: fine-tuning run specs and names (the study's grid, ``vitlab peft-study``'s methods);
- `vitlab.study.launch`: one run per child process, and which cached result rows are reused;
- `vitlab.study.stages`: pretrain / finetune / evaluate / intrinsic-dimension stages and the study's tables;
- `vitlab.study.intrinsic`: the d90 sweep driver (``vitlab intrinsic-dim``) and its two training engines;
- `vitlab.study.peft_study`: the ``vitlab peft-study`` driver;
- `vitlab.study.estimate`: measured time estimates per stage;
- `vitlab.study.results`: writing and reading the tables, `aggregate_seeds` (mean ± std and 95 % interval over seeds);
- `vitlab.study.plots` and `vitlab.study.report`: the report's plots, ``report.md`` / ``report.html``;
- `vitlab.study.run`: `run_study`, the whole study stage by stage;
- `vitlab.study.cache` and `vitlab.study.progress`: cache keys of finished work, sweep progress bars.

The names below are imported on first use (``import vitlab.study`` loads neither torch nor Lightning).

Example:
    >>> from vitlab.study import study_config_from_dict
    >>> study_config_from_dict({"backbones": {"vit": {"pretrain": "configs/pretrain_vit_mnist.yaml"}}}).name
    'study'
"""

from importlib import import_module
from typing import Any

_HOMES = {
    "StudyConfig": "config", "load_study_config": "config", "study_config_from_dict": "config",
    "plan_study": "plan", "run_peft_study": "peft_study", "run_intrinsic_dim": "intrinsic",
    "aggregate_seeds": "results", "load_study": "results", "write_study_report": "report",
    "results_markdown": "report", "update_readme": "report", "run_study": "run",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'vitlab.study' has no attribute {name!r}")
    return getattr(import_module(f"vitlab.study.{_HOMES[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
