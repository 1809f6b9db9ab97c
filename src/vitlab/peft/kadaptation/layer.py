"""KAdaptation building blocks: the shared Kronecker rule ``A`` and the per-layer delta ``s · Σ_i A_i ⊗ u_i v_iᵀ``.

Shapes (n terms, weight block ``out × in``, ``p = out/n``, ``q = in/n``, rank ``r``, A-rank ``a``):

* ``KroneckerRule``: ``left (n, n, a)``, ``right (n, a, n)`` so ``A_i = left_i @ right_i`` (or ``weight (n, n, n)``
  when ``a_rank`` is None). Reference names: ``phm_rule*_left/right``.
* ``KAdaptationDelta``: ``u (n, p, r)`` (zero at init), ``v (n, r, q)``; ``B_i = u_i @ v_i``. Reference names:
  ``*_adapter1_left/right``.

With a rank-``a`` ``A_i = Σ_a l_ia r_iaᵀ`` and ``B_i = Σ_r u_ir v_irᵀ``, ``A_i ⊗ B_i = Σ_{a,r} (l_ia ⊗ u_ir)(r_ia ⊗
v_ir)ᵀ``: ΔW = L Rᵀ has rank at most ``n · a · r`` (32 with the defaults, from the parameters of a rank-1 LoRA), and
the factored path computes ``(x R) Lᵀ`` with ``L (out, n·a·r)``, ``R (in, n·a·r)``: ``O(T · n · a · r · (in + out))``,
never the dense ``out × in`` ΔW. A full ``A_i`` (``a_rank=None``) uses ``X = x.reshape(T, n, q)`` and
``A_i X B_iᵀ``. The dense path (needed for dropout on ΔW, as in the reference) builds ΔW once per forward.

Example:
    >>> import torch
    >>> rule = KroneckerRule(n=4, a_rank=1, generator=torch.Generator().manual_seed(0))
    >>> delta = KAdaptationDelta(rule, out_features=8, in_features=12, rank=1, scale=1.0)
    >>> delta(torch.randn(5, 12)).abs().max().item()  # u starts at zero, so ΔW = 0
    0.0
    >>> delta.delta_weight().shape
    torch.Size([8, 12])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KAdaptationDelta", "KroneckerRule"]


def _normal(shape: tuple[int, ...], std: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(shape, generator=generator) * std


class KroneckerRule(nn.Module):
    """The ``n`` matrices ``A_i ∈ R^{n×n}`` shared by many layers; entries start with std ≈ √a_rank / n.

    Args:
        n: number of terms and size of each ``A_i``.
        a_rank: rank of each ``A_i = left_i @ right_i``; ``None`` stores the full ``(n, n, n)`` tensor.
        generator: source of the initialisation (CPU); ``None`` uses the global RNG.
        device, dtype: where the parameters live.
    """

    def __init__(
        self, n: int, a_rank: int | None, generator: torch.Generator | None = None,
        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.n = n
        self.a_rank = a_rank
        dd = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        if a_rank is None:
            self.weight = nn.Parameter(_normal((n, n, n), 1.0 / n, generator).to(**dd))
        else:
            std = n ** -0.5
            self.left = nn.Parameter(_normal((n, n, a_rank), std, generator).to(**dd))
            self.right = nn.Parameter(_normal((n, a_rank, n), std, generator).to(**dd))

    def matrices(self) -> torch.Tensor:
        """All ``A_i`` as one ``(n, n, n)`` tensor (index 0 = term)."""
        return self.weight if self.a_rank is None else self.left @ self.right

    def extra_repr(self) -> str:
        return f"n={self.n}, a_rank={self.a_rank}"


class KAdaptationDelta(nn.Module):
    """``x ↦ x ΔWᵀ`` with ``ΔW = scale · Σ_i A_i ⊗ (u_i v_iᵀ)`` for one ``out × in`` weight block.

    Args:
        rule: the ``KroneckerRule`` providing ``A``; it is **not** registered as a child (it lives once, on the model
            root, when shared), unless ``own_rule`` is set.
        out_features, in_features: block shape; ``rule.n`` must divide both.
        rank: rank ``r`` of each ``B_i``.
        scale: the constant ``s``.
        dropout: dropout on the dense ΔW in training (forces the dense path).
        path: ``"auto"``, ``"factored"`` or ``"dense"``.
        own_rule: register ``rule`` as a child (an unshared ``A``).
        generator, device, dtype: initialisation source and placement.
    """

    def __init__(
        self, rule: KroneckerRule, out_features: int, in_features: int, rank: int, scale: float,
        dropout: float = 0.0, path: str = "auto", own_rule: bool = False, generator: torch.Generator | None = None,
        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        n = rule.n
        if out_features % n or in_features % n:
            raise ValueError(f"n={n} must divide both block dimensions, got {out_features} x {in_features}")
        p, q = out_features // n, in_features // n
        dd = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        self.out_features, self.in_features, self.rank = out_features, in_features, rank
        self.scale, self.dropout = float(scale), float(dropout)
        self.u = nn.Parameter(torch.zeros(n, p, rank, **dd))
        bound = 1.0 / math.sqrt(q)  # LoRA's A init: kaiming_uniform_(a=sqrt(5)) gives U(±1/sqrt(fan_in))
        self.v = nn.Parameter((torch.rand((n, rank, q), generator=generator) * 2 - 1).mul_(bound).to(**dd))
        if own_rule:
            self.rule = rule
        else:
            object.__setattr__(self, "rule", rule)  # shared: owned (and saved) by the model root
        a = rule.a_rank or n
        factored = n * (in_features * rank + n * a * rank + a * rank * p + out_features * a)
        cheaper = factored < out_features * in_features
        self.factored = path == "factored" or (path == "auto" and dropout == 0 and cheaper)

    def delta_weight(self) -> torch.Tensor:
        """The dense ``(out, in)`` ΔW, scale included, no dropout (used for merging and the dense path)."""
        blocks = torch.einsum("ikj,ipl->kpjl", self.rule.matrices(), self.u @ self.v)
        return blocks.reshape(self.out_features, self.in_features) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x[..., in] -> x ΔWᵀ [..., out]``."""
        if not self.factored:
            delta = self.delta_weight()
            if self.training and self.dropout > 0:
                delta = F.dropout(delta, p=self.dropout)
            return F.linear(x, delta.to(x.dtype))
        n, lead = self.rule.n, x.shape[:-1]
        if self.rule.a_rank is not None:
            # (l ⊗ u)(r ⊗ v)ᵀ per (term, A-rank, rank) index: ΔW = L Rᵀ with L (out, n·a·r), R (in, n·a·r), so
            # x ΔWᵀ is two small GEMMs, x R then (x R) Lᵀ
            left = torch.einsum("ika,ipr->kpiar", self.rule.left, self.u).reshape(self.out_features, -1)
            right = torch.einsum("iaj,irl->jliar", self.rule.right, self.v).reshape(self.in_features, -1)
            y = (x.reshape(-1, self.in_features).to(self.v.dtype) @ right) @ left.T
            return (y * self.scale).reshape(*lead, self.out_features)
        xs = x.reshape(-1, n, self.in_features // n).to(self.v.dtype)
        z = torch.einsum("tjl,irl->tijr", xs, self.v)
        g = torch.einsum("ikj,tijr->tikr", self.rule.weight, z)
        y = torch.einsum("tikr,ipr->tkp", g, self.u)
        return (y * self.scale).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"n={self.rule.n}, out={self.out_features}, in={self.in_features}, rank={self.rank}, "
                f"scale={self.scale}, dropout={self.dropout}, factored={self.factored}")
