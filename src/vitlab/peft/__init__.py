"""vitlab.peft."""

# --- parameter-efficient fine-tuning methods (KAdaptation, LoRA/LoKr, adapters, probes): re-exports ---
from vitlab.peft.adapter import apply_bottleneck_adapters  # noqa: F401
from vitlab.peft.control import (  # noqa: F401
    adapter_layers,
    disable_adapter,
    get_peft_spec,
    merge_adapters,
    set_peft_spec,
    unmerge_adapters,
)
from vitlab.peft.io import adapter_state_dict, frozen_base_sha256, load_adapter, save_adapter  # noqa: F401
from vitlab.peft.kadaptation import (  # noqa: F401
    KAdaptationConfig,
    apply_kadaptation,
    merge_kadaptation,
    unmerge_kadaptation,
)
from vitlab.peft.lora import apply_lokr, apply_lora, apply_lora_qv  # noqa: F401
from vitlab.peft.methods import PEFT_METHODS, build_peft_transform, count_parameters, register_peft_method  # noqa: F401
from vitlab.peft.targets import TIMM_TARGET_PRESETS  # noqa: F401
