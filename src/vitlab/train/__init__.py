"""vitlab.train: the Lightning training harness, run configuration schema and extension points."""

from vitlab.train.config import DataConfig, ModelConfig, NegativesConfig, OptimConfig, PeftConfig, RunConfig
from vitlab.train.extensions import LossTerm, register_loss_term, register_model_transform
from vitlab.train.module import ClassificationTask, parameter_groups
from vitlab.train.run import RunResult, fit

__all__ = [
    "ClassificationTask",
    "DataConfig",
    "LossTerm",
    "ModelConfig",
    "NegativesConfig",
    "OptimConfig",
    "PeftConfig",
    "RunConfig",
    "RunResult",
    "fit",
    "parameter_groups",
    "register_loss_term",
    "register_model_transform",
]
