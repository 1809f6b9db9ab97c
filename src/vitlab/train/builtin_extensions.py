"""Registers vitlab's own loss terms and model transforms with ``vitlab.train.extensions``.

- loss term ``negatives``: `vitlab.losses.NegativeAugmentationLoss` built from the ``negatives`` section;
- model transforms: every method of `vitlab.peft.PEFT_METHODS` (``full``, ``linear``, ``kadaptation``, ``lora``,
  ...), built by `vitlab.peft.build_peft_transform(method, target_modules, **options)`.

Imported lazily by `vitlab.train.extensions`, so the lower layers stay free of Lightning.
"""

from __future__ import annotations

from functools import partial

from vitlab.losses import NegativeAugmentationLoss
from vitlab.peft.methods import PEFT_METHODS, build_peft_transform
from vitlab.train.config import NegativesConfig
from vitlab.train.extensions import MODEL_TRANSFORMS, register_loss_term


@register_loss_term("negatives")
def _negatives(config: NegativesConfig) -> NegativeAugmentationLoss | None:
    if not config.enabled:
        return None
    return NegativeAugmentationLoss(config.kinds, config.patch_size, config.loss, weight=config.weight,
                                    **config.options)


def sync_peft_methods() -> None:
    """Expose every `vitlab.peft.PEFT_METHODS` entry as a model transform, including ones registered after import."""
    for method in PEFT_METHODS:
        MODEL_TRANSFORMS.setdefault(method, partial(build_peft_transform, method))
