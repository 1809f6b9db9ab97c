"""The vitlab checkpoint contract: safetensors weights plus a ``vitlab`` JSON metadata entry.

A vitlab weights file is a plain ``.safetensors`` file. Its string metadata holds one key, ``"vitlab"``, whose value
is JSON with these fields (``FORMAT_VERSION`` 1)::

    {
      "format_version": 1,
      "kind": "model" | "adapter" | "subspace",
      "model_name": "vit_vitlab_tiny_patch4_32",          # timm registry name
      "model_kwargs": {"num_classes": 10, ...},     # timm.create_model(model_name, **model_kwargs) rebuilds it
      "base_sha256": null | "<hex>",                # derived kinds: hash of the base weights they apply to
      "extra": {...},                               # free-form: data config, metrics, peft config, ...
      "vitlab_version": "0.1.0"
    }

The same JSON is written beside the weights as a readable ``config.json``. This module is the only place that writes
or reads the entry. Nothing here unpickles anything.

Example:
    >>> import tempfile, timm, vitlab
    >>> model = timm.create_model("vit_vitlab_tiny_patch4_32", num_classes=10)
    >>> path = save_checkpoint(tempfile.mkdtemp(), model.state_dict(), kind="model",
    ...                        model_name="vit_vitlab_tiny_patch4_32", model_kwargs={"num_classes": 10})
    >>> path.name, load_model(path)[1]["model_kwargs"]
    ('model.safetensors', {'num_classes': 10})
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.overrides import TorchFunctionMode

from vitlab.errors import MissingFileError, WeightsError

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "LOADER_KEYWORDS",
    "CheckpointError",
    "MissingWeightsError",
    "build_model",
    "check_model_kwargs",
    "has_vitlab_metadata",
    "load_checkpoint",
    "load_model",
    "read_metadata",
    "read_tensor_shapes",
    "resolve_weights_path",
    "save_checkpoint",
    "state_dict_sha256",
]

FORMAT_VERSION = 1
KINDS = ("model", "adapter", "subspace")
METADATA_KEY = "vitlab"
WEIGHTS_NAME = "model.safetensors"
ADAPTER_NAME = "adapter.safetensors"
# Suffixes of pickled weights files, which save_checkpoint does not write (it would make a folder of that name).
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


# ``timm.create_model`` keywords that load weights. They never belong in stored ``model_kwargs``: rebuilding a model
# from a file's metadata would load (or ``torch.load``) whatever they name.
LOADER_KEYWORDS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir",
                   "pretrained_strict")


class CheckpointError(WeightsError):
    """A weights file is missing, corrupt, lacks vitlab metadata, or is not the kind the caller expected."""


class MissingWeightsError(CheckpointError, MissingFileError):
    """A weights file or run folder that is not there (both a ``CheckpointError`` and a ``FileNotFoundError``)."""


def check_model_kwargs(model_kwargs: Any, where: str) -> dict[str, Any]:
    """Refuse ``timm.create_model`` kwargs that are not a dict with string keys, or that hold a loader keyword.

    Args:
        model_kwargs: the kwargs to check.
        where: what they come from, for the message (``"model.kwargs"``, a file path).

    Returns:
        ``model_kwargs`` as a plain dict.

    Example:
        >>> check_model_kwargs({"num_classes": 10}, "model.kwargs")
        {'num_classes': 10}
    """
    if not isinstance(model_kwargs, dict):
        raise CheckpointError(f"{where}: model kwargs must be a mapping of keyword names to values, "
                              f"got {type(model_kwargs).__name__}")
    bad_keys = [k for k in model_kwargs if not isinstance(k, str)]
    if bad_keys:
        raise CheckpointError(f"{where}: model kwargs are keyword arguments, so their names must be strings; got "
                              f"{bad_keys[0]!r} ({type(bad_keys[0]).__name__})")
    loaders = sorted(set(model_kwargs) & set(LOADER_KEYWORDS))
    if loaders:
        raise CheckpointError(
            f"{where}: {', '.join(loaders)} load weights and are not model options; say where the starting weights "
            "come from with model.pretrained instead (timm, hf-hub:ORG/NAME, or a weights file / run folder path)"
        )
    return dict(model_kwargs)


def _check_state_dict(state_dict: Any, caller: str) -> None:
    """Refuse anything but a mapping of str names to dense tensors with data, naming the first bad entry
    (``TypeError`` for a wrong type, ``ValueError`` for a meta or sparse tensor)."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{caller} expects a dict of tensors (model.state_dict()), got {type(state_dict).__name__}")
    bad = next(((k, v) for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)),
               None)
    if bad is not None:
        raise TypeError(f"{caller} expects a dict of name -> tensor (model.state_dict()); entry {bad[0]!r} is a "
                        f"{type(bad[1]).__name__}")
    for name, tensor in state_dict.items():
        if tensor.is_meta:
            raise ValueError(f"{caller}: tensor {name!r} is on the meta device and holds no data: load or initialise "
                             "the weights first (model.to_empty(device='cpu') then load_state_dict / reset_parameters)")
        if tensor.layout != torch.strided:
            raise ValueError(f"{caller}: tensor {name!r} has layout {tensor.layout}; pass dense tensors "
                             "(tensor.to_dense())")


_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def _check_sha256(value: Any, what: str) -> str:
    """A 64-digit hex SHA-256 (``state_dict_sha256``'s form), lower-cased; anything else is a ``CheckpointError``."""
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise CheckpointError(f"{what} must be a 64-digit hex SHA-256 as state_dict_sha256(base_model.state_dict()) "
                              f"returns, got {value!r}")
    return value.lower()


def _non_finite(value: Any, where: str = "") -> str | None:
    """The key path of the first NaN / inf float inside nested dicts and lists (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "(the value itself)"
    if isinstance(value, Mapping):
        return next((found for k, v in value.items() if (found := _non_finite(v, f"{where}.{k}" if where else str(k)))),
                    None)
    if isinstance(value, list | tuple):
        return next((found for i, v in enumerate(value) if (found := _non_finite(v, f"{where}[{i}]"))), None)
    return None


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over sorted tensor names, dtypes, shapes and bytes: identifies a set of base weights.

    Args:
        state_dict: name -> tensor (any device; hashed from a contiguous CPU copy).

    Returns:
        64-character hex digest. Equal weights give equal digests on any device.
    """
    _check_state_dict(state_dict, "state_dict_sha256")
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().resolve_conj().resolve_neg().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # reshape(-1) first: a 0-d tensor (e.g. BatchNorm num_batches_tracked) cannot be viewed as bytes
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _version() -> str:
    from vitlab.version import __version__

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
    _check_state_dict(tensors, "save_checkpoint")
    if kind != "model" and not base_sha256:
        raise CheckpointError(f"a {kind!r} checkpoint needs base_sha256=state_dict_sha256(base_model.state_dict())")
    if base_sha256 is not None:
        base_sha256 = _check_sha256(base_sha256, "save_checkpoint: base_sha256")
    if not isinstance(model_name, str | None) or model_name == "":
        raise CheckpointError(f"save_checkpoint: model_name must be a timm model name (str) or None, got "
                              f"{model_name!r}")
    if not isinstance(model_kwargs, Mapping):
        raise CheckpointError(f"save_checkpoint: model kwargs must be a mapping of timm.create_model keywords, got "
                              f"{type(model_kwargs).__name__}")
    model_kwargs = check_model_kwargs(dict(model_kwargs), "save_checkpoint")  # read_metadata refuses the same
    if not isinstance(extra, Mapping | None):
        raise CheckpointError(f"save_checkpoint: extra must be a dict of JSON metadata or None, got "
                              f"{type(extra).__name__}")
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"save_checkpoint: path must be a .safetensors file or a folder (str or pathlib.Path), got "
                        f"{path!r} ({type(path).__name__})")
    path = Path(path).expanduser()  # as resolve_weights_path reads it
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise CheckpointError(f"save_checkpoint writes safetensors, not {path.name}: give a .safetensors file or a "
                              "folder (which gets model.safetensors)")
    if path.suffix.lower() != ".safetensors":
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
    non_finite = _non_finite(meta)
    if non_finite is not None:
        raise CheckpointError(f"checkpoint metadata must be JSON, which has no NaN or inf: {non_finite} is not "
                              "finite; store None or a string (e.g. 'nan') instead")
    try:
        text = json.dumps(meta, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint metadata must be JSON-serialisable (str, int, float, bool, None, lists "
                              f"and dicts with str keys): {err}") from err
    cpu = {name: t.detach().cpu().clone().contiguous() for name, t in tensors.items()}
    save_file(cpu, str(path), metadata={METADATA_KEY: text})
    (path.parent / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def resolve_weights_path(path: str | Path) -> Path:
    """Accept a ``.safetensors`` file or a run folder holding ``model.safetensors`` (``~`` is the home folder); return
    the file path."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"weights path must be a model.safetensors file or a run folder (str or pathlib.Path), got "
                        f"{path!r} ({type(path).__name__})")
    path = Path(path).expanduser()
    if path.is_dir():
        # a run of a nonlinear (bottleneck) adapter has only adapter.safetensors (see vitlab.peft.export)
        path = path / WEIGHTS_NAME if (path / WEIGHTS_NAME).is_file() or not (path / ADAPTER_NAME).is_file() \
            else path / ADAPTER_NAME
    if not path.is_file():
        raise MissingWeightsError(
            f"no weights at {path}: pass a model.safetensors file or a run folder that holds one "
            "(written at the end of `vitlab fit`)"
        )
    if path.suffix.lower() == ".ckpt":
        raise CheckpointError(f"{path} is a Lightning checkpoint: pass its run folder (or the run's "
                              "model.safetensors); the vitlab commands (eval, predict, robustness, diagnose-negatives) "
                              "also take a .ckpt inside a finished run's folder")
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{path} is not a .safetensors file; vitlab never unpickles weights")
    return path


def _read_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """The string metadata and the tensor shapes of a safetensors file, without reading any tensor data."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118
            return dict(handle.metadata() or {}), shapes
    except (SafetensorError, OSError, ValueError) as err:
        size = path.stat().st_size
        what = "empty" if size == 0 else f"corrupt or truncated ({size} bytes)"
        raise CheckpointError(f"{path} is not a readable safetensors file: {what} ({err}); "
                              "write it again or pass another file") from None


def has_vitlab_metadata(path: str | Path) -> bool:
    """True when a ``.safetensors`` file carries the ``vitlab`` metadata entry (read from its header only).

    Raises:
        TypeError: ``path`` is not a str or Path; MissingWeightsError: no file there (a folder is not a file);
        CheckpointError: the file is not a readable safetensors file.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"has_vitlab_metadata: path must be a .safetensors file (str or pathlib.Path), got {path!r} "
                        f"({type(path).__name__})")
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise MissingWeightsError(f"has_vitlab_metadata: {path} {what}; pass a .safetensors file (a run folder's is "
                                  f"{WEIGHTS_NAME})")
    return METADATA_KEY in _read_header(path)[0]


def read_tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file (or a run folder's), read from its header only."""
    return _read_header(resolve_weights_path(path))[1]


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Return the parsed ``vitlab`` metadata of a weights file (or run folder), checked for the contract's types.

    The metadata is untrusted input: malformed JSON, a wrong type or an unknown kind is a ``CheckpointError``.
    """
    path = resolve_weights_path(path)
    raw = _read_header(path)[0].get(METADATA_KEY)
    if raw is None:
        raise CheckpointError(
            f"{path} has no 'vitlab' metadata: it was not written by vitlab. To start a run from it, pass it as "
            "model.pretrained (any plain weights file loads through timm); in Python use "
            "vitlab.checkpoint.load_pretrained(model, path)"
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: its 'vitlab' metadata is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its 'vitlab' metadata is a {type(meta).__name__}, not a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):  # JSON true == 1 in Python
        newer = isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION
        fix = (f"upgrade vitlab (pip install -U vitlab; this is {_version()}) to read it" if newer else
               "load its tensors with safetensors.torch.load_file into the model they belong to and write them "
               "again with this vitlab's vitlab.checkpoint.save_checkpoint")
        raise CheckpointError(f"{path} has checkpoint format {version!r}, this vitlab reads {FORMAT_VERSION}: {fix}")
    if meta.get("kind") not in KINDS:
        raise CheckpointError(f"{path}: unknown checkpoint kind {meta.get('kind')!r} (expected one of {KINDS})")
    if not isinstance(meta.get("model_name"), str | None) or not isinstance(meta.get("extra", {}), dict):
        raise CheckpointError(f"{path}: 'model_name' must be a string and 'extra' an object in its metadata")
    meta["model_kwargs"] = check_model_kwargs(meta.get("model_kwargs", {}), str(path))
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
    if expected_kind is not None and expected_kind not in KINDS:
        raise CheckpointError(f"load_checkpoint: expected_kind {expected_kind!r} is not a checkpoint kind; use one of "
                              f"{KINDS} or None")
    if base_sha256 is not None:
        base_sha256 = _check_sha256(base_sha256, "load_checkpoint: base_sha256")
    meta = read_metadata(path)
    if expected_kind is not None and meta["kind"] != expected_kind:
        raise CheckpointError(
            f"{path} holds a {meta['kind']!r} checkpoint but a {expected_kind!r} one was expected"
        )
    if base_sha256 is not None and not meta.get("base_sha256"):
        raise CheckpointError(f"{path} is a {meta['kind']!r} checkpoint that records no base weights, so there is no "
                              "base hash to check: pass base_sha256=None for it")
    if base_sha256 is not None and str(meta["base_sha256"]).lower() != base_sha256:
        raise CheckpointError(
            f"{path} was made for base weights {meta.get('base_sha256')}, but the given base model hashes to "
            f"{base_sha256}: load the base checkpoint it was trained from"
        )
    return load_file(str(resolve_weights_path(path))), meta



def build_model(meta: dict[str, Any], shapes: dict[str, tuple[int, ...]] | None = None) -> nn.Module:
    """Rebuild the (base) model architecture named in checkpoint metadata, randomly initialised.

    Args:
        meta: checkpoint metadata (``model_name``, ``model_kwargs``), e.g. from ``read_metadata``.
        shapes: the stored tensors' shapes (``read_tensor_shapes``). When given, the architecture is first built on
            the meta device (no memory) and its parameter names and shapes compared with them; only a match is
            materialised, so a file whose metadata declares a huge model with small tensors is refused at no cost.

    Raises:
        CheckpointError: no or unknown model name, loader keywords in the kwargs, or names/shapes that differ.
    """
    import timm

    if not isinstance(meta, Mapping):
        raise TypeError(f"build_model expects checkpoint metadata (a dict from read_metadata(path)), got "
                        f"{type(meta).__name__}")
    name = meta.get("model_name")
    if not name:
        raise CheckpointError("checkpoint metadata has no model_name: rebuild the module yourself and load_state_dict")
    if not timm.is_model(name):
        raise CheckpointError(f"checkpoint metadata names model {name!r}, which is not a timm or vitlab model")
    kwargs = check_model_kwargs(meta.get("model_kwargs", {}), "checkpoint metadata")
    if shapes is not None:
        try:
            skeleton = build_meta_skeleton(name, len(shapes), **kwargs)
        except BUILD_ERRORS as err:
            raise CheckpointError(f"checkpoint metadata does not build {name}: {describe_build_error(err)}") from None
        except SkeletonTooLargeError:
            raise CheckpointError(f"the architecture its metadata declares ({name}, {kwargs}) makes far more tensors "
                                  f"than the {len(shapes)} the file stores: the metadata does not describe these "
                                  "weights") from None
        expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
        if expected != shapes:
            raise CheckpointError(f"the stored tensors do not match the architecture its metadata declares ({name}, "
                                  f"{kwargs}): {_describe_mismatch(expected, shapes)}")
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except BUILD_ERRORS as err:
        raise CheckpointError(f"checkpoint metadata does not build {name}: {describe_build_error(err)}") from None


def describe_build_error(err: Exception) -> str:
    """One line for a timm constructor's refusal (one of `BUILD_ERRORS`) of an untrusted keyword value."""
    return f"unknown name {err} (KeyError)" if isinstance(err, KeyError) else str(err)


# A timm constructor's refusal of a keyword value (KeyError: an unknown act_layer / norm_layer name).
BUILD_ERRORS = (TypeError, ValueError, AssertionError, RuntimeError, KeyError)
# timm architectures make 5-11 torch calls per state-dict tensor while built; far more means the metadata declares a
# much larger model than the file holds (e.g. depth: 100000, which would take hours and GBs even on the meta device).
_OPS_PER_TENSOR = 100
_OPS_SPARE = 10_000


class SkeletonTooLargeError(Exception):
    """`build_meta_skeleton` stopped a build that makes far more tensors than the weights file stores."""


def build_meta_skeleton(name: str, n_tensors: int, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)`` on the meta device (no memory), stopped once it makes
    far more torch calls than a model of ``n_tensors`` state-dict tensors needs: untrusted metadata (a vitlab file's,
    a Hub ``config.json``) declaring a huge model is refused at no cost.

    Example:
        >>> build_meta_skeleton("vit_tiny_patch16_224", 152).patch_embed.proj.weight.device.type
        'meta'
        >>> build_meta_skeleton("vit_tiny_patch16_224", 152, depth=100_000)
        Traceback (most recent call last):
        ...
        vitlab.checkpoint.format.SkeletonTooLargeError

    Raises:
        SkeletonTooLargeError: the build passed the budget; the constructor's own errors (`BUILD_ERRORS`) propagate.
    """
    import timm

    with torch.device("meta"), _TensorOpBudget(_OPS_PER_TENSOR * n_tensors + _OPS_SPARE):
        return timm.create_model(name, pretrained=False, **kwargs)


class _TensorOpBudget(TorchFunctionMode):
    """Counts the torch calls made while a model is built and stops the build after ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.calls = limit, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's signature)
        self.calls += 1
        if self.calls > self.limit:
            raise SkeletonTooLargeError
        return func(*args, **(kwargs or {}))


def _describe_mismatch(expected: dict[str, tuple[int, ...]], stored: dict[str, tuple[int, ...]]) -> str:
    missing = [k for k in expected if k not in stored]
    unexpected = [k for k in stored if k not in expected]
    misshaped = [f"{k} {stored[k]} vs {expected[k]}" for k in expected if k in stored and stored[k] != expected[k]]
    parts = [f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
             for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys]
    return "; ".join(parts)


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a ``kind="model"`` checkpoint without the training code; returns ``(model.eval(), metadata)``.

    The architecture is checked against the stored tensors on the meta device before anything is allocated (see
    ``build_model``). An ``adapter`` file (a run of a non-mergeable adapter) is rebuilt by
    ``vitlab.peft.load_adapted_model``, which this layer cannot import.
    """
    path = resolve_weights_path(path)
    meta = read_metadata(path)
    if meta["kind"] != "model":
        raise CheckpointError(f"{path} holds a {meta['kind']!r} checkpoint, not a whole model: load it with "
                              "vitlab.peft.load_adapted_model(path) (it rebuilds the recorded base), or evaluate the "
                              "run's merged model.safetensors")
    model = build_model(meta, read_tensor_shapes(path))
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval(), meta
