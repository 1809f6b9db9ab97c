"""The training harness's two extension points.

**A. Loss terms.** An object with ``name: str`` and ``weight: float``, called as
``term(task, batch, outputs) -> dict[str, Tensor]``:

- ``task``: the running ``ClassificationTask``. Terms may rely only on ``task.model`` (the ``nn.Module`` being
  trained) and ``task.training``, so any object with a ``.model`` attribute works in a plain PyTorch loop.
- ``batch``: ``(images, targets)``; images ``(B, C, H, W)`` float, targets ``(B,)`` int64 or soft ``(B, K)`` float
  (Mixup/CutMix).
- ``outputs``: ``{"logits": (B, K), "loss_ce": scalar}``.

Every returned scalar is multiplied by ``weight``, added to the cross-entropy, and logged as ``train/<name>/<key>``.
A term may also expose ``last_metrics: dict[str, Tensor]`` (detached scalars refreshed by each call); they are logged
as ``train/<name>/<key>`` per epoch, not added to the loss.
The ``negatives`` config section builds one (patch-based negative augmentation, registered below).

**B. Model transforms.** A callable ``nn.Module -> nn.Module`` applied after the model is built (and its
``model.pretrained`` weights loaded) and before the optimizer collects the ``requires_grad`` parameters. The
``peft`` config section picks one by ``method`` from vitlab's one method registry, ``vitlab.peft.PEFT_METHODS``
(``MODEL_TRANSFORMS`` here is the same table); register more with ``register_model_transform`` (the harness's name
for ``vitlab.peft.register_method``).

Example:
    >>> class ZeroTerm:
    ...     name, weight = "zero", 1.0
    ...     def __call__(self, task, batch, outputs):
    ...         return {"value": outputs["logits"].sum() * 0}
    >>> @register_model_transform("freeze_all_but_head")
    ... def _factory(target_modules=None, **options):
    ...     def transform(model):
    ...         for name, p in model.named_parameters():
    ...             p.requires_grad_(name.startswith("head"))
    ...         return model
    ...     return transform
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from vitlab.errors import ConfigError
from vitlab.losses import NegativeAugmentationLoss
from vitlab.peft.methods import PEFT_METHODS, build_peft_transform, register_method
from vitlab.train.config import NegativesConfig, PeftConfig

__all__ = [
    "LOSS_TERMS",
    "MODEL_TRANSFORMS",
    "LossTerm",
    "ModelTransform",
    "build_loss_terms",
    "build_model_transform",
    "register_loss_term",
    "register_model_transform",
]

ModelTransform = Callable[[nn.Module], nn.Module]


@runtime_checkable
class LossTerm(Protocol):
    """Extension point A: an extra, weighted training loss (see the module docstring)."""

    name: str
    weight: float

    def __call__(self, task: Any, batch: tuple[Tensor, Tensor], outputs: dict[str, Tensor]) -> dict[str, Tensor]: ...


# method name -> factory(target_modules=..., **options) -> ModelTransform: the one registry of vitlab.peft
MODEL_TRANSFORMS: dict[str, Callable[..., ModelTransform]] = PEFT_METHODS
# config section name -> factory(section dataclass) -> LossTerm | None
LOSS_TERMS: dict[str, Callable[[Any], LossTerm | None]] = {}


def register_model_transform(method: str) -> Callable:
    """Decorator: register ``factory(target_modules=None, **options) -> ModelTransform`` under ``peft.method``."""

    def decorator(factory: Callable[..., ModelTransform]) -> Callable[..., ModelTransform]:
        return register_method(method, factory)

    return decorator


def register_loss_term(section: str) -> Callable:
    """Decorator: register ``factory(section_config) -> LossTerm | None`` for a config section."""

    def decorator(factory: Callable[[Any], LossTerm | None]) -> Callable[[Any], LossTerm | None]:
        LOSS_TERMS[section] = factory
        return factory

    return decorator


def build_model_transform(peft: PeftConfig) -> ModelTransform | None:
    """Return the model transform the ``peft`` section asks for, or ``None`` when ``method`` is null."""
    if peft.method is None:
        return None
    if peft.method not in MODEL_TRANSFORMS:
        raise ValueError(
            f"unknown peft.method {peft.method!r}; registered methods: {sorted(MODEL_TRANSFORMS)} "
            "(or null to train the whole model)"
        )
    return build_peft_transform(peft.method, peft.target_modules, **peft.options)


def build_loss_terms(negatives: NegativesConfig) -> list[LossTerm]:
    """Build the loss terms the config asks for (today: the ``negatives`` section)."""
    terms = []
    for section, config in (("negatives", negatives),):
        factory = LOSS_TERMS.get(section)
        if factory is None:
            if getattr(config, "enabled", False):
                raise ValueError(f"the {section!r} section is enabled but no loss term is registered for it")
            continue
        term = factory(config)
        if term is not None:
            if not isinstance(term, LossTerm):
                raise TypeError(f"the {section!r} factory returned {type(term).__name__}, not a LossTerm")
            terms.append(term)
    return terms


@register_loss_term("negatives")
def _negatives(config: NegativesConfig) -> NegativeAugmentationLoss | None:
    if not config.enabled:
        return None
    try:
        return NegativeAugmentationLoss(config.kinds, config.patch_size, config.loss, weight=config.weight,
                                        **config.options)
    except TypeError as err:
        if "unexpected keyword" not in str(err):
            raise
        raise ConfigError(f"negatives.options {sorted(config.options)}: {err}; see NegativeAugmentationLoss's "
                          "keywords (e.g. replace_rate, temperature, seed)") from err
