"""Where a run's starting weights come from: one resolver for vitlab files, plain weights files, timm and the Hub.

``model.pretrained`` (and the Python API) accepts:

- a vitlab ``model.safetensors`` or run folder (kind ``model``, with the ``vitlab`` metadata);
- a plain weights file: ``.safetensors``, or ``.pth`` / ``.pth.tar`` / ``.pt`` / ``.bin`` / ``.ckpt`` read with
  ``torch.load(weights_only=True)``, holding a state dict in timm's layout or the architecture's original one (a
  ``model`` / ``state_dict`` wrapper and ``module.`` prefixes are fine);
- ``timm``: the model's default pretrained tag, or the tag in the model name
  (``vit_base_patch16_224.augreg2_in21k_ft_in1k``), fetched by timm's own loader through the Hugging Face Hub and its
  local cache (``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` / ``HF_HOME`` are honoured: nothing of vitlab's in between);
- ``hf-hub:ORG/NAME`` (``@REVISION`` pins a revision), as ``timm.create_model`` accepts it.

Every source goes through timm's ``load_pretrained`` with the model's own checkpoint filter, so position embeddings
are resampled, the stem adapted to another channel count and a classifier with another class count dropped exactly
as timm does. What timm only logs is an error here: any missing non-classifier tensor, or a mis-shaped one, names the
tensors and the source. Pickled files are read with ``weights_only=True``; a file that needs more is refused.

Example:
    >>> weights = resolve_pretrained("timm", "vit_tiny_patch16_224")
    >>> weights.source, weights.describe()["hub_id"]
    ('timm', 'timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k')
    >>> import tempfile, timm
    >>> from safetensors.torch import save_file
    >>> path = tempfile.mkdtemp() + "/vit.safetensors"  # a plain timm state dict, 1000-class head
    >>> save_file(timm.create_model("vit_tiny_patch16_224", depth=1, img_size=32).state_dict(), path)
    >>> model, name, kwargs = create_model("vit_tiny_patch16_224", resolve_pretrained(path, "vit_tiny_patch16_224"),
    ...                                    depth=1, img_size=32, num_classes=10)
    >>> name, model.head.out_features  # the 1000-class head was dropped, the backbone loaded
    ('vit_tiny_patch16_224', 10)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import os
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from vitlab.checkpoint.format import (
    BUILD_ERRORS,
    LOADER_KEYWORDS,
    WEIGHTS_NAME,
    CheckpointError,
    MissingWeightsError,
    SkeletonTooLargeError,
    build_meta_skeleton,
    check_model_kwargs,
    describe_build_error,
    has_vitlab_metadata,
    read_metadata,
)
from vitlab.errors import ConfigError

__all__ = [
    "LIGHTNING_PREFIXES", "PICKLE_SUFFIXES", "PretrainedWeights", "check_model_name", "create_model", "file_sha256",
    "load_pretrained", "read_weights_file", "record_state_dict_loads", "resolve_pretrained",
]

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
#: Where a `vitlab fit` LightningModule keeps the network in its state dict: the EMA copy (optim.ema_decay) first
LIGHTNING_PREFIXES = ("ema.module.", "model.")
SOURCES = ("vitlab", "file", "timm", "hf-hub")
_HUB_PREFIX = "hf-hub:"
_LOCAL_DIR_PREFIX = "local-dir:"


@dataclass
class PretrainedWeights:
    """A resolved weights source. Build with ``resolve_pretrained``; ``describe()`` is what metadata records.

    Attributes:
        source: ``vitlab`` (a vitlab model file), ``file`` (a plain weights file), ``timm`` or ``hf-hub``.
        location: absolute file path, the timm model name (with its tag, if any), or the Hub id ``ORG/NAME``.
        model_name: the timm model name the run asked for (``model.name``).
    """

    source: str
    location: str
    model_name: str
    _state_dict: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    _hub_config: tuple[dict[str, Any], str, dict[str, Any]] | None = field(default=None, repr=False)

    # ---- what the weights expect of the data ----
    def pretrained_cfg(self) -> dict[str, Any]:
        """timm's pretrained config of these weights (mean, std, input_size, classifier, first_conv ...)."""
        import timm

        if self.source == "hf-hub":
            return dict(self._hub()[0])
        name = self.location if self.source == "timm" else self.model_name
        name = timm.models.get_deprecated_models().get(name, name)  # a deprecated alias: its current name's cfg
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
        return cfg.to_dict() if cfg is not None else {}

    def architecture(self) -> str:
        """The timm architecture (no tag) a model with these weights has."""
        import timm

        if self.source == "hf-hub":
            return self._hub()[1]
        return timm.models.split_model_name_tag(self.model_name)[0]

    def check_architecture(self, model_name: str) -> None:
        """Refuse ``hf-hub:`` weights whose Hub config names another architecture than ``model_name`` (timm would
        build the Hub's architecture, and a run would silently train another model than its ``model.name``); a
        ``model_name`` that is itself ``hf-hub:...``, and the other sources, pass.

        Raises:
            ConfigError: naming both architectures and the fix.
        """
        import timm

        if self.source != "hf-hub" or model_name.startswith(_HUB_PREFIX):
            return
        asked = timm.models.split_model_name_tag(model_name)[0]
        asked = timm.models.get_deprecated_models().get(asked, asked)
        if asked != self.architecture():
            raise ConfigError(f"model.name is {model_name} but the weights {_HUB_PREFIX}{self.location} are a "
                              f"{self.architecture()}: set model.name to {self.architecture()} (or to {_HUB_PREFIX}"
                              f"{self.location}), or pass weights of a {asked}")

    def in_chans(self) -> int | None:
        """Input channels the weights were trained with (``None`` when unknown)."""
        if self.source == "vitlab":
            meta = read_metadata(self.location)
            chans = meta["model_kwargs"].get("in_chans", meta.get("extra", {}).get("data", {}).get("in_chans"))
            return int(chans) if chans else None
        cfg = self.pretrained_cfg()
        if self.source == "file":
            first = cfg.get("first_conv")
            weight = self.state_dict().get(f"{first}.weight") if isinstance(first, str) else None
            if weight is not None and weight.ndim == 4:
                return int(weight.shape[1])
        size = cfg.get("input_size")
        if self.source == "hf-hub" and size and isinstance(cfg.get("first_conv"), str):
            path, shapes = self._hub_shapes() or ("", {})
            stem = shapes.get(f"{cfg['first_conv']}.weight", ())
            if len(stem) == 4 and stem[1] != size[0]:  # timm's loader would refuse it only after the data is built
                config = _hub_cached_file(self.location, ("config.json",))
                raise CheckpointError(f"{config} has pretrained_cfg input_size {size}, but {cfg['first_conv']}.weight "
                                      f"in {path} takes {stem[1]} channels: fix or delete config.json, then fetch the "
                                      "model again")
        return int(size[0]) if size else None

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """``(mean, std)`` the weights were trained with: the vitlab file's recorded data, else timm's cfg."""
        if self.source == "vitlab":
            data = read_metadata(self.location).get("extra", {}).get("data", {})
            if data.get("mean") and data.get("std"):
                return tuple(map(float, data["mean"])), tuple(map(float, data["std"]))
            return None
        cfg = self.pretrained_cfg()
        if cfg.get("mean") and cfg.get("std"):
            return tuple(map(float, cfg["mean"])), tuple(map(float, cfg["std"]))
        return None

    # ---- loading ----
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The file's tensors (``vitlab`` / ``file`` sources), read once: safetensors or ``weights_only`` pickle."""
        if self.source not in ("vitlab", "file"):
            raise ValueError(f"{self.source} weights are loaded by timm's loader, not read as a file")
        if self._state_dict is None:
            self._state_dict = read_weights_file(Path(self.location))
        return self._state_dict

    def release(self) -> None:
        """Drop the file's tensors read by ``state_dict()`` once they are in a model (a run keeps this object)."""
        self._state_dict = None

    def _hub(self) -> tuple[dict[str, Any], str, dict[str, Any]]:
        if self._hub_config is None:
            from timm.models import load_model_config_from_hf

            problem = None
            with _hub_errors(self):
                try:
                    cfg, arch, model_args = load_model_config_from_hf(self.location)
                except (KeyError, AttributeError, TypeError) as err:  # timm's parser met another JSON shape
                    problem = f"is not a timm model config ({type(err).__name__}: {str(err)[:100]})"
            if problem is None and not (isinstance(arch, str) and arch):
                problem = f"names architecture {arch!r}, not a timm model name"
            problem = problem or _hub_cfg_problem(cfg)
            if problem is not None:
                config = _hub_cached_file(self.location, ("config.json",)) or f"{self.location}'s config.json"
                raise CheckpointError(f"{config} {problem}: fix or delete config.json, then fetch the model again")
            self._hub_config = (dict(cfg), arch, dict(model_args or {}))
        return self._hub_config

    def _hub_weights_filenames(self) -> tuple[str, ...] | None:
        """The cached file names timm reads these Hub weights from (see `_weights_filenames`)."""
        return _weights_filenames(self.pretrained_cfg())

    def _hub_shapes(self) -> tuple[str, dict[str, tuple[int, ...]]] | None:
        """``(path, name -> shape)`` of the cached Hub weights file, from its header (a ``.bin`` is mapped, not
        read, unless it is in torch's legacy format); None when it is not cached and the Hub can be reached (timm
        downloads it).

        Raises:
            MissingWeightsError: not cached and offline; CheckpointError: a corrupt cached file.
        """
        from huggingface_hub import constants
        from huggingface_hub.errors import LocalEntryNotFoundError

        with _hub_errors(self):
            path = _hub_cached_file(self.location, self._hub_weights_filenames())
            if path is None:
                if not constants.HF_HUB_OFFLINE:
                    return None
                raise LocalEntryNotFoundError(f"no weights file of {self.location} in the cache")
            if path.endswith(".safetensors"):  # the header only; a corrupt file is named by _hub_errors
                with safe_open(path, framework="pt") as handle:
                    names = list(handle.keys())  # noqa: SIM118 (a safe_open handle is not a mapping)
                    return path, {name: tuple(handle.get_slice(name).get_shape()) for name in names}
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:  # a file in torch's legacy (pre-1.6) format cannot be mapped: read it
                if "mmap" not in str(err):
                    raise
                state = torch.load(path, map_location="cpu", weights_only=True)
            return path, _tensor_shapes(state)

    def describe(self) -> dict[str, Any]:
        """JSON for metadata: where the weights came from and the SHA-256 of their file (when it is on disk)."""
        out: dict[str, Any] = {"source": self.source}
        if self.source in ("vitlab", "file"):
            out["path"] = self.location
            out["sha256"] = file_sha256(self.location)
            return out
        if self.source == "timm":
            out["model"] = self.location
            cfg = self.pretrained_cfg()
            out["hub_id"], out["tag"] = cfg.get("hf_hub_id"), cfg.get("tag")
        else:
            out["hub_id"] = self.location
        cached = _hub_cached_file(out.get("hub_id"), self._hub_weights_filenames())
        out["sha256"] = file_sha256(cached) if cached else None
        return out

    def fetch_hint(self) -> str:
        """What to do on a machine where these weights are missing."""
        if self.source in ("vitlab", "file"):
            return f"put the weights file back at {self.location}"
        hub_id = self.pretrained_cfg().get("hf_hub_id") if self.source == "timm" else self.location
        name = self.location if self.source == "timm" else _HUB_PREFIX + self.location
        repo_id, _, revision = str(hub_id).partition("@")
        download = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
        return (f"fetch them into the Hugging Face cache on a connected machine (`{download}`, or "
                f"`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"`) and copy that cache "
                "here (HF_HUB_CACHE / HF_HOME name its folder)")


def _tensor_shapes(state: Any, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Name -> shape of the tensors in a loaded checkpoint, nested containers (``{"model": {...}}``, which timm's
    filters unwrap) included with their key as a prefix."""
    if isinstance(state, torch.Tensor):
        return {prefix.rstrip("."): tuple(state.shape)}
    if not isinstance(state, Mapping):
        return {}
    return {name: shape for key, value in state.items()
            for name, shape in _tensor_shapes(value, f"{prefix}{key}.").items()}


def _hub_cfg_problem(cfg: dict[str, Any]) -> str | None:
    """What is wrong with the ``pretrained_cfg`` entries of a Hub config that vitlab reads (``input_size``: the
    weights' channels and size; ``mean`` / ``std``: the data's normalisation), or None."""
    def numbers(value: Any, kind: type) -> bool:
        return isinstance(value, list | tuple) and len(value) > 0 and all(
            isinstance(v, kind) and not isinstance(v, bool) and math.isfinite(v) for v in value)

    size = cfg.get("input_size")
    if size is not None and not (numbers(size, int) and len(size) == 3 and min(size) > 0):
        return f"has pretrained_cfg input_size {str(size)[:100]}, not [channels, height, width] of positive integers"
    mean, std = cfg.get("mean"), cfg.get("std")
    if (mean is not None or std is not None) and not (numbers(mean, int | float) and numbers(std, int | float)
                                                      and len(mean) == len(std) and min(std) > 0):
        return (f"has pretrained_cfg mean {str(mean)[:60]} and std {str(std)[:60]}, not per-channel lists of finite "
                "numbers of one length (std > 0)")
    return None


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB blocks); ``~`` is the home folder.

    Raises:
        TypeError: ``path`` is not a str or Path; MissingWeightsError: no file there (a folder is not a file).

    Example:
        >>> import tempfile
        >>> path = tempfile.mkdtemp() + "/empty.bin"
        >>> _ = open(path, "wb").close()
        >>> file_sha256(path)
        'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"file_sha256: path must be a file path (str or pathlib.Path), got {path!r} "
                        f"({type(path).__name__})")
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"file_sha256: {path} {'is a folder' if path.is_dir() else 'does not exist'}; "
                                  "pass the path of a file")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _weights_filenames(pretrained_cfg: Any) -> tuple[str, ...] | None:
    """The file names timm reads Hub weights from: a ``pretrained_cfg`` ``hf_hub_filename`` (its ``.safetensors``
    alternative first, as timm looks), else None (timm's defaults, see `_hub_cached_file`)."""
    name = pretrained_cfg.get("hf_hub_filename") if isinstance(pretrained_cfg, Mapping) else None
    if not isinstance(name, str) or not name:
        return None
    if name.endswith(".bin"):  # timm tries the safetensors alternative of a .bin first
        safe = "model.safetensors" if name == "pytorch_model.bin" else name[:-4] + ".safetensors"
        return safe, name
    return (name,)


def _hub_cached_file(hub_id: str | None, filenames: tuple[str, ...] | None = None) -> str | None:
    """Path of the first of ``filenames`` (default: the weights files timm reads) in the cache's copy of ``hub_id``."""
    if not hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = hub_id.partition("@")  # hf-hub:ORG/NAME@REVISION pins a revision, as timm reads it
    for filename in filenames or ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, filename, revision=revision or None)
        if isinstance(found, str):
            return found
    return None


def resolve_pretrained(spec: str | Mapping[str, Any] | None, model_name: str) -> PretrainedWeights | None:
    """Turn a ``model.pretrained`` value (or a recorded ``describe()`` dict) into a ``PretrainedWeights``.

    Args:
        spec: ``None`` / ``""`` / ``"none"`` (random init), ``"timm"``, ``"hf-hub:ORG/NAME"``, a path (vitlab file or
            run folder, or a plain weights file; ``local-dir:FOLDER`` as timm spells a folder holding
            ``model.safetensors``), or a dict written by ``PretrainedWeights.describe``. URLs are refused (vitlab
            downloads only through timm / the Hub).
        model_name: the timm model name of the run (``model.name``); may carry a pretrained tag.

    Raises:
        ConfigError: an unknown form; MissingFileError: a path that does not exist.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "none", "null")):
        return None
    if not isinstance(model_name, str) or not model_name:
        raise ConfigError(f"model.name must be a timm model name, got {model_name!r}")
    if isinstance(spec, Mapping):
        return _from_description(spec, model_name)
    if not isinstance(spec, str | os.PathLike):
        raise ConfigError(f"model.pretrained must be timm, hf-hub:ORG/NAME or a path, got {type(spec).__name__}")
    spec = str(spec).strip()
    if "://" in spec:
        raise ConfigError(f"model.pretrained {spec!r} is a URL, which vitlab does not download: download the file "
                          "(e.g. curl -L -o weights.pth URL) and pass its path, or name Hub weights as "
                          "hf-hub:ORG/NAME (or 'timm' for the model's default weights)")
    if spec.startswith(_LOCAL_DIR_PREFIX):  # timm's spelling of a local folder holding model.safetensors
        spec = spec.removeprefix(_LOCAL_DIR_PREFIX)
    elif spec.lower() == "timm" and not Path(spec).exists():
        spec = "timm"
    if spec == "timm":
        if model_name.startswith(_HUB_PREFIX):
            return PretrainedWeights("hf-hub", _hub_id(model_name), model_name)
        check_model_name(model_name)
        weights = PretrainedWeights("timm", model_name, model_name)
        cfg = weights.pretrained_cfg()
        if not any(cfg.get(key) for key in ("url", "hf_hub_id", "file", "state_dict")):
            raise ConfigError(f"timm has no pretrained weights for {model_name} (model.pretrained: timm): train it "
                              "with `vitlab fit` and pass the run folder or its model.safetensors, pass a weights "
                              "file, or leave model.pretrained unset for random initialisation")
        return weights
    if spec.startswith(_HUB_PREFIX):
        return PretrainedWeights("hf-hub", _hub_id(spec), model_name)
    return _from_path(Path(spec).expanduser(), model_name)


def _hub_id(spec: str) -> str:
    hub_id = spec.removeprefix(_HUB_PREFIX).strip()  # "hf-hub: ORG/NAME" as YAML users space it
    repo_id, at, revision = hub_id.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")) or (at and (not revision or "@" in revision)):
        raise ConfigError(f"{spec!r} is not a Hub model id: write hf-hub:ORG/NAME, or hf-hub:ORG/NAME@REVISION to "
                          "pin a revision (e.g. hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k)")
    return hub_id


def check_model_name(model_name: str) -> None:
    """Refuse a name ``timm.create_model`` does not know, listing the closest registered names (a ``.tag`` after the
    architecture is allowed; ``hf-hub:ORG/NAME`` names are checked when their weights are resolved).

    Raises:
        ConfigError: not a string, or no such model (the message lists close names and vitlab's own models).

    Example:
        >>> check_model_name("inception_transformer_small")
        >>> check_model_name("inception_transformer_smal")
        Traceback (most recent call last):
        ...
        vitlab.errors.ConfigError: unknown model 'inception_transformer_smal'; did you mean ...
    """
    import difflib

    import timm

    if not isinstance(model_name, str) or not model_name.strip():
        raise ConfigError(f"model.name must be a timm model name (see timm.list_models()), got {model_name!r}")
    if model_name.startswith(_HUB_PREFIX) or timm.is_model(model_name):
        return
    close = difflib.get_close_matches(model_name.split(".")[0], timm.list_models(), n=5, cutoff=0.6)
    ours = timm.list_models("vit_vitlab_*") + timm.list_models("inception_transformer_*")
    hint = f"did you mean {close}? " if close else ""
    raise ConfigError(f"unknown model {model_name!r}; {hint}vitlab's models: {ours} (every name: timm.list_models(); a "
                      "pretrained tag may follow a dot)")


def _from_path(path: Path, model_name: str) -> PretrainedWeights:
    check_model_name(model_name)
    if path.is_dir():
        if not (path / WEIGHTS_NAME).is_file():
            raise MissingWeightsError(f"{path} is a folder without {WEIGHTS_NAME}: pass a run folder finished by "
                                   "`vitlab fit`, or the weights file itself")
        path = path / WEIGHTS_NAME
    if not path.is_file():
        name = str(path).split(":", 1)[-1].strip()  # a Hub id written bare or with a misspelt prefix (hf_hub:)
        org = name.split("/")[0]
        hub = (f" (a Hub model id? write hf-hub:{name})" if not path.is_absolute() and name.count("/") == 1
               and all(name.split("/")) and not Path(org).exists()
               and Path(name).suffix not in (*PICKLE_SUFFIXES, ".safetensors") else "")
        raise MissingWeightsError(f"model.pretrained: no file or folder at {path}{hub}; pass a weights file "
                                  "(.safetensors, .pth, .pt, .bin), a vitlab run folder, 'timm' or 'hf-hub:ORG/NAME'")
    # absolute, but a symlink keeps its own name: a Hugging Face cache snapshot's model.safetensors links to a blob
    # named by its hash, with no suffix to tell the format by
    path = Path(os.path.abspath(path))
    if path.suffix == ".safetensors":
        if not has_vitlab_metadata(path):  # raises on a corrupt file
            return PretrainedWeights("file", str(path), model_name)
        kind = read_metadata(path)["kind"]
        if kind != "model":
            raise CheckpointError(f"{path} holds a vitlab {kind!r} checkpoint, not a whole model: start from the "
                                  "run's model.safetensors (the merged weights) instead")
        return PretrainedWeights("vitlab", str(path), model_name)
    if path.suffix in PICKLE_SUFFIXES or path.name.endswith(".pth.tar"):  # .pth.tar: timm's train.py checkpoints
        return PretrainedWeights("file", str(path), model_name)
    raise ConfigError(f"{path}: unknown weights format {path.suffix!r}; use .safetensors, or .pth / .pth.tar / .pt / "
                      ".bin / .ckpt (read with torch.load(weights_only=True))")


def _from_description(described: Mapping[str, Any], model_name: str) -> PretrainedWeights:
    source = described.get("source")
    if source in ("vitlab", "file"):
        path = Path(str(described.get("path", "")))
        if not path.is_file():
            raise MissingWeightsError(f"the base weights file {path} (sha256 {described.get('sha256')}) is missing: "
                                   "put it back at that path")
        weights = _from_path(path, model_name)
        if described.get("sha256") and file_sha256(path) != described["sha256"]:
            raise CheckpointError(f"{path} changed since it was recorded (sha256 {described['sha256']}): put the "
                                  "original file back")
        return weights
    if source == "timm":
        return PretrainedWeights("timm", str(described.get("model") or model_name), model_name)
    if source == "hf-hub":
        return PretrainedWeights("hf-hub", _hub_id(str(described.get("hub_id", ""))), model_name)
    raise CheckpointError(f"recorded base weights have unknown source {source!r} (expected one of {SOURCES})")


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a ``weights_only`` pickle, unwrapped as timm does (``"model"`` /
    ``"state_dict"`` containers; the EMA copy, ``"state_dict_ema"`` / ``"model_ema"``, when the file keeps one, as
    timm's ``load_checkpoint`` and ``create_model(checkpoint_path=...)`` take it); pickles that need arbitrary code are
    refused.

    Raises:
        MissingFileError: no file at ``path``; CheckpointError: unreadable, not a state dict of tensors, or refused.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"read_weights_file: path must be a weights file path (str or pathlib.Path), got {path!r} "
                        f"({type(path).__name__})")
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"no weights file at {path}: pass the path of a .safetensors or .pth file")
    from timm.models import load_state_dict

    try:
        state_dict = _lightning_state_dict(path) if path.suffix == ".ckpt" else None
        if state_dict is None:
            state_dict = load_state_dict(str(path), use_ema=True, weights_only=True)  # timm's default
    except (pickle.UnpicklingError, RuntimeError) as err:
        if "global" not in _unpickler_reason(err).lower():  # only a pickle naming a class or function runs code
            raise CheckpointError(f"{path} is not a readable weights file: corrupt, truncated or not a checkpoint "
                                  f"({_unpickler_reason(err)[:200]})") from None
        raise CheckpointError(
            f"{path} was refused: it holds pickled Python objects besides tensors, which could run code when loaded. "
            "Save its state dict alone (torch.save(model.state_dict(), path)) or as safetensors on a machine you "
            "trust, then pass that file"
        ) from None
    except (EOFError, OSError, ValueError, SafetensorError) as err:
        raise CheckpointError(f"{path} is not a readable weights file ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else 'empty or truncated'})") from None
    except (AttributeError, TypeError):  # timm's unwrapping met something that is not a mapping (e.g. one tensor)
        state_dict = None
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors (a name -> tensor mapping, optionally "
                              "under 'model' or 'state_dict')")
    if not state_dict:  # timm's loader would take an empty overlay for 'no file' and go to the Hub
        raise CheckpointError(f"{path} holds no tensors (an empty state dict): save the model's weights "
                              "(torch.save(model.state_dict(), path) or safetensors) and pass that file")
    return dict(state_dict)


def _lightning_state_dict(path: Path) -> dict[str, Any] | None:
    """The network's tensors in a Lightning checkpoint (e.g. a `vitlab fit` run's ``checkpoints/last.ckpt``): its
    ``state_dict`` less the attribute the LightningModule holds the network in (vitlab's ``model.``; its EMA copy
    ``ema.module.`` first when the run kept one, the weights it evaluates and saves), or None when the file is not a
    Lightning checkpoint."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not (isinstance(checkpoint, Mapping) and "pytorch-lightning_version" in checkpoint
            and isinstance(checkpoint.get("state_dict"), Mapping)):
        return None
    state = checkpoint["state_dict"]
    for prefix in LIGHTNING_PREFIXES:
        if any(str(key).startswith(prefix) for key in state):
            return {key[len(prefix):]: value for key, value in state.items() if str(key).startswith(prefix)}
    heads = {str(key).split(".", 1)[0] for key in state}
    if len(heads) == 1 and all("." in str(key) for key in state):
        cut = len(heads.pop()) + 1
        return {key[cut:]: value for key, value in state.items()}
    return dict(state)


@contextlib.contextmanager
def record_state_dict_loads() -> Iterator[list[tuple[nn.Module, Any]]]:
    """Record the ``(module, incompatible keys)`` of every ``load_state_dict`` call inside the block.

    timm's ``load_pretrained`` loads non-strictly when it drops a classifier and only logs the keys it missed; this
    is how vitlab sees them (the method is restored on exit).
    """
    calls: list[tuple[nn.Module, Any]] = []
    original = nn.Module.load_state_dict

    def recording(module, state_dict, strict=True, assign=False):
        result = original(module, state_dict, strict=strict, assign=assign)
        calls.append((module, result))
        return result

    nn.Module.load_state_dict = recording
    try:
        yield calls
    finally:
        nn.Module.load_state_dict = original


@contextlib.contextmanager
def _hub_errors(weights: PretrainedWeights) -> Iterator[None]:
    """Turn the Hub's 'not cached and offline / unreachable' errors, and a corrupt cached file, into one line saying
    what to fetch."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    _check_hub_reachable(weights)
    try:
        yield
    except (LocalEntryNotFoundError, RepositoryNotFoundError, HFValidationError, OSError) as err:
        raise MissingWeightsError(f"{weights.source} weights {weights.location} are not in the Hugging Face cache "
                                  f"({constants.HF_HUB_CACHE}{_cache_env_note()}) and could not be downloaded "
                                  f"({type(err).__name__}): {weights.fetch_hint()}") from None
    except (SafetensorError, json.JSONDecodeError, EOFError, pickle.UnpicklingError, RuntimeError) as err:
        # torch's reader of a truncated pytorch_model.bin raises a RuntimeError; other RuntimeErrors (a tensor that
        # does not fit) are the caller's to name
        if weights.source not in ("timm", "hf-hub") or (type(err) is RuntimeError
                                                        and "PytorchStreamReader" not in str(err)):
            raise
        hub_id = weights.pretrained_cfg().get("hf_hub_id") if weights.source == "timm" else weights.location
        cached = _hub_cached_file(hub_id, ("config.json",) if isinstance(err, json.JSONDecodeError) else None)
        raise CheckpointError(f"the Hugging Face cache's copy of {weights.source} weights {weights.location} "
                              f"({cached or constants.HF_HUB_CACHE}) is corrupt or truncated ({type(err).__name__}: "
                              f"{_first_lines(err, 1)}): delete it, then {weights.fetch_hint()}") from None


def _check_hub_reachable(weights: PretrainedWeights) -> None:
    """Refuse at once Hub weights that are not cached when the Hub cannot be reached (HF_HUB_OFFLINE unset), which
    huggingface_hub would only report after a minute of retries; cached weights, and HF_HUB_OFFLINE=1, pass."""
    from huggingface_hub import constants

    if weights.source not in ("timm", "hf-hub") or constants.HF_HUB_OFFLINE:
        return
    if weights.source == "timm":
        cfg = weights.pretrained_cfg()
        hub_id, config = cfg.get("hf_hub_id"), None
    else:  # the cached config.json as written (timm's parse of it runs inside this check's caller)
        hub_id = weights.location
        config = _hub_cached_file(hub_id, ("config.json",))
        try:
            cfg = json.loads(Path(config).read_text()).get("pretrained_cfg") if config else None
        except (OSError, ValueError, AttributeError):
            cfg = None  # a damaged config.json is named by timm's parse
    if not hub_id or (_hub_cached_file(hub_id, _weights_filenames(cfg))
                      and (weights.source == "timm" or config)):
        return
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=10)  # one try: any answer means the Hub is reachable
    except httpx2.TransportError as err:
        raise MissingWeightsError(
            f"{weights.source} weights {weights.location} are not in the Hugging Face cache ({constants.HF_HUB_CACHE}"
            f"{_cache_env_note()}) and the Hub ({constants.ENDPOINT}) cannot be reached ({type(err).__name__}): "
            f"{weights.fetch_hint()}, then set HF_HUB_OFFLINE=1; or pass a local weights file "
            "(model.pretrained: PATH)") from None


def _cache_env_note() -> str:
    """A note when TRANSFORMERS_CACHE is set: transformers reads it, but timm's loader (huggingface_hub) does not."""
    folder = os.environ.get("TRANSFORMERS_CACHE")
    if not folder:
        return ""
    return (f"; TRANSFORMERS_CACHE={folder} is read by transformers only, not by timm's loader: "
            f"set HF_HUB_CACHE={folder} instead")


def create_model(
    model_name: str, weights: PretrainedWeights | str | os.PathLike | Mapping[str, Any] | None, **kwargs: Any
) -> tuple[nn.Module, str, dict[str, Any]]:
    """Build ``model_name`` through ``timm.create_model`` and load ``weights`` with timm's loader.

    Args:
        model_name: timm model name (a tag after a dot picks the pretrained config / weights).
        weights: from ``resolve_pretrained`` (anything it takes, a path or ``"timm"``, is resolved for
            ``model_name``); ``None`` for random initialisation.
        kwargs: ``timm.create_model`` keywords (``num_classes``, ``in_chans``, ``img_size`` ...); loader keywords
            (``pretrained``, ``pretrained_cfg_overlay``, ``checkpoint_path`` ...) are refused.

    Returns:
        ``(model, architecture, rebuild_kwargs)``: ``timm.create_model(architecture, **rebuild_kwargs)`` rebuilds the
        same architecture with no network and no weights (a Hub config's ``model_args`` are folded in).

    Raises:
        CheckpointError: missing or mis-shaped non-classifier tensors (named, with the source), refused pickles, a
            Hub ``config.json`` whose ``model_args`` / ``num_classes`` declare a far larger model than its weights
            file (checked on the meta device before anything is built) or name loader keywords.
        MissingFileError: Hub weights neither cached nor downloadable (the message says what to fetch).
    """
    import timm

    kwargs = check_model_kwargs(kwargs, "model.kwargs")
    if weights is not None and not isinstance(weights, PretrainedWeights):
        check_model_name(model_name)
        weights = resolve_pretrained(weights, model_name)
    if weights is None:
        check_model_name(model_name)
        return timm.create_model(model_name, pretrained=False, **kwargs), model_name, kwargs
    weights.check_architecture(model_name)
    architecture = weights.architecture()
    if weights.source == "hf-hub":
        _check_hub_model_args(weights)
        kwargs = {**weights._hub()[2], **kwargs}
        target, extra = architecture, {"pretrained_cfg": weights._hub()[0]}
    elif weights.source == "timm":
        target, extra = weights.location, {}
    else:
        target, extra = model_name, {"pretrained_cfg_overlay": _file_overlay(weights)}
    try:
        with record_state_dict_loads() as loads, _hub_errors(weights):
            model = timm.create_model(target, pretrained=True, **extra, **kwargs)
    except RuntimeError as err:
        raise CheckpointError(f"weights {weights.location} do not fit {architecture} ({kwargs}): "
                              f"{_first_lines(err)}") from None
    for module in (model, _network(model)):  # a features_only wrapper holds a deep copy of the network's cfg
        module.pretrained_cfg.pop("state_dict", None)  # the overlay's tensors: do not keep a second copy
    weights.release()
    _check_loaded(_network(model), loads, weights)
    return model, architecture, kwargs


# A Hub config's architecture may hold at most this many times the parameters its weights file stores (a config
# written by timm's push_to_hub describes its file exactly; a checkpoint filter resamples a position embedding or
# renames tensors, far from this).
_HUB_NUMEL_RATIO = 4


def _check_hub_model_args(weights: PretrainedWeights) -> None:
    """Refuse a cached Hub ``config.json`` whose ``model_args`` (and ``num_classes``) would build a far larger
    architecture than its weights file stores (e.g. ``depth: 20000``, ``embed_dim: 1000000``) or name loader keywords,
    before ``timm.create_model`` builds it: the config is untrusted, and such a build hangs or exhausts memory. The
    architecture is built on the meta device (no memory) with the torch-call budget vitlab files get
    (``format.build_model``), then its parameter count is compared with the file's, read from the header. A
    ``num_classes`` other than the file's classifier rows (timm would drop the trained head) and a ``first_conv`` the
    file has but the architecture lacks are refused too.

    Raises:
        CheckpointError: naming ``config.json`` and the keys; MissingWeightsError: the weights are not cached and the
            Hub is offline (timm would build the model before finding that out).
    """
    cfg, architecture, model_args = weights._hub()
    config = _hub_cached_file(weights.location, ("config.json",)) or f"{weights.location}'s config.json"
    loaders = sorted(set(model_args) & set(LOADER_KEYWORDS))
    if loaders:  # timm would load (or torch.load) what the Hub config names
        raise CheckpointError(f"{config}: its model_args name {', '.join(loaders)}, which load weights and are not "
                              "model options: delete them from config.json (or fetch the model again)")
    found = weights._hub_shapes()
    if found is None:
        return  # timm downloads the Hub's file after the build; it is trusted as much as its config
    path, shapes = found
    classifier = cfg.get("classifier")
    classifier = classifier[0] if isinstance(classifier, list | tuple) and classifier else classifier
    head = shapes.get(f"{classifier}.weight", ()) if isinstance(classifier, str) else ()
    classes, offset = cfg.get("num_classes"), cfg.get("label_offset") or 0
    if head and classes is not None and (type(classes) is not int or type(offset) is not int
                                         or classes + offset != head[0]):
        # timm drops the file's classifier whenever the model's class count differs from num_classes
        offset_note = f" (label_offset {offset!r})" if offset else ""
        raise CheckpointError(f"{config}: its num_classes {classes!r}{offset_note} contradicts {classifier}.weight "
                              f"in {path}, which has {head[0]} classes: fix or delete config.json, then fetch the "
                              "model again")
    declared = {**model_args, "num_classes": classes}
    what = f"its model_args and num_classes ({str(declared)[:200]})"
    try:
        skeleton = build_meta_skeleton(architecture, len(shapes), pretrained_cfg=cfg, **model_args)
    except SkeletonTooLargeError:
        raise CheckpointError(f"{config}: {what} make {architecture} far larger than the {len(shapes)} tensors its "
                              f"weights file {path} stores; the Hub config does not describe these weights: fix "
                              "or delete config.json, then fetch the model again") from None
    except BUILD_ERRORS as err:
        raise CheckpointError(f"{config}: {what} do not build {architecture}: {describe_build_error(err)}") from None
    first = cfg.get("first_conv")
    names = dict(skeleton.named_modules())
    for conv in (first,) if isinstance(first, str) else first or ():  # timm's loader looks these up by name
        if f"{conv}.weight" in shapes and conv not in names:
            raise CheckpointError(f"{config}: the weights file {path} has a stem {conv!r} (pretrained_cfg first_conv),"
                                  f" which {architecture} has not: the Hub config names an architecture these weights"
                                  " are not; fix or delete config.json, then fetch the model again")
    numel = sum(p.numel() for p in skeleton.state_dict().values())
    stored = sum(torch.Size(shape).numel() for shape in shapes.values())
    if numel > _HUB_NUMEL_RATIO * stored:
        raise CheckpointError(f"{config}: {what} make a {architecture} of {numel:,} values, but its weights file "
                              f"{path} stores {stored:,}; the Hub config does not describe these weights: fix or "
                              "delete config.json, then fetch the model again")


def _network(model: nn.Module) -> nn.Module:
    """The network a ``features_only`` wrapper (timm's ``FeatureGetterNet``, what vitlab's models and most of timm's
    build) keeps as ``.model``, where timm loads the weights; else ``model`` itself."""
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) and hasattr(inner, "pretrained_cfg") else model


def _file_overlay(weights: PretrainedWeights) -> dict[str, Any]:
    """timm ``pretrained_cfg_overlay`` for a file: its tensors, and its real class and channel counts (so timm drops
    the classifier or adapts the stem only when they differ)."""
    state_dict = weights.state_dict()
    cfg = weights.pretrained_cfg()
    overlay: dict[str, Any] = {"state_dict": dict(state_dict)}
    classifier = cfg.get("classifier")
    classifier = classifier[0] if isinstance(classifier, list | tuple) else classifier
    head = state_dict.get(f"{classifier}.weight") if classifier else None
    if head is not None:
        overlay["num_classes"] = int(head.shape[0])
    chans = weights.in_chans()
    if chans:
        size = tuple(cfg.get("input_size") or (3, 224, 224))
        overlay["input_size"] = (chans, *size[1:])
    return overlay


def _check_loaded(model: nn.Module, loads: list[tuple[nn.Module, Any]], weights: PretrainedWeights) -> None:
    results = [result for module, result in loads if module is model]
    if not results:
        raise CheckpointError(f"timm loaded no weights from {weights.location} into {type(model).__name__}: the "
                              "model's loader bypasses load_state_dict; load them yourself")
    classifier = model.pretrained_cfg.get("classifier") or ()
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    missing = [k for k in results[-1].missing_keys if not any(k.startswith(f"{c}.") for c in classifier)]
    if missing:
        unexpected = list(results[-1].unexpected_keys)
        prefixes = {key[: -len(own)] for own in missing for key in unexpected if key.endswith(f".{own}")}
        cause = (f"the file's names carry the prefix {prefixes.pop()!r} (a wrapper module's attribute): save the "
                 "network's own state_dict()" if len(prefixes) == 1 else "another architecture?")
        raise CheckpointError(f"weights {weights.location} lack {len(missing)} tensors of {type(model).__name__}: "
                              f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''} ({cause})")


def _unpickler_reason(err: BaseException) -> str:
    """torch's reason for refusing a pickle (under timm's wrapper, if any), without its advice to retry with
    ``weights_only=False``: the paragraphs of its message that are not boilerplate."""
    text = str(err.__cause__ if isinstance(err.__cause__, pickle.UnpicklingError) else err)
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue", "(1) ", "(2) ")
    parts = [" ".join(p.split()) for p in text.split("\n\n")]
    return " ".join(p for p in parts if p and not p.startswith(boilerplate)) or _first_lines(err, 1)


def _first_lines(err: BaseException, n: int = 6) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines[:n]) + (" ..." if len(lines) > n else "")


def load_pretrained(model: nn.Module, spec: str | Mapping[str, Any] | PretrainedWeights) -> nn.Module:
    """Load weights into an existing timm model with timm's loader (its checkpoint filter, stem and head handling).

    Args:
        model: a model built by ``timm.create_model`` (it carries ``pretrained_cfg``).
        spec: anything ``resolve_pretrained`` takes, or a ``PretrainedWeights``.

    Returns:
        ``model``, loaded in place.

    Raises:
        CheckpointError: missing or mis-shaped non-classifier tensors, named with the source.

    Example:
        >>> import tempfile, timm, torch
        >>> from safetensors.torch import save_file
        >>> path = tempfile.mkdtemp() + "/vit.safetensors"
        >>> source = timm.create_model("vit_tiny_patch16_224", depth=1, img_size=32)
        >>> save_file(source.state_dict(), path)
        >>> model = load_pretrained(timm.create_model("vit_tiny_patch16_224", depth=1, img_size=32), path)
        >>> torch.equal(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
        True
    """
    from timm.models import load_pretrained as timm_load_pretrained
    from timm.models import model_entrypoint

    wrapper, model = model, _network(model)  # features_only: load into the network the wrapper reads
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    architecture = cfg.get("architecture")
    if not architecture:
        raise ConfigError("load_pretrained needs a model built by timm.create_model (it has no pretrained_cfg)")
    name = architecture if not cfg.get("tag") else f"{architecture}.{cfg['tag']}"
    weights = spec if isinstance(spec, PretrainedWeights) else resolve_pretrained(spec, name)
    if weights is None:
        raise ConfigError("load_pretrained got no weights (None): pass a path, 'timm' or 'hf-hub:ORG/NAME'")
    if weights.source in ("vitlab", "file"):
        cfg.update(_file_overlay(weights))
    elif weights.source == "hf-hub":
        weights.check_architecture(architecture)
        _check_hub_model_args(weights)  # its num_classes decides whether timm keeps the file's classifier
        cfg = weights._hub()[0]
    module = importlib.import_module(model_entrypoint(architecture).__module__)
    in_chans = _model_in_chans(model, cfg)
    try:
        with record_state_dict_loads() as loads, _hub_errors(weights):
            timm_load_pretrained(model, pretrained_cfg=cfg, num_classes=getattr(model, "num_classes", 1000),
                                 in_chans=in_chans, filter_fn=getattr(module, "checkpoint_filter_fn", None))
    except RuntimeError as err:
        raise CheckpointError(f"weights {weights.location} do not fit {architecture}: {_first_lines(err)}") from None
    weights.release()
    _check_loaded(model, loads, weights)
    return wrapper


def _model_in_chans(model: nn.Module, cfg: dict[str, Any]) -> int:
    first = cfg.get("first_conv")
    first = first[0] if isinstance(first, list | tuple) else first
    with contextlib.suppress(AttributeError):
        return int(model.get_submodule(first).in_channels)
    return int((cfg.get("input_size") or (3,))[0])

