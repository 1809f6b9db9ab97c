"""vitlab.checkpoint: the weights layer every other part builds on.

- `vitlab.checkpoint.format`: vitlab's own files (safetensors + ``vitlab`` JSON metadata), written and read here only;
- `vitlab.checkpoint.pretrained`: where a run's starting weights come from (a vitlab file or run folder, a plain
  weights file, ``timm`` or ``hf-hub:ORG/NAME``), loaded with timm's own loader;
- `vitlab.checkpoint.lightning`: a Lightning ``.ckpt`` of a finished run read as that run's ``model.safetensors``.

It imports nothing of vitlab but `vitlab.errors`.
"""

from vitlab.checkpoint.format import (
    FORMAT_VERSION,
    KINDS,
    LOADER_KEYWORDS,
    CheckpointError,
    MissingWeightsError,
    build_model,
    check_model_kwargs,
    has_vitlab_metadata,
    load_checkpoint,
    load_model,
    read_metadata,
    read_tensor_shapes,
    resolve_weights_path,
    save_checkpoint,
    state_dict_sha256,
)
from vitlab.checkpoint.lightning import checkpoint_weights, load_lightning_checkpoint
from vitlab.checkpoint.pretrained import (
    PretrainedWeights,
    check_model_name,
    create_model,
    file_sha256,
    load_pretrained,
    read_weights_file,
    record_state_dict_loads,
    resolve_pretrained,
)

__all__ = [
    "FORMAT_VERSION", "KINDS", "LOADER_KEYWORDS", "CheckpointError", "MissingWeightsError", "PretrainedWeights",
    "build_model", "check_model_kwargs", "checkpoint_weights", "check_model_name", "create_model", "file_sha256",
    "has_vitlab_metadata", "load_checkpoint", "load_lightning_checkpoint",
    "load_model", "load_pretrained", "read_metadata", "read_tensor_shapes",
    "read_weights_file", "record_state_dict_loads", "resolve_pretrained", "resolve_weights_path", "save_checkpoint",
    "state_dict_sha256",
]
