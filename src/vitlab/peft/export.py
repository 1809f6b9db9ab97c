"""What a fine-tuning run leaves behind: a plain merged model every tool reads, plus the adaptation alone.

``export_adapted_model(run_dir, model, ...)`` writes, for a model adapted by ``vitlab.peft``:

- ``model.safetensors`` (kind ``model``): the adaptation folded into the weights (``merge_adapters`` or
  ``merge_subspace``), exactly the base architecture: ``vitlab eval``, ``robustness``, ``diagnose-negatives`` and
  ``timm.create_model`` + ``load_state_dict`` use it, at the base model's speed;
- ``adapter.safetensors`` (kind ``adapter``: adapter parameters + head, ``vitlab.peft.save_adapter``) or, for
  ``subspace``, ``subspace.safetensors`` (kind ``subspace``: θ_d, the SAID scales and the head; θ = θ₀ + P·θ_d is
  rebuilt from the base weights and the projection seed in ``extra["peft"]``). A few kB to MB beside the base.

Bottleneck adapters (``peft.method: adapter``) are nonlinear and cannot be merged: their run has only
``adapter.safetensors``, and ``load_adapted_model`` rebuilds the adapted model from it and the base weights whose path
is recorded in ``extra["base_weights"]`` (``vitlab.checkpoint.load_model`` calls it for ``adapter`` files).

Example:
    >>> import timm
    >>> from vitlab.peft import build_peft_transform
    >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=1,
    ...                         num_heads=2, num_classes=10)
    >>> model = build_peft_transform("lora_qv", r=2)(vit)
    >>> files = export_adapted_model("/tmp/vitlab_doctest_run", model, model_name="vit_tiny_patch16_224",
    ...                              model_kwargs={})  # doctest: +SKIP
    >>> sorted(p.name for p in files)  # doctest: +SKIP
    ['adapter.safetensors', 'model.safetensors']
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitlab.checkpoint import CheckpointError, build_model, load_checkpoint, load_pretrained, save_checkpoint
from vitlab.peft.adapter import AdapterWrapper
from vitlab.peft.control import adapter_layers, get_peft_spec, merge_adapters
from vitlab.peft.freeze import restore_norm_statistics
from vitlab.peft.io import frozen_base_sha256, load_adapter, save_adapter

__all__ = ["ADAPTER_NAME", "SUBSPACE_NAME", "export_adapted_model", "load_adapted_model"]

ADAPTER_NAME, SUBSPACE_NAME = "adapter.safetensors", "subspace.safetensors"


def _merged_copy(model: nn.Module) -> nn.Module | None:
    """A plain copy with every delta folded in; ``None`` when a nonlinear bottleneck adapter forbids merging."""
    from vitlab.peft.intrinsic import merge_subspace
    from vitlab.peft.intrinsic.model import SubspaceModel

    if isinstance(model, SubspaceModel):
        return merge_subspace(model)
    layers = adapter_layers(model)
    if any(isinstance(layer, AdapterWrapper) for _, layer in layers):
        return None
    merged = copy.deepcopy(model)
    if layers:
        merge_adapters(merged, unload=True)
    restore_norm_statistics(merged)  # frozen-statistics BatchNorms back to plain ones (linear probing has no layers)
    merged.__dict__.pop("vitlab_peft", None)
    return merged


def export_adapted_model(
    run_dir: str | Path, model: nn.Module, *, model_name: str | None, model_kwargs: dict[str, Any],
    base_sha256: str | None = None, base_weights: str | None = None, extra: dict[str, Any] | None = None,
) -> list[Path]:
    """Write the merged model and the adaptation of ``model`` into ``run_dir`` (see the module docstring).

    Args:
        run_dir: folder of the run.
        model: a model adapted by ``vitlab.peft`` (any method but ``full``), unmerged; left unchanged.
        model_name, model_kwargs: ``timm.create_model`` arguments that rebuild the base architecture.
        base_sha256: ``state_dict_sha256`` of the base model before wrapping (recorded in the ``subspace`` file;
            adapter files record ``frozen_base_sha256``, which ``load_adapter`` checks).
        base_weights: path of the pretrained base ``model.safetensors`` (recorded so the adapter can be re-applied).
        extra: more JSON metadata for both files (data config, metrics).

    Returns:
        The written files, the merged ``model.safetensors`` first when it exists.
    """
    from vitlab.peft.intrinsic.model import SubspaceModel

    spec = get_peft_spec(model)
    if spec["method"] == "full":
        raise ValueError("full fine-tuning has no adaptation to export: save the model with "
                         "vitlab.checkpoint.save_checkpoint(kind='model')")
    run_dir = Path(run_dir)
    meta = {**(extra or {}), "base_weights": base_weights}
    written = []
    merged = _merged_copy(model)
    if merged is not None:
        written.append(save_checkpoint(run_dir / "model.safetensors", merged.state_dict(), kind="model",
                                       model_name=model_name, model_kwargs=model_kwargs, extra=meta))
    if isinstance(model, SubspaceModel):
        tensors = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
        peft = {k: spec[k] for k in ("method", "target_modules", "options")}
        written.append(save_checkpoint(run_dir / SUBSPACE_NAME, tensors, kind="subspace", model_name=model_name,
                                       model_kwargs=model_kwargs, base_sha256=base_sha256 or "not recorded",
                                       extra={**meta, "peft": peft}))
    else:
        written.append(save_adapter(run_dir / ADAPTER_NAME, model, base_sha256=frozen_base_sha256(model),
                                    model_name=model_name, model_kwargs=model_kwargs, extra=meta))
    return written


def load_adapted_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild an adapted model from an ``adapter.safetensors`` and its recorded base weights; ``(model.eval(), meta)``.

    Raises:
        CheckpointError: not an adapter file, or its base weights are not recorded / no longer where they were.
    """
    _, meta = load_checkpoint(path, expected_kind="adapter")
    base_path = meta.get("extra", {}).get("base_weights")
    if not base_path or not Path(base_path).exists():
        raise CheckpointError(f"{path} needs its base weights ({base_path or 'not recorded: trained from random init'})"
                              ": load it with vitlab.peft.load_adapter(path, base_model) on the base it was trained on")
    base = build_model(meta)
    load_pretrained(base, base_path)  # its head, if it fits, is replaced by the adapter file's own below
    with torch.no_grad():
        model = load_adapter(path, base)
    return model.eval(), meta
