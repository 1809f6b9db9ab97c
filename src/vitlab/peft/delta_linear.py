"""``DeltaLinear``: a frozen ``nn.Linear`` plus additive weight updates on row slices of it.

One wrapper serves every row-slice method (KAdaptation, ``lora_qv``): each slice ``rows=(a, b)`` owns a *delta*
module that returns ``x @ ΔWᵀ`` for its ``(b - a) × in_features`` block (``forward``) and the dense block itself
(``delta_weight``, used only for merging). Slicing is what lets a method adapt only the query and value rows of a
fused ``qkv`` projection, which HF peft cannot do (its layers adapt a whole weight; peft PR #1705).

Like a peft tuner layer it keeps ``base_layer``, starts as the identity (every delta is zero at initialisation),
touches the base weight only in ``merge``/``unmerge``, and returns the base output alone when disabled or merged.

Example:
    >>> import torch
    >>> from torch import nn
    >>> class Zero(nn.Module):
    ...     def __init__(self, out_f, in_f):
    ...         super().__init__()
    ...         self.w = nn.Parameter(torch.zeros(out_f, in_f))
    ...     def forward(self, x):
    ...         return x @ self.w.T
    ...     def delta_weight(self):
    ...         return self.w
    >>> layer = DeltaLinear(nn.Linear(4, 12), {"q": Zero(4, 4)}, {"q": (0, 4)})
    >>> layer(torch.randn(2, 3, 4)).shape
    torch.Size([2, 3, 12])
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["DeltaLinear"]


class DeltaLinear(nn.Module):
    """Frozen ``base_layer`` with per-slice deltas and an optional bias shared by all slices.

    Args:
        base_layer: the wrapped ``nn.Linear`` (weight ``(out, in)``).
        adapters: slice name -> delta module with ``forward(x[..., in]) -> [..., b - a]`` and
            ``delta_weight() -> [b - a, in]``.
        rows: slice name -> ``(a, b)`` output rows of ``base_layer.weight``; all slices must have the same width when
            ``bias`` is set.
        bias: add one trainable bias (zero-initialised, width ``b - a``) to every slice's output, as the KAdaptation
            reference shares one bias between its query and value deltas.

    Attributes:
        merged: the deltas are currently folded into ``base_layer`` (``merge``/``unmerge``).
        disabled: the deltas are skipped (``vitlab.peft.disable_adapter``).
    """

    def __init__(
        self, base_layer: nn.Linear, adapters: Mapping[str, nn.Module], rows: Mapping[str, tuple[int, int]],
        bias: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"DeltaLinear wraps an nn.Linear, got {type(base_layer).__name__}")
        if set(adapters) != set(rows) or not adapters:
            raise ValueError(f"adapters {sorted(adapters)} and rows {sorted(rows)} must name the same non-empty slices")
        for name, (a, b) in rows.items():
            if not 0 <= a < b <= base_layer.out_features:
                raise ValueError(f"slice {name!r} rows {(a, b)} are outside 0..{base_layer.out_features}")
        widths = {b - a for a, b in rows.values()}
        if bias and len(widths) != 1:
            raise ValueError(f"a shared delta bias needs slices of one width, got widths {sorted(widths)}")
        if bias and base_layer.bias is None:
            raise ValueError("the wrapped Linear has no bias, so a delta bias could not be merged into it; "
                             "disable the delta bias (e.g. KAdaptationConfig(bias=False))")
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict(dict(adapters))
        self.rows = {name: (int(a), int(b)) for name, (a, b) in rows.items()}
        weight = base_layer.weight
        self.adapter_bias = (
            nn.Parameter(torch.zeros(widths.pop(), device=weight.device, dtype=weight.dtype)) if bias else None
        )
        self.merged = False
        self.disabled = False
        self.train(base_layer.training)  # inserted into an eval-mode model, the wrapper stays in eval mode

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The base weight (code that reads ``layer.weight``, e.g. timm init helpers, keeps working)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x[..., in] -> base(x)[..., out]`` plus each slice's delta (and shared bias) on its rows."""
        if self.disabled and self.merged:
            self.unmerge()
        out = self.base_layer(x)
        if self.disabled or self.merged:
            return out
        for name, adapter in self.adapters.items():
            a, b = self.rows[name]
            delta = adapter(x).to(out.dtype)
            if self.adapter_bias is not None:
                delta = delta + self.adapter_bias
            if a == 0 and b == out.shape[-1]:
                out = out + delta
            else:
                out[..., a:b] += delta
        return out

    @torch.no_grad()
    def _delta_full(self) -> torch.Tensor:
        weight = self.base_layer.weight
        full = torch.zeros_like(weight)
        for name, adapter in self.adapters.items():
            a, b = self.rows[name]
            full[a:b] += adapter.delta_weight().to(weight.dtype)
        return full

    @torch.no_grad()
    def merge(self, safe_merge: bool = True) -> None:
        """Fold every delta (and the shared bias) into ``base_layer``; deterministic (no dropout).

        Args:
            safe_merge: compute on a copy and refuse to write non-finite weights.
        """
        if self.merged:
            return
        weight, base_bias = self.base_layer.weight, self.base_layer.bias
        new_weight = weight + self._delta_full()
        new_bias = None
        if self.adapter_bias is not None:
            new_bias = base_bias.clone()
            for a, b in self.rows.values():
                new_bias[a:b] += self.adapter_bias.to(base_bias.dtype)
        finite = torch.isfinite(new_weight).all() and (new_bias is None or torch.isfinite(new_bias).all())
        if safe_merge and not finite:
            raise ValueError("merging produced non-finite weights (the adapter diverged); the base layer is unchanged")
        weight.copy_(new_weight)
        if new_bias is not None:
            base_bias.copy_(new_bias)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the deltas merged by ``merge`` (a no-op when not merged)."""
        if not self.merged:
            return
        self.base_layer.weight.sub_(self._delta_full())
        if self.adapter_bias is not None:
            for a, b in self.rows.values():
                self.base_layer.bias[a:b] -= self.adapter_bias.to(self.base_layer.bias.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return f"rows={self.rows}, bias={self.adapter_bias is not None}, merged={self.merged}"
