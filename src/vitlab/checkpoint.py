"""The vitlab checkpoint contract: safetensors weights plus a ``vitlab`` JSON metadata entry.

A vitlab weights file is a plain ``.safetensors`` file. Its string metadata holds one key, ``"vitlab"``, whose value
is JSON with these fields (``FORMAT_VERSION`` 1)::

    {
      "format_version": 1,
      "kind": "model" | "adapter" | "subspace",
      "model_name": "vitlab_vit_tiny_32",          # timm registry name
      "model_kwargs": {"num_classes": 10, ...},     # timm.create_model(model_name, **model_kwargs) rebuilds it
      "base_sha256": null | "<hex>",                # derived kinds: hash of the base weights they apply to
      "extra": {...},                               # free-form: data config, metrics, peft config, ...
      "vitlab_version": "0.1.0"
    }

The same JSON is written beside the weights as a readable ``config.json``. This module is the only place that writes
or reads the entry. Nothing here unpickles anything.

Example:
    >>> import timm, vitlab
    >>> model = timm.create_model("vitlab_vit_tiny_32", num_classes=10)
    >>> save_checkpoint("model.safetensors", model.state_dict(), kind="model",
    ...                 model_name="vitlab_vit_tiny_32", model_kwargs={"num_classes": 10})  # doctest: +SKIP
    >>> model2, meta = load_model("model.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "CheckpointError",
    "build_model",
    "load_checkpoint",
    "load_model",
    "load_pretrained",
    "read_metadata",
    "resolve_weights_path",
    "save_checkpoint",
    "state_dict_sha256",
]

FORMAT_VERSION = 1
KINDS = ("model", "adapter", "subspace")
METADATA_KEY = "vitlab"
WEIGHTS_NAME = "model.safetensors"
ADAPTER_NAME = "adapter.safetensors"


class CheckpointError(ValueError):
    """A weights file is missing, lacks vitlab metadata, or is not the kind the caller expected."""


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over sorted tensor names, dtypes, shapes and bytes: identifies a set of base weights.

    Args:
        state_dict: name -> tensor (any device; hashed from a contiguous CPU copy).

    Returns:
        64-character hex digest. Equal weights give equal digests on any device.
    """
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict_sha256 expects a dict of tensors, got {type(state_dict).__name__}")
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # reshape(-1) first: a 0-d tensor (e.g. BatchNorm num_batches_tracked) cannot be viewed as bytes
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _version() -> str:
    from vitlab import __version__

    return __version__


def save_checkpoint(
    path: str | Path,
    tensors: dict[str, torch.Tensor],
    *,
    kind: str,
    model_name: str | None,
    model_kwargs: dict[str, Any],
    base_sha256: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``tensors`` to a safetensors file with the vitlab metadata entry, plus ``config.json`` beside it.

    Args:
        path: target file (``.safetensors``) or a folder (then ``<folder>/model.safetensors``).
        tensors: name -> tensor. Shared storage is cloned so safetensors accepts it.
        kind: one of ``KINDS``.
        model_name: timm registry name that rebuilds the (base) model, or ``None`` for a hand-built module.
        model_kwargs: JSON-serialisable kwargs for ``timm.create_model``.
        base_sha256: required for ``adapter`` and ``subspace``: ``state_dict_sha256`` of the base weights.
        extra: JSON-serialisable free-form information (data config, metrics, method options).

    Returns:
        The path of the written safetensors file.
    """
    if kind not in KINDS:
        raise CheckpointError(f"unknown checkpoint kind {kind!r}; use one of {KINDS}")
    if kind != "model" and not base_sha256:
        raise CheckpointError(f"a {kind!r} checkpoint needs base_sha256=state_dict_sha256(base_model.state_dict())")
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / WEIGHTS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "model_name": model_name,
        "model_kwargs": dict(model_kwargs),
        "base_sha256": base_sha256,
        "extra": dict(extra or {}),
        "vitlab_version": _version(),
    }
    try:
        text = json.dumps(meta, sort_keys=True)
    except TypeError as err:
        raise CheckpointError(f"checkpoint metadata must be JSON-serialisable: {err}") from err
    cpu = {name: t.detach().cpu().clone().contiguous() for name, t in tensors.items()}
    save_file(cpu, str(path), metadata={METADATA_KEY: text})
    (path.parent / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def resolve_weights_path(path: str | Path) -> Path:
    """Accept a ``.safetensors`` file or a run folder holding ``model.safetensors``; return the file path."""
    path = Path(path)
    if path.is_dir():
        # a run of a nonlinear (bottleneck) adapter has only adapter.safetensors (see vitlab.peft.export)
        path = path / WEIGHTS_NAME if (path / WEIGHTS_NAME).is_file() or not (path / ADAPTER_NAME).is_file() \
            else path / ADAPTER_NAME
    if not path.is_file():
        raise CheckpointError(
            f"no weights at {path}: pass a model.safetensors file or a run folder that holds one "
            "(written at the end of `vitlab fit`)"
        )
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path} is not a .safetensors file; vitlab never unpickles weights")
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Return the parsed ``vitlab`` metadata of a weights file (or run folder)."""
    path = resolve_weights_path(path)
    with safe_open(str(path), framework="pt") as handle:
        raw = (handle.metadata() or {}).get(METADATA_KEY)
    if raw is None:
        raise CheckpointError(
            f"{path} has no 'vitlab' metadata: it was not written by vitlab.checkpoint.save_checkpoint. "
            "Load plain safetensors weights with safetensors.torch.load_file and model.load_state_dict instead"
        )
    meta = json.loads(raw)
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {meta.get('format_version')}, this vitlab reads {FORMAT_VERSION}"
        )
    return meta


def load_checkpoint(
    path: str | Path, expected_kind: str | None = None, base_sha256: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load tensors and metadata, checking the kind and (for derived kinds) the base-weight hash.

    Args:
        path: ``.safetensors`` file or run folder.
        expected_kind: if given, the metadata kind must equal it.
        base_sha256: if given, the stored ``base_sha256`` must equal it (the base model the adapter is applied to).

    Returns:
        ``(tensors, metadata)`` with tensors on the CPU.
    """
    meta = read_metadata(path)
    if expected_kind is not None and meta["kind"] != expected_kind:
        raise CheckpointError(
            f"{path} holds a {meta['kind']!r} checkpoint but a {expected_kind!r} one was expected"
        )
    if base_sha256 is not None and meta.get("base_sha256") != base_sha256:
        raise CheckpointError(
            f"{path} was made for base weights {meta.get('base_sha256')}, but the given base model hashes to "
            f"{base_sha256}: load the base checkpoint it was trained from"
        )
    return load_file(str(resolve_weights_path(path))), meta


def build_model(meta: dict[str, Any]) -> nn.Module:
    """Rebuild the (base) model architecture named in checkpoint metadata, randomly initialised."""
    import timm

    import vitlab.models  # noqa: F401  (registers vitlab's timm models)

    name = meta.get("model_name")
    if not name:
        raise CheckpointError("checkpoint metadata has no model_name: rebuild the module yourself and load_state_dict")
    return timm.create_model(name, pretrained=False, **meta.get("model_kwargs", {}))


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a ``kind="model"`` checkpoint without the training code; returns ``(model.eval(), metadata)``.

    An ``adapter`` file whose metadata records its base weights (``vitlab fit`` of a bottleneck adapter, which cannot
    be merged) is rebuilt as the adapted model by ``vitlab.peft.export.load_adapted_model``.
    """
    if read_metadata(path)["kind"] == "adapter":
        from vitlab.peft.export import load_adapted_model

        return load_adapted_model(path)
    tensors, meta = load_checkpoint(path, expected_kind="model")
    model = build_model(meta)
    model.load_state_dict(tensors, strict=True)
    return model.eval(), meta


def load_pretrained(model: nn.Module, path: str | Path) -> None:
    """Load a vitlab ``model.safetensors`` into ``model``; a classifier whose class count differs is skipped.

    Raises:
        ValueError: when a non-classifier tensor is missing or has another shape (a different architecture).
    """
    tensors, _ = load_checkpoint(path, expected_kind="model")
    own = model.state_dict()
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier", "head")
    classifier = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    bad = [k for k in own if k not in tensors or tensors[k].shape != own[k].shape]
    bad = [k for k in bad if not any(k.startswith(f"{c}.") for c in classifier)]
    if bad:
        raise ValueError(f"pretrained weights {path} do not fit this model: mismatched or missing {bad[:10]}")
    usable = {k: v for k, v in tensors.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(usable, strict=False)
