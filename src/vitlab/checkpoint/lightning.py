"""Evaluating a Lightning ``.ckpt`` of a finished run (e.g. the best epoch a ``ModelCheckpoint`` kept).

A run's ``trainer.callbacks`` may keep other checkpoints than the final ``model.safetensors`` (``ModelCheckpoint``
with ``monitor: val/loss``, ``save_top_k``); Lightning users evaluate those by path. `checkpoint_weights` reads the
``.ckpt`` with ``weights_only=True`` (never unpickling code), takes the weights the run evaluates (the EMA copy when
the run kept one) and writes them with the run's own ``model.safetensors`` metadata (architecture, data statistics),
so evaluation, prediction, robustness and negative-view reports treat them exactly as the run's final weights.

Example (a run whose best epoch ModelCheckpoint kept)::

    with checkpoint_weights("runs/r/checkpoints/best.ckpt") as weights:  # a temporary model.safetensors
        evaluate_checkpoint(weights, "digits")
"""

from __future__ import annotations

import contextlib
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from vitlab.checkpoint.format import ADAPTER_NAME, CheckpointError, read_metadata, read_tensor_shapes, save_checkpoint
from vitlab.checkpoint.pretrained import LIGHTNING_PREFIXES

__all__ = ["checkpoint_weights", "is_lightning_checkpoint", "lightning_run_folder", "load_lightning_checkpoint"]


def lightning_run_folder(ckpt: Path) -> Path:
    """The finished run folder that holds ``ckpt`` (``checkpoints/`` or below: ``{val/loss}`` makes sub-folders)."""
    for folder in list(ckpt.parents)[:4]:
        if (folder / "config.yaml").is_file():
            if (folder / ADAPTER_NAME).is_file() and not (folder / "model.safetensors").is_file():
                raise CheckpointError(f"{ckpt} is a checkpoint of a bottleneck-adapter run, whose adapted weights eval "
                                      f"cannot read from a .ckpt: pass the run folder ({folder}), which holds its "
                                      f"{ADAPTER_NAME}")
            if not (folder / "model.safetensors").is_file():
                raise CheckpointError(f"{ckpt} belongs to the run {folder}, which has not finished (no "
                                      "model.safetensors, which records its architecture): finish it with `vitlab fit "
                                      f"--name {folder.name} --output_dir {folder.parent} --resume true`, then pass "
                                      "this checkpoint again")
            return folder
    raise CheckpointError(f"{ckpt} is a Lightning checkpoint outside a vitlab run folder (no config.yaml above it): "
                          "pass a run folder, its model.safetensors, or a .ckpt inside a finished run's folder")


def load_lightning_checkpoint(path: str | Path, fix: str = "") -> object:
    """``torch.load(path, weights_only=True)`` on the CPU (memory-mapped); a file it refuses is one `CheckpointError`
    that says what is wrong (empty, corrupt or truncated, or pickled code) without torch's advice to retry with
    ``weights_only=False``, followed by ``fix``.

    Example:
        >>> import tempfile
        >>> empty = Path(tempfile.mkdtemp()) / "last.ckpt"
        >>> _ = empty.write_bytes(b"")
        >>> load_lightning_checkpoint(empty)
        Traceback (most recent call last):
        ...
        vitlab.checkpoint.format.CheckpointError: ... is not a readable Lightning checkpoint: empty (0 bytes; its \
write was interrupted)
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        size = path.stat().st_size if path.is_file() else 0
        if size == 0:
            why = "empty (0 bytes; its write was interrupted)"
        elif isinstance(err, pickle.UnpicklingError) and "global" in str(err).lower():  # names a class or function
            why = ("it holds pickled Python objects besides tensors, which could run code when loaded, so it was "
                   "refused")
        else:
            why = f"corrupt or truncated ({size} bytes; {type(err).__name__})"
    raise CheckpointError(f"{path} is not a readable Lightning checkpoint: {why}{fix}") from None


def is_lightning_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` names an existing ``.ckpt`` file (``~`` expanded), which :func:`checkpoint_weights` reads."""
    ckpt = Path(path).expanduser()
    return ckpt.suffix == ".ckpt" and ckpt.is_file()


@contextlib.contextmanager
def checkpoint_weights(path: str | Path) -> Iterator[str | Path]:
    """Yield ``path`` itself, or for a ``.ckpt`` a temporary ``model.safetensors`` of its weights (see the module).

    Raises:
        CheckpointError: the ``.ckpt`` is not in a finished run folder, is unreadable, is of a peft run (its adapted
            names differ from the merged model), or its weights do not match the run's architecture.
    """
    if not is_lightning_checkpoint(path):
        yield path
        return
    ckpt = Path(path).expanduser()
    run = lightning_run_folder(ckpt)
    meta = read_metadata(run / "model.safetensors")
    saved = load_lightning_checkpoint(ckpt)
    state = saved.get("state_dict") if isinstance(saved, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{ckpt} has no Lightning 'state_dict' of tensors: it is not a checkpoint of "
                              "`vitlab fit`")
    if saved.get("vitlab_model_transform") or meta["kind"] != "model":
        raise CheckpointError(f"{ckpt} is a checkpoint of a peft run, whose adapted weights eval cannot read: pass the "
                              f"run's merged weights ({run}), or start a run from it with model.pretrained")
    prefix = next(p for p in LIGHTNING_PREFIXES if p == "model." or any(k.startswith(p) for k in state))
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    expected = read_tensor_shapes(run / "model.safetensors")
    stored = {k: tuple(v.shape) for k, v in weights.items()}
    if stored != expected:
        raise CheckpointError(f"{ckpt} does not hold the weights of {run}'s model ({meta['model_name']}): its "
                              f"'{prefix}*' tensors differ in names or shapes from {run / 'model.safetensors'}")
    extra = {k: v for k, v in meta["extra"].items() if k != "metrics"}  # the final metrics are not this epoch's
    with tempfile.TemporaryDirectory(prefix="vitlab-ckpt-") as tmp:
        yield save_checkpoint(Path(tmp) / "model.safetensors", weights, kind="model", model_name=meta["model_name"],
                              model_kwargs=meta["model_kwargs"], extra={**extra, "lightning_checkpoint": str(ckpt)})
