"""What a fine-tuning run leaves behind: a plain merged model every tool reads, plus the adaptation alone.

``export_adapted_model(run_dir, model, ...)`` writes, for a model adapted by ``vitlab.peft``:

- ``model.safetensors`` (kind ``model``): the adaptation folded into the weights (``merge_adapters`` or
  ``merge_subspace``), exactly the base architecture: ``vitlab eval``, ``robustness``, ``diagnose-negatives`` and
  ``timm.create_model`` + ``load_state_dict`` use it, at the base model's speed;
- for the peft methods (``kadaptation``, ``lora``, ``lokr``, ``lora_qv``): ``adapter/``, a standard peft adapter
  folder (``adapter_config.json`` + ``adapter_model.safetensors``, written by ``PeftModel.save_pretrained``) plus
  ``adapter/vitlab.json`` (the timm name and kwargs of the base, where its weights came from, the base SHA-256 and
  ``frozen_base_sha256``). ``vitlab.peft.load_adapter("runs/<run>/adapter", base)`` loads it after checking that
  ``base`` is the frozen base it was trained on; after ``import vitlab``, ``PeftModel.from_pretrained(base,
  "runs/<run>/adapter")`` loads it unchecked;
- for ``linear`` and ``adapter`` (bottleneck adapters, not peft methods): ``adapter.safetensors`` (kind ``adapter``,
  ``vitlab.peft.save_adapter``); for ``subspace``: ``subspace.safetensors`` (θ_d, the SAID scales and the head;
  θ = θ₀ + P·θ_d is rebuilt from the base weights and the projection seed in ``extra["peft"]``).

Bottleneck adapters are nonlinear and cannot be merged: their run has only ``adapter.safetensors``, and
``load_adapted_model`` rebuilds the adapted model from it and the recorded base weights
(``vitlab.checkpoint.load_model`` calls it for ``adapter`` files); it also rebuilds a peft ``adapter/`` folder.

Example:
    >>> import timm
    >>> from vitlab.peft import build_peft_transform
    >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=1,
    ...                         num_heads=2, num_classes=10)
    >>> model = build_peft_transform("lora_qv", r=2)(vit)
    >>> import tempfile
    >>> files = export_adapted_model(tempfile.mkdtemp(), model, model_name="vit_tiny_patch16_224", model_kwargs={})
    >>> sorted(p.name for p in files)
    ['adapter', 'model.safetensors']
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.utils import CONFIG_NAME
from torch import nn

from vitlab.checkpoint import (
    CheckpointError,
    build_model,
    load_checkpoint,
    load_model,
    load_pretrained,
    read_metadata,
    save_checkpoint,
    state_dict_sha256,
)
from vitlab.checkpoint.format import ADAPTER_NAME
from vitlab.peft.adapter import AdapterWrapper
from vitlab.peft.control import PEFT_SPEC_ATTR, adapter_layers, get_peft_spec, merge_adapters
from vitlab.peft.freeze import restore_norm_statistics
from vitlab.peft.io import VITLAB_META, folder_meta, frozen_base_sha256, load_adapter, save_adapter, save_peft_folder

__all__ = ["ADAPTER_DIR", "ADAPTER_NAME", "SUBSPACE_NAME", "VITLAB_META", "export_adapted_model", "load_adapted_model",
           "load_run_model", "save_peft_folder"]

SUBSPACE_NAME = "subspace.safetensors"
ADAPTER_DIR = "adapter"


def _merged_copy(model: nn.Module) -> nn.Module | None:
    """A plain copy with every delta folded in; ``None`` when a nonlinear bottleneck adapter forbids merging."""
    from vitlab.peft.intrinsic import merge_subspace
    from vitlab.peft.intrinsic.model import SubspaceModel

    if isinstance(model, SubspaceModel):
        return merge_subspace(model)
    if any(isinstance(layer, AdapterWrapper) for _, layer in adapter_layers(model)):
        return None
    merged = copy.deepcopy(model)
    if isinstance(merged, PeftModel):
        return merge_adapters(merged, unload=True)
    restore_norm_statistics(merged)  # frozen-statistics BatchNorms back to plain ones (linear probing has no layers)
    merged.__dict__.pop(PEFT_SPEC_ATTR, None)
    return merged


def export_adapted_model(
    run_dir: str | Path, model: nn.Module, *, model_name: str | None, model_kwargs: dict[str, Any],
    base_sha256: str | None = None, base_weights: str | dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> list[Path]:
    """Write the merged model and the adaptation of ``model`` into ``run_dir`` (see the module docstring).

    Args:
        run_dir: folder of the run.
        model: a model adapted by ``vitlab.peft`` (any method but ``full``), unmerged; left unchanged.
        model_name, model_kwargs: ``timm.create_model`` arguments that rebuild the base architecture.
        base_sha256: ``state_dict_sha256`` of the base model before wrapping (recorded in the ``subspace`` file and
            in ``adapter/vitlab.json``; ``None``: the subspace file records ``frozen_base_sha256`` of its base).
            Adapter files and ``adapter/vitlab.json`` also record ``frozen_base_sha256(model)`` (head excluded),
            which ``load_adapter`` checks.
        base_weights: where the pretrained base weights came from: a ``model.safetensors`` path, or a JSON dict such
            as ``{"source": "hf-hub", "hub_id": ..., "sha256": ...}`` (opaque here; ``vitlab.checkpoint
            .load_pretrained`` reads it back). ``None``: trained from random init.
        extra: more JSON metadata (data config, metrics).

    Returns:
        The written files (the peft adapter as its folder), the merged ``model.safetensors`` first when it exists.
    """
    from vitlab.peft.intrinsic.model import SubspaceModel

    spec = get_peft_spec(model)
    if spec["method"] == "full":
        raise ValueError("full fine-tuning has no adaptation to export: save the model with "
                         "vitlab.checkpoint.save_checkpoint(kind='model')")
    run_dir = Path(run_dir).expanduser()
    meta = {**(extra or {}), "base_weights": base_weights}
    written = []
    merged = _merged_copy(model)
    if merged is not None:
        written.append(save_checkpoint(run_dir / "model.safetensors", merged.state_dict(), kind="model",
                                       model_name=model_name, model_kwargs=model_kwargs, extra=meta))
    peft = {k: spec[k] for k in ("method", "target_modules", "options")}
    if isinstance(model, SubspaceModel):
        tensors = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
        # θ₀ stays in the wrapped base untouched: its frozen weights identify the base when none was given
        written.append(save_checkpoint(run_dir / SUBSPACE_NAME, tensors, kind="subspace", model_name=model_name,
                                       model_kwargs=model_kwargs,
                                       base_sha256=base_sha256 or frozen_base_sha256(model.base),
                                       extra={**meta, "peft": peft}))
    elif isinstance(model, PeftModel):
        written.append(save_peft_folder(run_dir / ADAPTER_DIR, model, {
            "model_name": model_name, "model_kwargs": model_kwargs, "base_weights": base_weights,
            "base_sha256": base_sha256, "frozen_base_sha256": frozen_base_sha256(model), "peft": peft,
            "extra": extra or {}}))
    else:
        written.append(save_adapter(run_dir / ADAPTER_NAME, model, base_sha256=frozen_base_sha256(model),
                                    model_name=model_name, model_kwargs=model_kwargs, extra=meta))
    return written


_ADAPTER_ADVICE = ("load it on the base it was trained on (PeftModel.from_pretrained(base, folder) for an adapter "
                   "folder, vitlab.peft.load_adapter(path, base) for an adapter file)")
_SUBSPACE_ADVICE = ("evaluate the run's merged model instead: pass the run folder (`vitlab eval --checkpoint RUN`) "
                    "or vitlab.checkpoint.load_model(RUN / 'model.safetensors')")


def _load_base(meta: dict[str, Any], base_weights: Any, what: Path, advice: str = _ADAPTER_ADVICE) -> nn.Module:
    if not base_weights or (isinstance(base_weights, str) and not Path(base_weights).exists()):
        recorded = base_weights or "not recorded: trained from random init"
        raise CheckpointError(f"{what} needs its base weights ({recorded}): {advice}")
    base = build_model(meta)
    load_pretrained(base, base_weights)  # its head, if it fits, is replaced by the adapter's own below
    return base


def _load_subspace(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """A ``subspace.safetensors`` (θ_d, SAID scales, head) on its recorded base: the unmerged ``SubspaceModel``."""
    from vitlab.peft.subspace import build_subspace_transform

    tensors, meta = load_checkpoint(path, expected_kind="subspace")
    extra = meta.get("extra") if isinstance(meta.get("extra"), dict) else {}
    peft = extra.get("peft")
    if not isinstance(peft, dict) or peft.get("method") != "subspace" or not isinstance(peft.get("options"), dict):
        raise CheckpointError(f"{path} has no extra['peft'] record of a subspace run: it was not written by "
                              "vitlab.peft.export_adapted_model (a `vitlab fit` run with peft.method: subspace)")
    base = _load_base(meta, extra.get("base_weights"), path, _SUBSPACE_ADVICE)
    if meta["base_sha256"] not in (state_dict_sha256(base.state_dict()), frozen_base_sha256(base)):
        raise CheckpointError(f"{path} was trained on other base weights than {extra.get('base_weights')} holds now "
                              f"(recorded base_sha256 {meta['base_sha256'][:12]}...): restore the base it was trained "
                              "on, or evaluate the run's merged model.safetensors")
    try:
        model = build_subspace_transform(peft.get("target_modules"), **peft["options"])(base)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its recorded subspace options do not rebuild the model ({err})") from err
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    wrong = sorted(n for n in set(params) & set(tensors) if params[n].shape != tensors[n].shape)
    if set(params) != set(tensors) or wrong:
        missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        raise CheckpointError(f"{path} does not fit the rebuilt subspace model: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}, other shapes {wrong[:5]}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)
    return model.eval(), meta


def load_adapted_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild an adapted model from a run's ``adapter/`` folder (peft), ``adapter.safetensors`` (vitlab) or
    ``subspace.safetensors`` (θ = θ₀ + P·θ_d, unmerged) and the base weights it records; returns
    ``(model.eval(), meta)``.

    Raises:
        CheckpointError: not an adapter, its base weights are not recorded / no longer where they were, or (subspace)
            they are not the weights it was trained on.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        meta = folder_meta(path)
        base = _load_base(meta, meta.get("base_weights"), path)
        with torch.no_grad():
            model = PeftModel.from_pretrained(base, str(path))
        return model.eval(), meta
    if path.is_file() and read_metadata(path)["kind"] == "subspace":
        return _load_subspace(path)
    _, meta = load_checkpoint(path, expected_kind="adapter")
    base = _load_base(meta, meta.get("extra", {}).get("base_weights"), path)
    with torch.no_grad():
        model = load_adapter(path, base)
    return model.eval(), meta


def load_run_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model a run folder (or weights file) evaluates with: its merged ``model.safetensors``, or, for a run of
    a non-mergeable bottleneck adapter (only ``adapter.safetensors``) or a ``subspace.safetensors`` file, the
    adaptation rebuilt on its recorded base; a run's ``adapter/`` folder (peft format) is read by
    ``load_adapted_model``.

    Returns:
        ``(model.eval(), metadata)``, as `vitlab.checkpoint.load_model`.
    """
    from vitlab.checkpoint import resolve_weights_path

    path = Path(path).expanduser()
    if path.is_dir() and (path / CONFIG_NAME).is_file():  # a run's adapter/ folder (peft format)
        return load_adapted_model(path)
    if read_metadata(path)["kind"] in ("adapter", "subspace"):
        return load_adapted_model(resolve_weights_path(path))
    return load_model(path)
