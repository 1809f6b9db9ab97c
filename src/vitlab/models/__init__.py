"""vitlab.models: architectures registered in timm's registry on import."""

from vitlab.models.vit import vitlab_vit_tiny_32

__all__ = ["vitlab_vit_tiny_32"]
