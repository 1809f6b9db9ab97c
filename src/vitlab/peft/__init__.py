"""vitlab.peft: parameter-efficient fine-tuning and intrinsic dimension.

- Kronecker Adaptation: `KAdaptationConfig`, `apply_kadaptation`, `merge_kadaptation`, `unmerge_kadaptation`;
- baselines: `apply_lora` / `apply_lokr` (HF peft), `apply_lora_qv`, `apply_bottleneck_adapters`;
- one entry point for the harness: `build_peft_transform(method, target_modules, **options)` over `PEFT_METHODS`;
- adapters as files: `save_adapter`, `load_adapter` (safetensors + the base weights' SHA-256);
- intrinsic dimension: `SubspaceConfig`, `wrap_in_subspace` (θ = θ₀ + P·θ_d), `merge_subspace`.

Example:
    >>> import timm
    >>> from vitlab.peft import build_peft_transform, count_parameters
    >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2,
    ...                         num_heads=2, num_classes=10)
    >>> count_parameters(build_peft_transform("linear")(vit))["trainable"]
    490
"""

from vitlab.peft.adapter import apply_bottleneck_adapters
from vitlab.peft.control import (
    adapter_layers,
    disable_adapter,
    get_peft_spec,
    merge_adapters,
    set_peft_spec,
    unmerge_adapters,
)
from vitlab.peft.intrinsic import SubspaceConfig, merge_subspace, wrap_in_subspace
from vitlab.peft.io import adapter_state_dict, frozen_base_sha256, load_adapter, save_adapter
from vitlab.peft.kadaptation import KAdaptationConfig, apply_kadaptation, merge_kadaptation, unmerge_kadaptation
from vitlab.peft.lora import apply_lokr, apply_lora, apply_lora_qv
from vitlab.peft.methods import PEFT_METHODS, build_peft_transform, count_parameters, register_peft_method
from vitlab.peft.targets import TIMM_TARGET_PRESETS

__all__ = [
    "PEFT_METHODS", "TIMM_TARGET_PRESETS", "KAdaptationConfig", "SubspaceConfig", "adapter_layers",
    "adapter_state_dict", "apply_bottleneck_adapters", "apply_kadaptation", "apply_lokr", "apply_lora",
    "apply_lora_qv", "build_peft_transform", "count_parameters", "disable_adapter", "frozen_base_sha256",
    "get_peft_spec", "load_adapter", "merge_adapters", "merge_kadaptation", "merge_subspace", "register_peft_method",
    "save_adapter", "set_peft_spec", "unmerge_adapters", "unmerge_kadaptation", "wrap_in_subspace",
]
