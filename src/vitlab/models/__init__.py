"""vitlab.models: architectures registered in timm's registry on import.

- ``vit_vitlab_tiny_patch8_32`` / ``vit_vitlab_tiny_patch4_32``: small ViTs for 32-px inputs (`vitlab.models.vit`;
  ``vitlab_vit_tiny_32`` is a deprecated alias of the 4-px one);
- ``inception_transformer_{tiny,small,base,large}[_384]``: the Inception Transformer (iFormer), state-dict compatible
  with the official code (`vitlab.models.inception_transformer`);
- ``iformer_fpn_backbone``: an iFormer + FPN backbone for torchvision's detectors (`vitlab.models.detection`);
- ``cpu_linear``: Linear products through oneDNN on the CPU, the iFormer's fast path (`vitlab.models.cpu_linear`);
- ``export_onnx``: ONNX export with a dynamic batch, checked with onnxruntime (`vitlab.models.onnx_export`).

Example:
    >>> import timm, vitlab.models
    >>> sorted(timm.list_models("inception_transformer_*"))[:2]
    ['inception_transformer_base', 'inception_transformer_base_384']
"""

from vitlab.models.detection import IFormerFPN, iformer_fpn_backbone
from vitlab.models.inception_transformer import InceptionTransformer, load_official_checkpoint
from vitlab.models.onnx_export import export_onnx
from vitlab.models.vit import vit_vitlab_tiny_patch4_32, vit_vitlab_tiny_patch8_32

__all__ = [
    "IFormerFPN", "InceptionTransformer", "export_onnx", "iformer_fpn_backbone", "load_official_checkpoint",
    "vit_vitlab_tiny_patch4_32", "vit_vitlab_tiny_patch8_32",
]
