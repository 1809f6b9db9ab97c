"""``vitlab peft convert``: a vitlab 0.1 ``adapter.safetensors`` of a peft method → a standard peft adapter folder.

vitlab 0.1 saved ``kadaptation``, ``lora_qv``, ``lora`` and ``lokr`` runs as one vitlab ``kind="adapter"`` file
(tensor names of its own wrappers: ``blocks.0.attn.qkv.adapters.q.u``, ``kadaptation_rules.q.left``, ...). vitlab now
saves them with ``PeftModel.save_pretrained``. ``convert_adapter`` rebuilds the method on the recorded architecture
(random base weights: only names and shapes matter), renames every saved tensor to its peft key, checks that the two
sets match exactly, loads them and writes the folder (plus ``vitlab.json``, as a ``vitlab fit`` run's ``adapter/``).
The numbers are unchanged: the same tensors, under new names.

Example (a vitlab 0.1 run folder; also ``vitlab peft convert runs/old_run/adapter.safetensors --out
runs/old_run/adapter``)::

    convert_adapter("runs/old_run/adapter.safetensors", "runs/old_run/adapter")
    PosixPath('runs/old_run/adapter')
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from vitlab.checkpoint import CheckpointError, build_model, load_checkpoint

__all__ = ["convert_adapter", "legacy_key"]

# vitlab 0.1 option names -> current ones (KAdaptationConfig: bias -> delta_bias, head_modules -> modules_to_save)
_RENAMED_OPTIONS = {"kadaptation": {"bias": "delta_bias", "head_modules": "modules_to_save"}}


def legacy_key(method: str, key: str) -> str:
    """The peft checkpoint key (as in ``adapter_model.safetensors``) of a vitlab 0.1 adapter tensor name.

    Example:
        >>> legacy_key("kadaptation", "blocks.0.attn.qkv.adapters.q.u")
        'base_model.model.blocks.0.attn.qkv.kadaptation_u.q'
        >>> legacy_key("kadaptation", "kadaptation_rules.v.left")
        'base_model.kadaptation_A.v_left'
        >>> legacy_key("lora", "blocks.0.attn.qkv.lora_A.default.weight")
        'base_model.model.blocks.0.attn.qkv.lora_A.weight'
    """
    if method == "kadaptation":
        shared = re.fullmatch(r"kadaptation_rules\.(\w+)\.(left|right|weight)", key)
        if shared:
            role, part = shared.groups()
            return f"base_model.kadaptation_A.{role}" + ("" if part == "weight" else f"_{part}")
        own = re.fullmatch(r"(.+)\.adapters\.(\w+)\.rule\.(left|right|weight)", key)
        if own:
            module, slice_name, part = own.groups()
            role = module.rsplit(".", 1)[-1] if slice_name == "all" else slice_name
            return f"base_model.model.{module}.kadaptation_A.{role}" + ("" if part == "weight" else f"_{part}")
        key = re.sub(r"\.adapters\.(\w+)\.(u|v)$", r".kadaptation_\2.\1", key)
        key = re.sub(r"\.adapter_bias$", ".kadaptation_bias", key)
    elif method == "lora_qv":
        key = re.sub(r"\.adapters\.(\w+)\.lora_(A|B)$", r".qvlora_\2.\1", key)
    elif method in ("lora", "lokr"):
        key = key.replace(".default.", ".").removesuffix(".default")
    else:
        raise ValueError(f"no converter for method {method!r}: only kadaptation, lora_qv, lora and lokr adapters were "
                         "saved in vitlab 0.1's format and are peft methods now")
    return f"base_model.model.{key}"


def convert_adapter(path: str | Path, out_dir: str | Path) -> Path:
    """Convert a vitlab 0.1 ``adapter.safetensors`` (``kadaptation``, ``lora_qv``, ``lora``, ``lokr``) into a peft
    adapter folder that ``PeftModel.from_pretrained(base, out_dir)`` loads (after ``import vitlab.peft``).

    Args:
        path: the old adapter file (or a run folder holding ``adapter.safetensors``).
        out_dir: the folder to write (``adapter_config.json``, ``adapter_model.safetensors``, ``vitlab.json``).

    Returns:
        ``out_dir``.

    Raises:
        CheckpointError: not a vitlab 0.1 adapter of a peft method, or its tensors do not map one-to-one onto the
            rebuilt adapter (the unmatched names are listed).
    """
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    from vitlab.peft.export import save_peft_folder
    from vitlab.peft.methods import build_peft_transform

    path = Path(path)
    if path.is_dir():
        path = path / "adapter.safetensors"
    tensors, meta = load_checkpoint(path, expected_kind="adapter")
    peft = meta.get("extra", {}).get("peft")
    if not peft or peft.get("method") not in ("kadaptation", "lora_qv", "lora", "lokr"):
        raise CheckpointError(f"{path} is not a vitlab 0.1 adapter of kadaptation, lora_qv, lora or lokr (method "
                              f"{(peft or {}).get('method')!r}); nothing to convert")
    method = peft["method"]
    renames = _RENAMED_OPTIONS.get(method, {})
    options: dict[str, Any] = {renames.get(k, k): v for k, v in peft["options"].items()}
    if method == "kadaptation" and not options.get("train_head", True):
        options.pop("modules_to_save", None)
    with torch.no_grad():
        model = build_peft_transform(method, peft["target_modules"], **options)(build_model(meta))
    mapped = {legacy_key(method, k): v for k, v in tensors.items()}
    wanted = get_peft_model_state_dict(model, save_embedding_layers=False)
    missing, unexpected = sorted(set(wanted) - set(mapped)), sorted(set(mapped) - set(wanted))
    if missing or unexpected:
        raise CheckpointError(f"{path}: the saved tensors do not map onto the rebuilt {method!r} adapter (missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]})")
    bad = [k for k in wanted if wanted[k].shape != mapped[k].shape]
    if bad:
        raise CheckpointError(f"{path}: shapes differ from the rebuilt adapter for {bad[:5]}")
    result = set_peft_model_state_dict(model, mapped)
    if result.unexpected_keys:
        raise CheckpointError(f"{path}: peft did not load {result.unexpected_keys[:5]}")
    extra = meta.get("extra", {})
    return save_peft_folder(out_dir, model, {
        "model_name": meta.get("model_name"), "model_kwargs": meta.get("model_kwargs", {}),
        "base_weights": extra.get("base_weights"), "base_sha256": None,
        "peft": {"method": method, "target_modules": peft["target_modules"], "options": options},
        "extra": {k: v for k, v in extra.items() if k not in ("peft", "base_weights")},
        "converted_from": str(path)})
