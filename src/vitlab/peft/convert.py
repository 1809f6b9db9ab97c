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

import os
import re
from pathlib import Path
from typing import Any

import torch
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME

from vitlab.checkpoint import CheckpointError, MissingWeightsError, build_model, load_checkpoint, read_metadata
from vitlab.errors import ConfigError

__all__ = ["convert_adapter", "legacy_key"]

_METHODS = ("kadaptation", "lora_qv", "lora", "lokr")


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
        out_dir: the folder to write (``adapter_config.json``, ``adapter_model.safetensors``, ``vitlab.json``); it
            must not exist yet or be empty.

    Returns:
        ``out_dir``.

    Raises:
        MissingWeightsError: ``path`` does not exist (or the run folder holds no ``adapter.safetensors``).
        CheckpointError: not a vitlab 0.1 adapter of a peft method (a peft folder already, or a run folder whose
            ``adapter/`` is one; a vitlab ``model`` file or a run folder holding only one; another kind of file;
            damaged ``extra.peft`` metadata), or its tensors do not map
            one-to-one onto the rebuilt adapter (the unmatched names are listed).
        ConfigError: ``path`` or ``out_dir`` is empty, or ``out_dir`` is a file or a non-empty folder (nothing is
            overwritten or mixed in).
    """
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    from vitlab.peft.io import save_peft_folder
    from vitlab.peft.methods import RENAMED_OPTIONS, build_peft_transform

    for name, value in (("path", path), ("out_dir", out_dir)):
        if not isinstance(value, str | os.PathLike):
            raise TypeError(f"{name} must be a path (str or Path), got {type(value).__name__}")
        if not str(value).strip():
            raise ConfigError(f"{'--out' if name == 'out_dir' else 'the adapter path'} is empty: pass "
                              + ("the peft adapter folder to write" if name == "out_dir" else
                                 "the vitlab 0.1 adapter.safetensors or its run folder"))
    path, out_dir = _source_file(Path(path).expanduser()), _check_out_dir(Path(out_dir).expanduser())
    kind = read_metadata(path)["kind"]
    if kind != "adapter":
        use = f", e.g. `vitlab eval --checkpoint {path}`" if kind == "model" else ""
        raise CheckpointError(f"{path} is a vitlab {kind!r} file, not a vitlab 0.1 adapter: nothing to convert "
                              f"(use it as it is{use})")
    tensors, meta = load_checkpoint(path, expected_kind="adapter")
    method, target_modules, old_options = _peft_record(path, meta)
    renames = RENAMED_OPTIONS.get(method, {})
    options: dict[str, Any] = {renames.get(k, k): v for k, v in old_options.items()}
    if method == "kadaptation" and not options.get("train_head", True):
        options.pop("modules_to_save", None)
    try:
        with torch.no_grad():
            model = build_peft_transform(method, target_modules, **options)(build_model(meta))
    except (ValueError, TypeError) as err:  # CheckpointError (from build_model) is a ValueError too
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{path}: its recorded {method!r} settings (metadata extra.peft) do not build the "
                              f"adapter: {err}. The file's metadata is damaged or it is not a vitlab 0.1 adapter "
                              "file") from err
    mapped = {legacy_key(method, k): v for k, v in tensors.items()}
    wanted = get_peft_model_state_dict(model, save_embedding_layers=False)
    missing, unexpected = sorted(set(wanted) - set(mapped)), sorted(set(mapped) - set(wanted))
    if missing or unexpected:
        raise CheckpointError(f"{path}: the saved tensors do not map onto the rebuilt {method!r} adapter (missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]})")
    not_float = sorted(k for k, v in tensors.items() if not v.is_floating_point())
    if not_float:
        raise CheckpointError(f"{path}: tensors {not_float[:5]} are not floating point; the file is damaged or not a "
                              "vitlab 0.1 adapter file")
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
        "peft": {"method": method, "target_modules": target_modules, "options": options},
        "extra": {k: v for k, v in extra.items() if k not in ("peft", "base_weights")},
        "converted_from": str(path)})


def _source_file(path: Path) -> Path:
    """The old ``adapter.safetensors`` named by ``path`` (a file or a run folder), with convert-specific advice."""
    folder = path if path.is_dir() else path.parent
    peft_file = path.is_dir() or path.name in (CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME)
    if path.is_dir() and not (folder / CONFIG_NAME).is_file() and (folder / "adapter" / CONFIG_NAME).is_file():
        folder = folder / "adapter"  # a run folder of today's vitlab: its adapter/ is a peft folder already
    if peft_file and (folder / CONFIG_NAME).is_file():
        raise CheckpointError(f"{folder} is already in peft format ({CONFIG_NAME} is there); nothing to convert: "
                              "load it with PeftModel.from_pretrained(base, folder) after `import vitlab.peft`")
    if path.is_dir():
        path = path / "adapter.safetensors"
    if not path.is_file() and (path.parent / "model.safetensors").is_file():
        raise CheckpointError(f"{path.parent} holds model.safetensors and no adapter.safetensors: its run saved whole "
                              "weights, nothing to convert (use it as it is, e.g. `vitlab eval --checkpoint "
                              f"{path.parent}`)")
    if not path.is_file():
        raise MissingWeightsError(f"no adapter file at {path}: pass an adapter.safetensors written by vitlab 0.1 "
                                  "(kadaptation, lora_qv, lora or lokr), or the run folder that holds one")
    return path


def _check_out_dir(out_dir: Path) -> Path:
    """Refuse an ``out_dir`` that is a file or a non-empty folder, before any work (nothing is overwritten)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; the converted adapter is a folder: pass a new folder path")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise ConfigError(f"--out {out_dir} is a folder that is not empty; pass a new or empty folder (remove the old "
                          "one first to convert again), so that no other adapter's files get mixed in")
    return out_dir


def _peft_record(path: Path, meta: dict[str, Any]) -> tuple[str, Any, dict[str, Any]]:
    """``(method, target_modules, options)`` of the file's ``extra.peft`` record, checked (the metadata is
    untrusted): ``CheckpointError`` naming what is wrong."""
    not_old = f"{path} is not a vitlab 0.1 adapter file of kadaptation, lora_qv, lora or lokr"
    extra = meta.get("extra", {})
    peft = extra.get("peft") if isinstance(extra, dict) else None
    if not isinstance(peft, dict):
        raise CheckpointError(f"{not_old}: its metadata has no extra.peft record (got {peft!r}); nothing to convert")
    method = peft.get("method")
    if method not in _METHODS:
        raise CheckpointError(f"{not_old} (method {method!r}); nothing to convert")
    missing = [key for key in ("target_modules", "options") if key not in peft]
    if missing:
        raise CheckpointError(f"{not_old}: its metadata extra.peft lacks {missing} (the file is damaged or was not "
                              "written by vitlab 0.1)")
    targets, options = peft["target_modules"], peft["options"]
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise CheckpointError(f"{not_old}: its metadata extra.peft.options must be a mapping of option names to "
                              f"values, got {options!r} (the file is damaged)")
    if not (targets is None or isinstance(targets, str)
            or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))):
        raise CheckpointError(f"{not_old}: its metadata extra.peft.target_modules must be null, a string or a list "
                              f"of module names, got {targets!r} (the file is damaged)")
    return method, targets, options
