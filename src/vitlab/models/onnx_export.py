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
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

__all__ = ["export_onnx"]


def _require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"ONNX export needs {module!r}: pip install 'vitlab[export]'") from err


def export_onnx(
    model: nn.Module, path: str | Path, input_size: Sequence[int] | None = None, *, check: bool = True,
    atol: float = 1e-4, max_batch: int = 1024,
) -> Path:
    """Export ``model`` (eval mode) to ONNX with input ``images (B, C, H, W)`` and output ``logits``, ``B`` dynamic.

    Args:
        model: An image model in eval mode, e.g. ``timm.create_model("inception_transformer_small").eval()``.
        path: Where to write the ``.onnx`` file (its folder must exist).
        input_size: ``(C, H, W)`` of the traced input; default: the model's ``pretrained_cfg["input_size"]``. Height
            and width are fixed in the graph, the batch size is free (1 to ``max_batch``).
        check: Run the file with onnxruntime on a batch of 3 random images (the graph is traced with 2) and raise
            ``ValueError`` if any output differs from PyTorch's by more than ``atol``.
        atol: Largest absolute difference the check accepts.
        max_batch: Largest batch size the exported graph accepts.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if model.training:
        raise ValueError("export_onnx exports inference graphs: call model.eval() first (dropout and batch-norm "
                         "statistics differ in training mode)")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"no folder {path.parent} to write {path.name} into: create it first")
    if input_size is None:
        input_size = getattr(model, "pretrained_cfg", {}).get("input_size")
        if input_size is None:
            raise ValueError("the model has no pretrained_cfg['input_size']: pass input_size=(C, H, W)")
    if len(input_size) != 3 or min(input_size) < 1:
        raise ValueError(f"input_size must be (C, H, W) with positive sizes, got {tuple(input_size)}")
    if atol <= 0 or max_batch < 3:
        raise ValueError(f"atol must be > 0 and max_batch >= 3, got atol={atol}, max_batch={max_batch}")
    for module in ("onnx", "onnxscript"):
        _require(module)
    ref = next(model.parameters())
    example = torch.randn(2, *input_size, device=ref.device, dtype=ref.dtype)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    torch.onnx.export(
        model, (example,), str(path), dynamo=True, input_names=["images"], output_names=["logits"],
        dynamic_shapes=({0: batch},), verbose=False,
    )
    if check:
        ort = _require("onnxruntime")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        images = torch.randn(3, *input_size, generator=torch.Generator().manual_seed(0))
        (onnx_out,) = session.run(["logits"], {"images": images.numpy()})
        with torch.no_grad():
            expected = model(images.to(ref.device, ref.dtype)).float().cpu()
        error = (torch.from_numpy(onnx_out) - expected).abs().max().item()
        if not error <= atol:
            raise ValueError(f"onnxruntime's outputs differ from PyTorch's by up to {error:.3g} > atol={atol}: the "
                             f"exported file {path} is not faithful; report the model and torch/onnx versions")
    return path
