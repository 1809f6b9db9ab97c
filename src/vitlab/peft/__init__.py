"""vitlab.peft: parameter-efficient fine-tuning and intrinsic dimension.

- Kronecker Adaptation as an HF peft method: ``KAdaptationConfig`` is a ``peft.PeftConfig`` (``peft_type
  "KADAPTATION"``, registered with peft on import), so ``peft.get_peft_model(model, KAdaptationConfig())``,
  ``save_pretrained`` and ``PeftModel.from_pretrained`` work; ``apply_kadaptation`` is ``get_peft_model``;
- baselines: ``apply_lora`` / ``apply_lokr`` (HF peft), ``LoraQVConfig`` / ``apply_lora_qv`` (peft method
  ``"LORA_QV"``: LoRA on the Q and V rows of fused ``qkv``), ``apply_bottleneck_adapters``;
- one registry for the harness and the Python API: ``build_peft_transform(method, target_modules, **options)`` over
  ``PEFT_METHODS``, extended with ``register_method``;
- runs: ``export_adapted_model`` (merged ``model.safetensors`` + a peft adapter folder), ``load_adapted_model``,
  ``convert_adapter`` for vitlab 0.1 ``adapter.safetensors`` files (``vitlab peft convert``);
- intrinsic dimension: ``SubspaceConfig``, ``wrap_in_subspace`` (θ = θ₀ + P·θ_d), ``merge_subspace``.

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
from vitlab.peft.convert import convert_adapter
from vitlab.peft.export import export_adapted_model, load_adapted_model, load_run_model
from vitlab.peft.intrinsic import SubspaceConfig, merge_subspace, wrap_in_subspace
from vitlab.peft.io import adapter_state_dict, frozen_base_sha256, load_adapter, save_adapter
from vitlab.peft.kadaptation import KAdaptationConfig, KAdaptationModel, apply_kadaptation, merge_kadaptation
from vitlab.peft.lora import LoraQVConfig, LoraQVModel, apply_lokr, apply_lora, apply_lora_qv
from vitlab.peft.methods import PEFT_METHODS, build_peft_transform, count_parameters, register_method
from vitlab.peft.targets import TIMM_TARGET_PRESETS

__all__ = [
    "PEFT_METHODS", "TIMM_TARGET_PRESETS", "KAdaptationConfig", "KAdaptationModel", "LoraQVConfig", "LoraQVModel",
    "SubspaceConfig", "adapter_layers", "adapter_state_dict", "apply_bottleneck_adapters", "apply_kadaptation",
    "apply_lokr", "apply_lora", "apply_lora_qv", "build_peft_transform", "convert_adapter", "count_parameters",
    "disable_adapter", "export_adapted_model", "frozen_base_sha256", "get_peft_spec", "load_adapted_model",
    "load_adapter", "load_run_model", "merge_adapters", "merge_kadaptation", "merge_subspace",
    "register_method", "save_adapter", "set_peft_spec", "unmerge_adapters", "wrap_in_subspace",
]
