"""vitlab: Vision Transformer research toolkit.

Importing vitlab registers its models in timm's registry (``timm.create_model("inception_transformer_small")``,
``timm.create_model("vit_vitlab_tiny_patch8_32")``) and its parameter-efficient methods with HF peft
(``peft.get_peft_model(model, vitlab.peft.KAdaptationConfig())``, ``PeftModel.from_pretrained`` of a KAdaptation or
``lora_qv`` adapter folder). ``register()`` does both; it runs on import, except in the ``vitlab`` command, which
calls it once a subcommand runs, so that ``vitlab --help`` answers without importing torch.
"""

import sys
from pathlib import Path

from vitlab.version import __version__

__all__ = ["__version__", "register"]


def register() -> None:
    """Register vitlab's timm models and its HF peft methods (KAdaptation, lora_qv); repeated calls do nothing."""
    from vitlab import models  # noqa: F401  (timm's registry)
    from vitlab.peft import kadaptation, lora  # noqa: F401  (peft's method tables)


def _is_vitlab_command() -> bool:
    """True in the ``vitlab`` console script (its ``main`` registers before running a subcommand)."""
    return Path(sys.argv[0]).name == "vitlab"


if not _is_vitlab_command():
    register()
