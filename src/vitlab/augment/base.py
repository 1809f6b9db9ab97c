"""Shared flow of the patch transforms (kornia-style): validate the grid, draw parameters, apply one remap.

Contract of every transform built on `PatchTransform`:

- ``forward(x, generator=None, params=None)``: ``x`` is float or uint8, ``(B, C, H, W)`` or ``(C, H, W)``; the result
  is a **new** tensor of the same shape, dtype and device (``x`` is never modified). A 3-D input with more than 4
  channels is refused: it is almost always a batch of grey images ``(B, H, W)``, which would get one shared view
  (pass ``x.unsqueeze(1)``; a single many-channel image goes as ``x.unsqueeze(0)``).
- Randomness is per sample, drawn on the generator's device (CPU by default, torch's default generator when
  ``generator`` is None) and moved to ``x``'s device. The drawn parameters are kept in ``last_params`` and can be
  replayed: ``t(y, params=t.last_params)``.
- ``p``: probability that a sample is transformed (untransformed samples pass through bit-identical);
  ``same_on_batch``: one draw shared by the whole batch.
- No silent no-op: a transformed sample never comes back with all its cells in place, ``patch_size`` must be at least
  2 (a 1-pixel cell turned in place is the identity), and a ``patch_size`` that does not fit the input raises an
  error that lists the sizes that do (``valid_patch_sizes(H, W)``).
- ``model_patch_size`` enforces the paper's alignment rule: ``patch_size`` must be a multiple of the ViT's patch size.
- ``generator`` must be a ``torch.Generator`` or None. A ``torch.Generator`` you create and keep inside a ``Dataset``
  is copied, state included, into every ``DataLoader`` worker, so the workers draw the same views; the default
  (``generator=None``, torch's default generator, which PyTorch seeds differently in each worker) has no such problem.
- Replayed ``params`` are checked (shapes, int dtype, ``source`` in ``[0, N)``, ``rotation`` in ``{0, 1, 2, 3}``);
  freshly drawn ones are not re-checked (the image tensors themselves are never scanned).
- A channels-last batch comes back channels-last. torchvision: a ``tv_tensors.Image`` comes back as a
  ``tv_tensors.Image`` (as torchvision's own v2 transforms keep it), so the transforms sit inside ``v2.Compose``
  after ``v2.ToImage()`` / ``v2.ToDtype``; other tv_tensors (masks, boxes, videos) are refused. They take one image
  tensor: a ``v2.Compose`` called on ``(image, label)`` would hand them the label as ``generator``, which is refused
  with the fix (transform the image alone).
- ``inverse(y)`` undoes the last call (kornia's ``inverse``): exact for P-Shuffle and P-Rotate; P-Infill overwrites
  cells and is refused.

Parameters (``last_params``): ``source`` and ``rotation`` ``(B, N)`` int64 (see `vitlab.augment.remap_cells`),
``applied`` ``(B,)`` bool, ``grid`` ``(2,)`` = (rows, cols); `NegativeViews` adds ``kind`` ``(B,)`` (index into
``kinds``, -1 for untransformed samples).

Example:
    >>> import torch
    >>> from vitlab.augment import PatchRotate
    >>> t = PatchRotate(8)
    >>> x = torch.rand(2, 3, 16, 16)
    >>> torch.equal(t(x, generator=torch.Generator().manual_seed(0)), t(x, params=t.last_params))
    True
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision import tv_tensors

from vitlab.augment.functional import (
    _move_cells,
    cell_grid,
    check_cell_params,
    check_positive_int,
    inverse_cell_params,
    valid_patch_sizes,
)
from vitlab.augment.generators import apply_probability, check_generator
from vitlab.checks import check_probability
from vitlab.errors import ConfigError

__all__ = ["Params", "PatchTransform", "check_bool", "check_positive_int", "check_probability"]

Params = dict[str, Tensor]


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is a bool; else a `vitlab.errors.ConfigError` (``"no"`` or ``0`` are not silently read)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def _as_batch(x: Tensor) -> tuple[Tensor, bool]:
    if isinstance(x, (dict, list, tuple)):
        raise TypeError(f"expected one image torch.Tensor (B, C, H, W) or (C, H, W), got a {type(x).__name__}: "
                        "unlike torchvision's v2 transforms, patch transforms do not walk a sample's structure; "
                        "transform the image alone (e.g. sample['image'] = transform(sample['image'])), or "
                        "torch.stack a list of same-size images into a batch")
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor (B, C, H, W) or (C, H, W), got {type(x).__name__}: convert a PIL "
                        "image or an (H, W, C) array first, e.g. with torchvision's v2.ToImage() then "
                        "v2.ToDtype(torch.float32, scale=True) in front of the transform")
    if isinstance(x, tv_tensors.TVTensor) and not isinstance(x, tv_tensors.Image):
        raise TypeError(f"patch transforms make negative views of images; got a tv_tensors.{type(x).__name__}: pass "
                        "a tv_tensors.Image or a plain tensor (B, C, H, W) (video frames: a plain (T, C, H, W) "
                        "tensor with same_on_batch=True for one draw per clip)")
    if x.ndim not in (3, 4):
        raise ValueError(f"expected images (B, C, H, W) or (C, H, W), got shape {tuple(x.shape)}")
    if not (x.dtype.is_floating_point or x.dtype == torch.uint8):
        raise TypeError(f"expected a float or uint8 tensor, got {x.dtype}; convert with x.float() or x.to(torch.uint8)")
    if x.ndim == 3 and x.shape[0] > 4:  # one image has 1-4 channels; (N, H, W) is a batch of grey images
        raise ValueError(f"a 3-D input is one image (C, H, W) with C <= 4 channels, got shape {tuple(x.shape)}, which "
                         f"looks like a batch of {x.shape[0]} grey images (B, H, W) (e.g. raw MNIST): pass "
                         "x.unsqueeze(1) for (B, 1, H, W) (each image then gets its own view); for one image with more "
                         "channels pass x.unsqueeze(0)")
    return (x.unsqueeze(0), True) if x.ndim == 3 else (x, False)


class PatchTransform(nn.Module, ABC):
    """Base of the patch transforms: subclasses define ``_draw`` (and ``_problem`` for grid conditions)."""

    def __init__(
        self, patch_size: int, *, p: float = 1.0, same_on_batch: bool = False, model_patch_size: int | None = None
    ) -> None:
        super().__init__()
        if isinstance(patch_size, numbers.Integral) and patch_size == 1 and not isinstance(patch_size, bool):
            raise ConfigError(f"{type(self).__name__}: patch_size=1 makes 1-pixel cells, which are no patches (a view "
                              "must move or turn patches whose content it keeps; a 1-pixel cell has none, and "
                              "rotating one leaves it unchanged); use patch_size >= 2 (ideally the model's patch size "
                              "or a multiple)")
        self.patch_size = check_positive_int("patch_size", patch_size, minimum=2)
        patch_size = self.patch_size
        if model_patch_size is not None:
            model_patch_size = check_positive_int("model_patch_size", model_patch_size)
            if patch_size % model_patch_size:
                multiples = ", ".join(str(model_patch_size * k) for k in range(1, 5))
                raise ConfigError(
                    f"patch_size={patch_size} is not a multiple of model_patch_size={model_patch_size} (the paper's "
                    f"alignment rule): use one of {multiples}, ... that divides the input (see .valid_patch_sizes)"
                )
        self.p = check_probability("p", p)
        self.same_on_batch = check_bool("same_on_batch", same_on_batch)
        self.model_patch_size = model_patch_size
        self.last_params: Params | None = None

    def _problem(self, rows: int, cols: int) -> str | None:
        """Why a ``rows`` x ``cols`` cell grid cannot be used, or None."""
        return None

    @abstractmethod
    def _draw(self, batch: int, rows: int, cols: int, generator: torch.Generator | None) -> Params:
        """Draw ``{"source": (B, N), "rotation": (B, N)}`` (plus optional per-sample keys) for transformed samples."""

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """The cell grid ``(rows, cols)`` for an ``height`` x ``width`` input; raises listing the sizes that fit."""
        return cell_grid(height, width, self.patch_size, self.model_patch_size, self._problem)

    def valid_patch_sizes(self, height: int, width: int) -> list[int]:
        """Every ``patch_size`` this transform accepts for an ``height`` x ``width`` input (same other settings)."""
        return valid_patch_sizes(height, width, self.model_patch_size, lambda r, c: self._problem(r, c) is None)

    @torch.compiler.disable  # a few tiny draws with data-dependent retries: nothing to compile, and symbolic sizes
    def generate_parameters(self, shape: Sequence[int], generator: torch.Generator | None = None) -> Params:
        """Draw parameters for a batch of ``shape = (B, C, H, W)`` on the generator's device (run eagerly, also
        inside ``torch.compile``: the same draws as without it)."""
        if not isinstance(shape, (tuple, list)) or len(shape) != 4:
            raise ConfigError(f"shape must be a batch shape (B, C, H, W), got {shape!r}: for one (C, H, W) image pass "
                              "(1, *image.shape); replaying the result on that image works as on a batch of one")
        batch, height, width = shape[0], shape[-2], shape[-1]
        batch = check_positive_int("shape[0] (batch size)", batch, minimum=0)
        rows, cols = self.grid(height, width)
        count = 1 if self.same_on_batch else batch
        applied = apply_probability(count, self.p, generator)
        params = _keep_applied(self._draw(count, rows, cols, generator), applied)
        params["grid"] = torch.tensor([rows, cols])
        return _expand(params, batch) if self.same_on_batch else params

    def apply_transform(self, x: Tensor, params: Params) -> Tensor:
        """Apply drawn ``params`` to a ``(B, C, H, W)`` batch."""
        rows, cols = self.grid(x.shape[-2], x.shape[-1])
        expected = (x.shape[0], rows * cols)
        for key in ("source", "rotation"):
            if key not in params or tuple(params[key].shape) != expected:
                got = tuple(params[key].shape) if key in params else "missing"
                raise ValueError(f"params[{key!r}] has shape {got} but this batch needs {expected}: replay params "
                                 "only on a batch of the same size and image size they were drawn for")
        return _move_cells(x, self.patch_size, params["source"], params["rotation"])

    def forward(self, x: Tensor, generator: torch.Generator | None = None, params: Params | None = None) -> Tensor:
        """``(B, C, H, W)`` or ``(C, H, W)`` float/uint8 -> a new tensor of the same shape, dtype and device.

        ``generator``: a ``torch.Generator`` or None (torch's default generator). A generator kept inside a
        ``Dataset`` is copied into each ``DataLoader`` worker, so the workers repeat each other's views; use the default
        ``generator=None`` there. ``params``: replay the dict a call left in ``last_params`` instead of drawing.
        """
        images, single = _as_batch(x)
        self._check_generator_argument(generator)
        self._input_grid(images)
        if params is None:
            params = self.generate_parameters(images.shape, generator)
        else:
            self._check_replayed(images, params)
        self.last_params = params
        return _like(x, self.apply_transform(images, params), single)

    def inverse(self, x: Tensor, params: Params | None = None) -> Tensor:
        """Undo a call on its output ``x`` (kornia's ``inverse``): ``t.inverse(t(x)) == x`` bit for bit.

        Args:
            x: the transform's output, ``(B, C, H, W)`` or ``(C, H, W)``.
            params: the parameters of that call; default ``last_params`` (the latest call).

        Returns:
            A new tensor of ``x``'s shape, dtype and device. P-Shuffle and P-Rotate (and untransformed samples) are
            invertible; a P-Infill sample copied border cells over its centre, so it raises `vitlab.errors.ConfigError`.

        Example:
            >>> import torch
            >>> from vitlab.augment import PatchShuffle
            >>> t = PatchShuffle(8)
            >>> x = torch.rand(2, 3, 16, 16)
            >>> torch.equal(t.inverse(t(x)), x)
            True
        """
        images, single = _as_batch(x)
        if params is None:
            if self.last_params is None:
                raise ConfigError(f"{type(self).__name__}.inverse needs the parameters of a call: call the transform "
                                  "first (its last_params are used) or pass params=")
            params = self.last_params
        self._check_replayed(images, params)
        try:
            source, rotation = inverse_cell_params(params["source"], params["rotation"])
        except ConfigError as err:
            raise ConfigError(f"{type(self).__name__}.inverse: {err}") from None
        return _like(x, _move_cells(images, self.patch_size, source, rotation), single)

    def _check_generator_argument(self, generator: object) -> None:
        try:
            check_generator(generator)
        except TypeError as err:
            raise TypeError(f"{err}. {type(self).__name__} takes one image tensor (x, generator=None, params=None); "
                            "a torchvision v2.Compose called with several inputs, e.g. (image, label), passes the "
                            "label here: transform the image alone (x = transform(image)) and keep the label "
                            "outside the pipeline") from None

    def _input_grid(self, images: Tensor) -> tuple[int, int]:
        """`grid` of a ``(B, C, H, W)`` batch; an error on a (B, H, W, C) batch hints at the expected layout."""
        try:
            return self.grid(images.shape[-2], images.shape[-1])
        except ConfigError as err:
            if images.shape[-1] in (1, 3) and images.shape[1] > 4:
                raise ConfigError(f"{err}. The input {tuple(images.shape)} looks channels-last (B, H, W, C); the "
                                  "transforms expect (B, C, H, W): pass x.permute(0, 3, 1, 2)") from err
            raise

    def _check_replayed(self, images: Tensor, params: object) -> None:
        """Check user-supplied ``params`` (small (B, N) tensors only) before they index the images."""
        if not isinstance(params, dict):
            raise TypeError(f"params must be the dict a call of this transform left in .last_params (keys "
                            f"'source', 'rotation', ...), got {type(params).__name__}")
        missing = [key for key in ("source", "rotation") if key not in params]
        if missing:
            raise ConfigError(f"params lacks {missing}: pass the dict a call of this transform left in .last_params")
        rows, cols = self.grid(images.shape[-2], images.shape[-1])
        try:
            check_cell_params(params["source"], params["rotation"], images.shape[0], rows * cols)
        except ConfigError as err:
            raise ConfigError(f"params: {err}; replay params only on a batch of the same size and image size they "
                              "were drawn for, as the transform returned them") from err

    def extra_repr(self) -> str:
        extra = f", model_patch_size={self.model_patch_size}" if self.model_patch_size is not None else ""
        return f"patch_size={self.patch_size}, p={self.p}, same_on_batch={self.same_on_batch}{extra}"


def _like(x: Tensor, out: Tensor, single: bool) -> Tensor:
    """``out`` (a batch) in ``x``'s form: unbatched for a ``(C, H, W)`` ``x``, a ``tv_tensors.Image`` for an Image,
    channels-last for a channels-last batch (as torch's own ops keep the memory format)."""
    if single:
        out = out[0]
    elif not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return tv_tensors.wrap(out, like=x) if isinstance(x, tv_tensors.Image) else out


def _keep_applied(params: Params, applied: Tensor) -> Params:
    """Reset the parameters of samples that are not transformed to the identity remap (and ``kind`` to -1)."""
    source, rotation = params["source"], params["rotation"]
    identity = torch.arange(source.shape[1], device=source.device).expand_as(source)
    params["source"] = torch.where(applied[:, None], source, identity)
    params["rotation"] = torch.where(applied[:, None], rotation, torch.zeros_like(rotation))
    if "kind" in params:
        params["kind"] = torch.where(applied, params["kind"], torch.full_like(params["kind"], -1))
    params["applied"] = applied
    return params


def _expand(params: Params, batch: int) -> Params:
    return {k: v if k == "grid" else v.expand(batch, *v.shape[1:]).clone() for k, v in params.items()}
