"""vitlab.train: the Lightning training harness, run configuration schema and extension points.

The names below are imported on first use, so ``vitlab.train.config`` (the schema) loads without Lightning.
"""

from importlib import import_module
from typing import Any

_HOMES = {
    "DataConfig": "config", "ModelConfig": "config", "NegativesConfig": "config", "OptimConfig": "config",
    "PeftConfig": "config", "RunConfig": "config", "LossTerm": "extensions", "register_loss_term": "extensions",
    "register_model_transform": "extensions", "ClassificationTask": "module", "parameter_groups": "module",
    "RunResult": "run", "fit": "run",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'vitlab.train' has no attribute {name!r}")
    return getattr(import_module(f"vitlab.train.{_HOMES[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
