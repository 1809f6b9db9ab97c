"""Save and load the adaptation alone (with the classifier head it trained), checked against its frozen base.

- The peft methods (``kadaptation``, ``lora``, ``lokr``, ``lora_qv``: their models are ``peft.PeftModel``) are saved
  in peft's own folder format: ``save_adapter(folder, peft_model)`` writes ``adapter_config.json`` +
  ``adapter_model.safetensors`` (``PeftModel.save_pretrained``, the head included through ``modules_to_save``) plus
  ``vitlab.json`` (the base's timm name and kwargs, ``frozen_base_sha256``, ``extra``), through
  ``save_peft_folder``, as a run's ``adapter/`` folder. ``load_adapter(folder, base)`` refuses a
  base whose hash differs from the recorded one, then returns ``PeftModel.from_pretrained(base, folder)``; a plain
  peft folder (no ``vitlab.json``) loads without the check. Their vitlab 0.1 ``adapter.safetensors`` files are turned
  into peft folders once by ``vitlab peft convert`` (``vitlab.peft.convert_adapter``).
- The methods that are not peft methods (``linear``, bottleneck ``adapter``) are saved as a vitlab ``kind="adapter"``
  ``.safetensors`` file: the tensors recorded by ``set_peft_spec`` (adapter parameters plus the trained head — peft
  users often lose the head, a known pitfall), and ``extra["peft"]`` = ``{method, target_modules, options}``, so
  ``load_adapter`` re-applies the same transform to a fresh base model and fills in the tensors.

``frozen_base_sha256(model)`` identifies the frozen base: it hashes the base weights **without** the classifier head
(the head is part of the adapter; a downstream head starts random) and gives the same digest on the base model before
adaptation and on the adapted, unmerged model: peft adapter tensors, ``modules_to_save`` copies and tuner-level shared
tensors are left out, and ``.base_layer.`` / ``.original_module.`` names are folded back.

Example:
    >>> import tempfile, timm, torch
    >>> from vitlab.peft import build_peft_transform
    >>> def base():  # the same base weights each time (seeded)
    ...     torch.manual_seed(0)
    ...     return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=1,
    ...                              num_heads=2, num_classes=10)
    >>> x = torch.randn(2, 3, 32, 32)
    >>> model = build_peft_transform("adapter", bottleneck=4)(base())
    >>> path = save_adapter(tempfile.mkdtemp() + "/adapter.safetensors", model)
    >>> torch.equal(load_adapter(path, base()).eval()(x), model.eval()(x))
    True
    >>> lora = build_peft_transform("lora", r=2)(base())
    >>> frozen_base_sha256(lora) == frozen_base_sha256(base())
    True
    >>> folder = save_adapter(tempfile.mkdtemp() + "/adapter", lora)
    >>> torch.equal(load_adapter(folder, base()).eval()(x), lora.eval()(x))
    True
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from peft.utils.other import AuxiliaryTrainingWrapper
from safetensors import SafetensorError
from torch import nn

from vitlab.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint, state_dict_sha256
from vitlab.checkpoint.format import ADAPTER_NAME
from vitlab.checkpoint.format import WEIGHTS_NAME as MODEL_FILE_NAME
from vitlab.peft.control import PEFT_SPEC_ATTR, get_peft_spec
from vitlab.peft.targets import classifier_names

__all__ = [
    "PEFT_NATIVE_METHODS", "VITLAB_META", "adapter_state_dict", "frozen_base_sha256", "load_adapter", "save_adapter",
    "folder_meta", "save_peft_folder",
]

# methods whose models are peft.PeftModel (saved as peft folders; vitlab 0.1 files need `vitlab peft convert`)
PEFT_NATIVE_METHODS = ("kadaptation", "lora", "lokr", "lora_qv")
#: vitlab's own record beside a peft adapter folder's files (base name / kwargs, frozen_base_sha256, extra).
VITLAB_META = "vitlab.json"


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors an adapter checkpoint holds: the adapter parameters and the trained head (detached)."""
    spec = get_peft_spec(model)
    if spec["method"] == "full":
        raise ValueError("full fine-tuning has no adapter: save the whole model with "
                         "vitlab.checkpoint.save_checkpoint(kind='model')")
    params = dict(model.named_parameters())
    return {name: params[name].detach() for name in spec["params"]}


def _peft_base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of a peft-wrapped model under the plain base model's names, adapter tensors left out.

    Each peft ``BaseTunerLayer`` loses its adapter tensors (``adapter_layer_names`` / ``other_param_names``) and its
    ``base_layer.`` level; each ``AuxiliaryTrainingWrapper`` (``ModulesToSaveWrapper``) loses its ``modules_to_save.``
    copies and its ``original_module.`` level. Inner wrappers are folded first (longest prefix first).
    """
    drop: list[str] = []
    fold: list[tuple[str, str]] = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, BaseTunerLayer):
            drop += [prefix + attr for attr in (*module.adapter_layer_names, *module.other_param_names)]
            fold.append((prefix + "base_layer.", prefix))
        elif isinstance(module, AuxiliaryTrainingWrapper):
            drop.append(prefix + "modules_to_save")
            fold.append((prefix + "original_module.", prefix))
    fold.sort(key=lambda pair: len(pair[0]), reverse=True)
    base = {}
    for key, tensor in model.state_dict().items():
        if any(key == d or key.startswith(d + ".") for d in drop):
            continue
        for wrapped, plain in fold:
            if key.startswith(wrapped):
                key = plain + key[len(wrapped):]
        base[key] = tensor
    return base


def frozen_base_sha256(model: nn.Module, head_modules: list[str] | None = None) -> str:
    """SHA-256 of the frozen base weights, classifier head excluded: equal on the base model before adaptation and on
    the adapted, unmerged model (a ``peft.PeftModel`` or a vitlab ``linear`` / ``adapter`` model).

    For a ``PeftModel`` only the wrapped model's own weights count (tuner-level shared tensors such as KAdaptation's
    ``base_model.kadaptation_A`` are adapter tensors); peft's adapter tensors and ``modules_to_save`` copies are left
    out and ``.base_layer.`` / ``.original_module.`` names folded back (see ``_peft_base_state``).

    Args:
        model: a base model, or a model adapted by ``vitlab.peft`` / peft (not merged: merging changes the weights).
        head_modules: classifier module names to leave out (default: the adapted model's ``head_modules`` option,
            else timm's ``get_classifier()`` / a top-level ``head`` or ``classifier``).

    Returns:
        64-character hex digest (``vitlab.checkpoint.state_dict_sha256`` of the base tensors).

    Example:
        >>> import timm
        >>> from vitlab.peft import build_peft_transform
        >>> vit = lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32,
        ...                                 depth=1, num_heads=2, num_classes=3)
        >>> base = vit()
        >>> digest = frozen_base_sha256(base)
        >>> frozen_base_sha256(build_peft_transform("lora_qv", r=2)(base)) == digest
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"frozen_base_sha256 takes an nn.Module, got {type(model).__name__}")
    spec = model.__dict__.get(PEFT_SPEC_ATTR)
    if isinstance(model, PeftModel):
        inner = model.get_base_model()
        base = _peft_base_state(inner)
    else:
        inner = model
        adapter_names = set(spec["params"]) if spec else set()
        base = {name.replace(".base_layer.", "."): tensor for name, tensor in model.state_dict().items()
                if name not in adapter_names}
    heads = classifier_names(inner, head_modules or (spec or {}).get("options", {}).get("head_modules"))
    return state_dict_sha256({name: tensor for name, tensor in base.items()
                              if not any(name.startswith(h + ".") for h in heads)})


def _check_unmerged(model: PeftModel) -> None:
    merged = [name for name, module in model.named_modules() if isinstance(module, BaseTunerLayer) and module.merged]
    if merged:
        raise ValueError(f"{type(model).__name__} has merged adapter layers ({merged[:3]}): its base weights hold the "
                         "update, so the recorded base hash would be wrong; call model.unmerge_adapter() (or "
                         "vitlab.peft.unmerge_adapters(model)) before saving")


def _base_name(base_weights: Any) -> str | None:
    if isinstance(base_weights, dict):
        return base_weights.get("hub_id") or base_weights.get("path")
    return None if base_weights is None else str(base_weights)


def _json_object(path: Path, advice: str) -> dict[str, Any]:
    """The JSON object in ``path`` (untrusted: ``CheckpointError`` naming ``advice`` when absent or damaged)."""
    if not path.is_file():
        raise CheckpointError(f"{path.parent} has no {path.name}: {advice}")
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the folder is damaged: {advice}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} holds a JSON {type(value).__name__}, not an object; the folder is damaged: "
                              f"{advice}")
    return value


def folder_meta(folder: Path, adapter_dir: Path | None = None) -> dict[str, Any]:
    """The ``vitlab.json`` object of a peft adapter folder, after checking that its ``adapter_config.json`` (in
    ``adapter_dir``, default ``folder``) is a JSON object naming a peft method known here (peft itself fails with a
    KeyError or TypeError on a damaged one)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    advice = "rebuild the base model yourself and call PeftModel.from_pretrained(base, folder)"
    if not (folder / VITLAB_META).is_file():
        raise CheckpointError(f"{folder} has no {VITLAB_META} (not written by vitlab): {advice}")
    config = (adapter_dir or folder) / CONFIG_NAME
    peft_type = _json_object(config, "re-export the run, or convert the adapter again").get("peft_type")
    if not isinstance(peft_type, str) or peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise CheckpointError(f"{config} names peft_type {peft_type!r}, which is no peft method known "
                              "here (import the package that registers it; vitlab.peft registers KADAPTATION and "
                              "LORA_QV)")
    return _json_object(folder / VITLAB_META, advice)


def save_peft_folder(folder: str | Path, model: PeftModel, meta: dict[str, Any]) -> Path:
    """``model.save_pretrained(folder)`` plus ``folder/vitlab.json`` (``meta``: base model name/kwargs, base weights,
    ``frozen_base_sha256``, which ``vitlab.peft.load_adapter`` checks).

    ``adapter_config.json``'s ``base_model_name_or_path`` is set from ``meta["base_weights"]`` (its ``hub_id`` or
    ``path``, or the path string). Nothing is looked up on the Hub while saving.
    """
    folder = Path(folder)
    name = _base_name(meta.get("base_weights"))
    for config in model.peft_config.values():
        config.base_model_name_or_path = name
    model.save_pretrained(str(folder), save_embedding_layers=False)
    try:
        text = json.dumps(meta, indent=2, sort_keys=True)
    except TypeError as err:
        raise CheckpointError(f"adapter metadata must be JSON-serialisable: {err}") from err
    (folder / VITLAB_META).write_text(text + "\n")
    return folder


def _save_peft_adapter(
    path: Path, model: PeftModel, base_sha256: str | None, model_name: str | None, model_kwargs: dict[str, Any],
    extra: dict[str, Any],
) -> Path:
    if path.suffix == ".safetensors":
        raise ValueError(f"{path}: a peft method's model is saved as a peft adapter folder (adapter_config.json + "
                         f"adapter_model.safetensors + {VITLAB_META}), not one .safetensors file: pass the folder, "
                         f"e.g. save_adapter({str(path.with_suffix(''))!r}, model)")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file; save_adapter writes a peft adapter folder there: pass a folder path")
    _check_unmerged(model)
    spec = model.__dict__.get(PEFT_SPEC_ATTR)
    meta = {"model_name": model_name, "model_kwargs": model_kwargs, "base_weights": extra.get("base_weights"),
            "frozen_base_sha256": base_sha256 or frozen_base_sha256(model),
            "peft": {k: spec[k] for k in ("method", "target_modules", "options")} if spec else None, "extra": extra}
    return save_peft_folder(path, model, meta)


def save_adapter(
    path: str | Path, model: nn.Module, *, base_sha256: str | None = None, model_name: str | None = None,
    model_kwargs: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
) -> Path:
    """Write the adaptation (+ head) of ``model``: a peft adapter folder for a ``PeftModel``, else a vitlab adapter
    checkpoint file.

    Args:
        path: for a ``peft.PeftModel`` (``kadaptation``, ``lora``, ``lokr``, ``lora_qv``): the folder
            (``save_pretrained`` files + ``vitlab.json``; a ``.safetensors`` path is refused); for ``linear`` and
            ``adapter``: a ``.safetensors`` file or a folder.
        model: an adapted, unmerged model.
        base_sha256: hash of the frozen base (default: ``frozen_base_sha256(model)``); ``load_adapter`` checks it.
        model_name, model_kwargs: how to rebuild the base architecture (timm name and kwargs).
        extra: more JSON metadata (data config, metrics); for a vitlab file ``extra["peft"]`` is written by this
            function; for a peft folder ``extra["base_weights"]`` (where the base weights are) is also recorded at
            the top of ``vitlab.json``, where ``vitlab.peft.load_adapted_model`` reads it.

    Returns:
        The written folder (PeftModel) or file path.

    Example:
        >>> import tempfile, timm
        >>> from vitlab.peft import build_peft_transform
        >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=1,
        ...                         num_heads=2, num_classes=3)
        >>> folder = save_adapter(tempfile.mkdtemp() + "/adapter", build_peft_transform("lora_qv", r=2)(vit))
        >>> sorted(p.name for p in folder.iterdir() if p.suffix != ".md")  # peft also writes a README.md card
        ['adapter_config.json', 'adapter_model.safetensors', 'vitlab.json']
    """
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict of JSON metadata or None, got {type(extra).__name__}")
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise TypeError(f"model_kwargs must be a dict of timm.create_model kwargs or None, got "
                        f"{type(model_kwargs).__name__}")
    path = Path(path).expanduser()
    if isinstance(model, PeftModel):
        return _save_peft_adapter(path, model, base_sha256, model_name, model_kwargs or {}, dict(extra or {}))
    spec = get_peft_spec(model)
    tensors = adapter_state_dict(model)
    meta_extra = dict(extra or {})
    meta_extra["peft"] = {k: spec[k] for k in ("method", "target_modules", "options")}
    return save_checkpoint(path, tensors, kind="adapter", model_name=model_name, model_kwargs=model_kwargs or {},
                           base_sha256=base_sha256 or frozen_base_sha256(model), extra=meta_extra)


def _load_peft_folder(folder: Path, base_model: nn.Module, check_base: bool,
                      adapter_name: str | None = None) -> PeftModel:
    """``PeftModel.from_pretrained`` of ``folder`` (or of its subfolder ``adapter_name``, loaded under that name, as
    peft's ``save_pretrained`` lays out an adapter not named ``default``) after checking ``folder/vitlab.json``."""
    meta_path, source = folder / VITLAB_META, folder if adapter_name is None else folder / adapter_name
    if meta_path.is_file():  # folder_meta validates adapter_config.json and vitlab.json
        recorded = folder_meta(folder, source).get("frozen_base_sha256")
        if recorded is not None and not isinstance(recorded, str):
            raise CheckpointError(f"{meta_path} records frozen_base_sha256 {recorded!r}, not a hex string; the "
                                  "folder is damaged: save the adapter again, or pass check_base=False")
        if check_base and recorded:
            actual = frozen_base_sha256(base_model)
            if actual != recorded:
                raise CheckpointError(f"{folder} was made for base weights {recorded}, but the given base model "
                                      f"hashes to {actual}: load the base checkpoint it was trained from")
    weights = [source / name for name in (SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME) if (source / name).is_file()]
    if not weights:
        raise CheckpointError(f"{source} has {CONFIG_NAME} but no {SAFETENSORS_WEIGHTS_NAME}: the folder is "
                              "incomplete; save the adapter again (save_adapter / model.save_pretrained)")
    try:
        return PeftModel.from_pretrained(base_model, str(source), adapter_name=adapter_name or "default")
    except SafetensorError as err:
        raise CheckpointError(f"{weights[0]} is not a readable safetensors file ({err}); the folder is damaged: save "
                              "the adapter again") from None
    except (pickle.UnpicklingError, EOFError, OSError, RuntimeError) as err:
        if weights[0].name != WEIGHTS_NAME:
            raise
        # peft reads adapter_model.bin with torch.load(weights_only=True); torch's message advises weights_only=False,
        # which would run whatever code the file holds
        raise CheckpointError(f"{weights[0]} is not a readable weights-only torch file ({type(err).__name__}); it is "
                              "damaged, or holds more than tensors (never load such a file with weights_only=False): "
                              "save the adapter again, with model.save_pretrained(folder) (safetensors)") from None


def load_adapter(path: str | Path, base_model: nn.Module, check_base: bool = True) -> nn.Module:
    """Load a saved adaptation onto ``base_model`` (adapted in place) and return the adapted model.

    Args:
        path: a peft adapter folder (``save_adapter`` of a ``PeftModel``, a run's ``adapter/``, or any peft folder;
            a ``save_adapter`` folder whose one adapter is not named ``default`` holds it in a subfolder, as peft
            saves it, and it loads under its name), or a vitlab adapter file written by ``save_adapter`` (``linear``
            / ``adapter`` methods).
        base_model: the base the adapter was trained on (same architecture; the head may be freshly initialised).
        check_base: refuse a base whose ``frozen_base_sha256`` differs from the recorded one (a peft folder without
            ``vitlab.json``, or one that records no hash, is loaded unchecked).

    Returns:
        The adapted model, equal to the one that was saved: for a peft folder ``PeftModel.from_pretrained(base_model,
        folder)`` (inference mode, as peft loads it); otherwise the re-applied vitlab method with its tensors.

    Raises:
        CheckpointError: another base, a damaged folder, a file inside a peft folder (pass the folder), or a vitlab
            0.1 file of a peft method (convert it with ``vitlab peft convert``).
    """
    from vitlab.peft.methods import build_peft_transform

    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
    if not isinstance(base_model, nn.Module):
        raise TypeError(f"base_model must be the nn.Module the adapter was trained on, got {type(base_model).__name__}")
    if not isinstance(check_base, bool):
        raise TypeError(f"check_base must be True or False, got {check_base!r}")
    path = Path(path).expanduser()
    if isinstance(base_model, PeftModel) or any(isinstance(m, BaseTunerLayer) for m in base_model.modules()):
        raise ValueError(f"base_model already carries peft adapters ({type(base_model).__name__}); load_adapter "
                         "wraps a plain base model: pass a fresh base, or add this adapter to the PeftModel with "
                         "model.load_adapter(folder, adapter_name='<name>')")
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    named = sorted(sub.name for sub in folder.iterdir() if (sub / CONFIG_NAME).is_file()) \
        if path.is_dir() and not (folder / CONFIG_NAME).is_file() and (folder / VITLAB_META).is_file() else []
    if len(named) == 1:  # save_adapter of a model whose one adapter is not named "default" (peft's layout)
        return _load_peft_folder(folder, base_model, check_base, adapter_name=named[0])
    if named:
        first, second = (folder / name for name in named[:2])
        raise CheckpointError(f"{folder} holds several peft adapters, in subfolders {named}: load one and add the "
                              f"others, PeftModel.from_pretrained(base, '{first}', adapter_name='{first.name}') then "
                              f"model.load_adapter('{second}', adapter_name='{second.name}')")
    if Path(path).is_dir() and not (folder / CONFIG_NAME).is_file() and any(
            (folder / name).is_file() for name in (SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME, VITLAB_META)):
        raise CheckpointError(f"{folder} is a peft adapter folder without {CONFIG_NAME}: the folder is incomplete; "
                              "save the adapter again (save_adapter / model.save_pretrained)")
    if path.is_dir() and not any((path / name).is_file() for name in (CONFIG_NAME, MODEL_FILE_NAME, ADAPTER_NAME)):
        raise CheckpointError(f"no adapter in {path}: pass a peft adapter folder (adapter_config.json + "
                              "adapter_model.safetensors, from save_adapter / model.save_pretrained, or a run's "
                              "adapter/ folder) or a vitlab adapter file (save_adapter of a linear / adapter model)")
    if (folder / CONFIG_NAME).is_file():
        if not Path(path).is_dir() and Path(path).name in (CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, VITLAB_META):
            raise CheckpointError(f"{path} is one file of the peft adapter folder {folder}: pass the folder, "
                                  f"load_adapter({str(folder)!r}, base)")
        if Path(path).is_dir():
            return _load_peft_folder(folder, base_model, check_base)
    peft = read_metadata(path).get("extra", {}).get("peft")
    if not peft:
        raise CheckpointError(f"{path} has no extra['peft'] record; it was not written by vitlab.peft.save_adapter")
    if peft["method"] in PEFT_NATIVE_METHODS:
        raise CheckpointError(
            f"{path} is a vitlab 0.1 {peft['method']!r} adapter file; vitlab now saves this method as a peft adapter "
            f"folder. Convert it once with `vitlab peft convert {path} --out <folder>` (vitlab.peft.convert_adapter), "
            "then load it with load_adapter(<folder>, base) or PeftModel.from_pretrained(base, <folder>)")
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
