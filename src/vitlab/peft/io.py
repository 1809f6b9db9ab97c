"""vitlab adapter files for the methods that are not peft methods (``linear``, bottleneck ``adapter``): only the
trained tensors and the classifier head, as a vitlab ``kind="adapter"`` file. The peft methods (``kadaptation``,
``lora``, ``lokr``, ``lora_qv``) are saved with ``PeftModel.save_pretrained`` instead; their vitlab 0.1
``adapter.safetensors`` files are turned into peft folders by ``vitlab peft convert`` (``vitlab.peft.convert_adapter``).

The file holds the tensors recorded by ``set_peft_spec`` (adapter parameters plus the trained head — peft users often
lose the head, a known pitfall), and its metadata ``extra["peft"]`` holds ``{method, target_modules, options}``, so
``load_adapter`` re-applies the same transform to a fresh base model and fills in the tensors.

``base_sha256`` identifies the frozen base: ``frozen_base_sha256(model)`` hashes the base model's state dict
**without** the classifier head (the head is part of the adapter file; a downstream head starts random) and works
on the base model before adaptation and on the adapted model alike (``.base_layer`` names are folded back).

Example:
    >>> import tempfile, timm, torch
    >>> from vitlab.peft import build_peft_transform
    >>> def base():  # the same base weights each time (seeded)
    ...     torch.manual_seed(0)
    ...     return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=1,
    ...                              num_heads=2, num_classes=10)
    >>> model = build_peft_transform("adapter", bottleneck=4)(base())
    >>> path = save_adapter(tempfile.mkdtemp() + "/adapter.safetensors", model)
    >>> restored = load_adapter(path, base())
    >>> x = torch.randn(2, 3, 32, 32)
    >>> torch.equal(restored.eval()(x), model.eval()(x))
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME
from torch import nn

from vitlab.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint, state_dict_sha256
from vitlab.peft.control import get_peft_spec
from vitlab.peft.targets import classifier_names

__all__ = ["PEFT_NATIVE_METHODS", "adapter_state_dict", "frozen_base_sha256", "load_adapter", "save_adapter"]

# methods whose models are peft.PeftModel (saved with save_pretrained; vitlab 0.1 files need `vitlab peft convert`)
PEFT_NATIVE_METHODS = ("kadaptation", "lora", "lokr", "lora_qv")


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors an adapter checkpoint holds: the adapter parameters and the trained head (detached)."""
    spec = get_peft_spec(model)
    if spec["method"] == "full":
        raise ValueError("full fine-tuning has no adapter: save the whole model with "
                         "vitlab.checkpoint.save_checkpoint(kind='model')")
    params = dict(model.named_parameters())
    return {name: params[name].detach() for name in spec["params"]}


def frozen_base_sha256(model: nn.Module, head_modules: list[str] | None = None) -> str:
    """SHA-256 of the frozen base weights (classifier excluded), for a base or an adapted (unmerged) model."""
    spec = model.__dict__.get("vitlab_peft")
    adapter_names = set(spec["params"]) if spec else set()
    heads = classifier_names(model, head_modules or (spec or {}).get("options", {}).get("head_modules"))
    base = {}
    for name, tensor in model.state_dict().items():
        if name in adapter_names or any(name.startswith(h + ".") for h in heads):
            continue
        base[name.replace(".base_layer.", ".")] = tensor
    return state_dict_sha256(base)


def save_adapter(
    path: str | Path, model: nn.Module, *, base_sha256: str | None = None, model_name: str | None = None,
    model_kwargs: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
) -> Path:
    """Write the adaptation (+ head) of ``model`` as a vitlab adapter checkpoint.

    Args:
        path: ``.safetensors`` file or folder.
        model: an adapted, unmerged model.
        base_sha256: hash of the frozen base (default: ``frozen_base_sha256(model)``).
        model_name, model_kwargs: how to rebuild the base architecture (timm name and kwargs).
        extra: more JSON metadata (data config, metrics); ``extra["peft"]`` is written by this function.

    Returns:
        The written file path.
    """
    if isinstance(model, PeftModel):
        raise ValueError("a peft method's model is saved as a peft adapter folder: model.save_pretrained(folder) "
                         "(vitlab.peft.export.save_peft_folder adds the base model's description)")
    spec = get_peft_spec(model)
    tensors = adapter_state_dict(model)
    meta_extra = dict(extra or {})
    meta_extra["peft"] = {k: spec[k] for k in ("method", "target_modules", "options")}
    return save_checkpoint(path, tensors, kind="adapter", model_name=model_name, model_kwargs=model_kwargs or {},
                           base_sha256=base_sha256 or frozen_base_sha256(model), extra=meta_extra)


def load_adapter(path: str | Path, base_model: nn.Module, check_base: bool = True) -> nn.Module:
    """Re-apply the saved method to ``base_model`` (in place) and load the saved adapter and head tensors.

    Args:
        path: adapter checkpoint written by ``save_adapter``.
        base_model: the base the adapter was trained on (same architecture; the head may be freshly initialised).
        check_base: refuse a base whose frozen weights hash differently from the one recorded.

    Returns:
        The adapted model, equal to the one that was saved.
    """
    from vitlab.peft.methods import build_peft_transform

    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    if (folder / CONFIG_NAME).is_file() and (Path(path).is_dir() or Path(path).name in (CONFIG_NAME,
                                                                                        SAFETENSORS_WEIGHTS_NAME)):
        raise CheckpointError(f"{folder} is a peft adapter folder ({CONFIG_NAME}), not a vitlab adapter file: load it "
                              "with PeftModel.from_pretrained(base, folder) after `import vitlab.peft` "
                              "(vitlab.peft.load_adapted_model(folder) also rebuilds the base of a vitlab run's "
                              "adapter/ folder)")
    peft = read_metadata(path).get("extra", {}).get("peft")
    if not peft:
        raise CheckpointError(f"{path} has no extra['peft'] record; it was not written by vitlab.peft.save_adapter")
    if peft["method"] in PEFT_NATIVE_METHODS:
        raise CheckpointError(
            f"{path} is a vitlab 0.1 {peft['method']!r} adapter file; vitlab now saves this method as a peft adapter "
            f"folder. Convert it once with `vitlab peft convert {path} --out <folder>` (vitlab.peft.convert_adapter), "
            "then load it with PeftModel.from_pretrained(base, <folder>)")
    expected = frozen_base_sha256(base_model) if check_base else None
    tensors, _ = load_checkpoint(path, expected_kind="adapter", base_sha256=expected)
    model = build_peft_transform(peft["method"], peft["target_modules"], **peft["options"])(base_model)
    params = dict(model.named_parameters())
    expected_names = set(get_peft_spec(model)["params"])
    missing, unexpected = sorted(expected_names - set(tensors)), sorted(set(tensors) - expected_names)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit the re-applied {peft['method']!r} adapter: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            if params[name].shape != tensor.shape:
                raise CheckpointError(f"{name}: saved shape {tuple(tensor.shape)} != model {tuple(params[name].shape)}")
            params[name].copy_(tensor)
    return model
