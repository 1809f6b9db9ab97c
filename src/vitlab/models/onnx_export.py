"""ONNX export of timm / vitlab image models with a dynamic batch dimension, checked with onnxruntime.

Uses ``torch.onnx.export(..., dynamo=True)`` (the torch.export-based exporter; needs ``onnx`` and ``onnxscript``) and
compares onnxruntime's outputs with PyTorch's on a batch of another size than the one traced, so the dynamic batch is
exercised. Install the exporters with ``pip install 'vitlab[export]'``.

Example:
    >>> import tempfile, timm, vitlab
    >>> from vitlab.models import export_onnx
    >>> model = timm.create_model("inception_transformer_tiny", img_size=32).eval()
    >>> export_onnx(model, tempfile.mkdtemp() + "/iformer_tiny.onnx").suffix
    '.onnx'
"""

import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch
from timm.models import get_model_input_config
from torch import nn

from vitlab.checks import check_bool, check_float, check_int

__all__ = ["export_onnx"]


def _require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"ONNX export needs {module!r}: pip install 'vitlab[export]'") from err


def _numpy_dtype(dtype: torch.dtype) -> str:
    """The NumPy dtype onnxruntime takes for a graph input of ``dtype`` (``"float32"`` for those NumPy lacks)."""
    return {torch.float16: "float16", torch.float64: "float64"}.get(dtype, "float32")


def export_onnx(
    model: nn.Module, path: str | Path, input_size: Sequence[int] | None = None, *, check: bool = True,
    atol: float = 1e-4, max_batch: int = 1024,
) -> Path:
    """Export ``model`` (eval mode) to ONNX with input ``images (B, C, H, W)`` and output ``logits``, ``B`` dynamic.

    Args:
        model: An image model in eval mode, e.g. ``timm.create_model("inception_transformer_small").eval()``.
        path: Where to write the ``.onnx`` file (its folder must exist).
        input_size: ``(C, H, W)`` of the traced input; default: the size the model was built for (timm's
            ``get_model_input_config``: its ``in_chans`` and ``img_size``, e.g. ``(1, 64, 64)`` for
            ``img_size=64, in_chans=1``; a model built by timm only). Height and width are fixed in the graph,
            the batch size is free (1 to ``max_batch``).
        check: Run the file with onnxruntime on a batch of 3 random images (the graph is traced with 2) and raise
            ``ValueError`` if any output differs from PyTorch's by more than ``atol``.
        atol: Largest absolute difference the check accepts.
        max_batch: Largest batch size the exported graph accepts.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: not a module or not a path; ValueError: training mode, bad sizes or options, an input the model
        refuses (its own message), outputs that differ; FileNotFoundError / IsADirectoryError / PermissionError: an
        unusable ``path``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_onnx needs an nn.Module (e.g. timm.create_model(...).eval()), got "
                        f"{type(model).__name__}")
    if model.training:
        raise ValueError("export_onnx exports inference graphs: call model.eval() first (dropout and batch-norm "
                         "statistics differ in training mode)")
    if not isinstance(path, str | os.PathLike) or path == "":
        raise TypeError(f"path must be the .onnx file to write (a str or pathlib.Path), got {path!r}")
    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: pass the path of the .onnx file to write, e.g. "
                                f"{path / 'model.onnx'}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"no folder {path.parent} to write {path.name} into: create it first")
    if not os.access(path.parent, os.W_OK):
        raise PermissionError(f"cannot write into {path.parent}: choose a folder you can write to")
    if input_size is None:
        if not (getattr(model, "pretrained_cfg", None) or {}).get("input_size"):
            raise ValueError("the model has no pretrained_cfg['input_size']: pass input_size=(C, H, W)")
        # the model's own img_size / in_chans (timm's traits), not the source weights' pretrained_cfg
        input_size = tuple(get_model_input_config(model)["input_size"])
    if isinstance(input_size, str) or not isinstance(input_size, Sequence) or len(input_size) != 3 or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in input_size):
        raise ValueError(f"input_size must be (C, H, W) with positive int sizes, got {input_size!r}")
    check_bool("check", check)
    atol = check_float("atol", atol, minimum=0.0, fix="the largest difference from PyTorch's outputs, e.g. 1e-4")
    check_int("max_batch", max_batch, minimum=3, fix="the largest batch size the exported graph accepts")
    if atol == 0:
        raise ValueError("atol must be > 0, got 0: float outputs of two runtimes differ by rounding, e.g. 1e-4")
    for module in ("onnx", "onnxscript"):
        _require(module)
    ref = next(model.parameters(), torch.empty(0))  # a model without parameters runs on the CPU in float32
    example = torch.randn(2, *input_size, device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        model(example)  # the model's own error for an input it cannot take, before the exporter wraps it
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    torch.onnx.export(
        model, (example,), str(path), dynamo=True, input_names=["images"], output_names=["logits"],
        dynamic_shapes=({0: batch},), verbose=False,
    )
    if check:
        ort = _require("onnxruntime")
        images = torch.randn(3, *input_size, generator=torch.Generator().manual_seed(0)).to(ref.dtype)
        try:  # the graph takes the model's dtype; onnxruntime's CPU kernels lack some (float64 Conv, bfloat16)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            (onnx_out,) = session.run(["logits"], {"images": images.float().numpy().astype(_numpy_dtype(ref.dtype))})
        except Exception as err:  # onnxruntime's own exception types, re-raised with the fix
            raise ValueError(f"{path} was written, but onnxruntime cannot run it to check it ({ref.dtype} model): "
                             f"{str(err).splitlines()[0][:300]}; export a float32 model (model.float()), or pass "
                             "check=False to keep the file unchecked") from None
        with torch.no_grad():
            expected = model(images.to(ref.device)).float().cpu()
        error = (torch.from_numpy(onnx_out).float() - expected).abs().max().item()
        if not error <= atol and ref.dtype == torch.float16:
            raise ValueError(f"onnxruntime's outputs differ from PyTorch's by up to {error:.3g} > atol={atol}: "
                             f"float16 kernels round differently (about 1e-3); pass atol=1e-2 to check {path}")
        if not error <= atol:
            raise ValueError(f"onnxruntime's outputs differ from PyTorch's by up to {error:.3g} > atol={atol}: the "
                             f"exported file {path} is not faithful; report the model and torch/onnx versions")
    return path
