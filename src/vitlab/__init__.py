"""vitlab: Vision Transformer research toolkit.

Importing vitlab registers its models in timm's registry (``timm.create_model("vitlab_vit_tiny_32")``).
"""

__version__ = "0.1.0"

from vitlab import models  # noqa: E402,F401  (registers timm models)

__all__ = ["__version__", "models"]
