"""``KAdaptationLayer``: the peft tuner layer of KAdaptation, ΔW = s · Σ_i A_i ⊗ (u_i v_iᵀ) on row slices of a Linear.

Shapes (n terms, weight block ``out × in``, ``p = out/n``, ``q = in/n``, rank ``r``, A-rank ``a``):

* shared "slow weights" ``A_i = left_i @ right_i``: ``<role>_left (n, n, a)``, ``<role>_right (n, a, n)`` (or
  ``<role> (n, n, n)`` when ``a_rank`` is None), held once per adapter by the tuner (``kadaptation_A``) when
  ``share_a``, else by the layer. Reference names: ``phm_rule*_left/right``.
* per slice: ``kadaptation_u[<adapter>][<slice>] (n, p, r)`` (zero at init), ``kadaptation_v[...] (n, r, q)``;
  ``B_i = u_i @ v_i``. Reference names: ``*_adapter1_left/right``. Per layer: ``kadaptation_bias[<adapter>]``.

With a rank-``a`` ``A_i = Σ_a l_ia r_iaᵀ`` and ``B_i = Σ_r u_ir v_irᵀ``, ``A_i ⊗ B_i = Σ_{a,r} (l_ia ⊗ u_ir)(r_ia ⊗
v_ir)ᵀ``: ΔW = L Rᵀ has rank at most ``n · a · r`` (32 with the defaults), and the factored path computes
``(x R) Lᵀ`` with ``L (out, n·a·r)``, ``R (in, n·a·r)``: two small GEMMs (``x R`` once for the Q and V slices,
then ``h Lᵀ`` added in place to each slice's rows), the bias folded into the Linear's bias. A full
``A_i`` is ``A_i @ I``. The dense path (needed for dropout on ΔW, as in the reference) builds ΔW once per forward.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from vitlab.peft.kadaptation import KAdaptationConfig
    >>> from vitlab.peft.targets import Target
    >>> layer = KAdaptationLayer(nn.Linear(12, 24))
    >>> targets = [Target("qkv", "q", (0, 8), 12, "q"), Target("qkv", "v", (16, 24), 12, "v")]
    >>> layer.update_layer("default", KAdaptationConfig(n=4), targets, shared=nn.ParameterDict(),
    ...                    generator=torch.Generator().manual_seed(0))
    >>> x = torch.randn(5, 12)
    >>> torch.equal(layer(x), layer.base_layer(x))  # u starts at zero, so ΔW = 0
    True
    >>> layer.get_delta_weight("default").shape
    torch.Size([24, 12])
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.peft.slice_tuner import DeltaTerms, RowSliceLayer
from vitlab.peft.targets import Target

__all__ = ["KAdaptationLayer", "init_rule"]


def _normal(shape: tuple[int, ...], std: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(shape, generator=generator) * std


def init_rule(rules: nn.ParameterDict, role: str, n: int, a_rank: int | None, generator: torch.Generator | None,
              **dd: Any) -> None:
    """Create the ``A`` factors of ``role`` in ``rules`` (entries of std ≈ √a_rank / n), unless they exist."""
    if role in rules or f"{role}_left" in rules:
        return
    if a_rank is None:
        rules[role] = nn.Parameter(_normal((n, n, n), 1.0 / n, generator).to(**dd))
    else:
        rules[f"{role}_left"] = nn.Parameter(_normal((n, n, a_rank), n ** -0.5, generator).to(**dd))
        rules[f"{role}_right"] = nn.Parameter(_normal((n, a_rank, n), n ** -0.5, generator).to(**dd))


class KAdaptationLayer(RowSliceLayer):
    """A frozen ``nn.Linear`` plus KAdaptation adapters on row slices of it (see the module docstring)."""

    adapter_layer_names = ("kadaptation_u", "kadaptation_v", "kadaptation_bias", "kadaptation_A")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.kadaptation_u = nn.ModuleDict()
        self.kadaptation_v = nn.ModuleDict()
        self.kadaptation_bias = nn.ParameterDict()
        self.kadaptation_A = nn.ModuleDict()  # unshared A (share_a=False)
        self.settings: dict[str, dict[str, Any]] = {}
        self.shared_rules: dict[str, nn.ParameterDict] = {}  # owned (and saved) by the tuner, not registered here

    def update_layer(self, adapter_name: str, config: Any, targets: list[Target], shared: nn.ParameterDict | None,
                     generator: torch.Generator | None) -> None:
        """Create the factors of ``adapter_name`` for ``targets`` (row slices of this layer), in the order of vitlab 0.1
        (per slice: the role's ``A`` if new, then ``v``), so a seed gives the same numbers as before.

        Raises:
            ValueError: ``n`` does not divide a slice; a delta bias on a Linear without bias.
        """
        n, weight = config.n, self.base_layer.weight
        dd = {"device": weight.device, "dtype": weight.dtype}
        if config.delta_bias and self.base_layer.bias is None:
            raise ValueError("KAdaptation's per-layer bias is merged into the Linear's bias, but this Linear has none: "
                             "set KAdaptationConfig(delta_bias=False)")
        rows = self._record_slices(adapter_name, targets)
        widths = {b - a for a, b in rows.values()}
        if config.delta_bias and len(widths) != 1:
            raise ValueError(f"a shared delta bias needs slices of one width, got {sorted(widths)}")
        rules = shared if config.share_a else nn.ParameterDict()
        u, v, roles = nn.ParameterDict(), nn.ParameterDict(), {}
        for target in targets:
            out_f, in_f = target.out_features, target.in_features
            if out_f % n or in_f % n:
                raise ValueError(f"n={n} must divide both block dimensions, got {out_f} x {in_f}")
            init_rule(rules, target.role, n, config.a_rank, generator, **dd)
            key = target.slice_name or "all"
            u[key] = nn.Parameter(torch.zeros(n, out_f // n, config.rank, **dd))
            bound = 1.0 / math.sqrt(in_f // n)  # LoRA's A init: kaiming_uniform_(a=sqrt(5)) = U(±1/sqrt(fan_in))
            v[key] = nn.Parameter((torch.rand((n, config.rank, in_f // n), generator=generator) * 2 - 1)
                                  .mul_(bound).to(**dd))
            roles[key] = target.role
        self.kadaptation_u[adapter_name], self.kadaptation_v[adapter_name] = u, v
        if config.share_a:
            self.shared_rules[adapter_name] = rules
        else:
            self.kadaptation_A[adapter_name] = rules
        if config.delta_bias:
            self.kadaptation_bias[adapter_name] = nn.Parameter(torch.zeros(widths.pop(), **dd))
        a = config.a_rank or n
        out_f, in_f = targets[0].out_features, targets[0].in_features
        factored_cost = n * (in_f * config.rank + n * a * config.rank + a * config.rank * out_f // n + out_f * a)
        factored = config.path == "factored" or (
            config.path == "auto" and config.dropout == 0 and factored_cost < out_f * in_f)
        self.settings[adapter_name] = {"n": n, "scale": float(config.scale), "dropout": float(config.dropout),
                                       "factored": factored, "roles": roles}
        self.set_adapter(self.active_adapters)

    def _rules(self, adapter_name: str) -> nn.ParameterDict:
        return self.shared_rules[adapter_name] if adapter_name in self.shared_rules else \
            self.kadaptation_A[adapter_name]

    def _factors(self, adapter_name: str, role: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(left (n, n, a), right (n, a, n))`` with ``A_i = left_i @ right_i``."""
        rules = self._rules(adapter_name)
        if role in rules:  # full A_i = A_i @ I
            full = rules[role]
            return full, torch.eye(full.shape[-1], device=full.device, dtype=full.dtype).expand_as(full)
        return rules[f"{role}_left"], rules[f"{role}_right"]

    def _slice_factors(self, adapter_name: str, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L (b - a, K), R (in, K))`` of one slice, scale included in ``L``, with ``ΔW_slice = L Rᵀ``."""
        setting = self.settings[adapter_name]
        left, right = self._factors(adapter_name, setting["roles"][key])
        u, v = self.kadaptation_u[adapter_name][key], self.kadaptation_v[adapter_name][key]
        left, right = left.to(u.dtype), right.to(u.dtype)  # peft may keep the layer's factors in float32
        rows = u.shape[0] * u.shape[1]
        big_l = torch.einsum("ika,ipr->kpiar", left, u).reshape(rows, -1) * setting["scale"]
        big_r = torch.einsum("iaj,irl->jliar", right, v).reshape(self.in_features, -1)
        return big_l, big_r

    def _dense(self, adapter_name: str) -> torch.Tensor:
        """The dense ``(out, in)`` ΔW (zero outside the slices), scale included, no dropout."""
        setting = self.settings[adapter_name]
        full = self.base_layer.weight.new_zeros(self.out_features, self.in_features)
        for key, (a, b) in self.slice_rows[adapter_name].items():
            left, right = self._factors(adapter_name, setting["roles"][key])
            u, v = self.kadaptation_u[adapter_name][key], self.kadaptation_v[adapter_name][key]
            blocks = torch.einsum("ikj,ipl->kpjl", (left @ right).to(u.dtype), u @ v)
            full[a:b] = blocks.reshape(b - a, self.in_features).to(full.dtype) * setting["scale"]
        return full

    def _bias(self, adapter_name: str) -> torch.Tensor | None:
        if adapter_name not in self.kadaptation_bias:
            return None
        return self._bias_rows(adapter_name, self.kadaptation_bias[adapter_name])

    def delta_terms(self, adapter_name: str) -> DeltaTerms:
        setting = self.settings[adapter_name]
        if not setting["factored"]:
            dense = self._dense(adapter_name)
            if self.training and setting["dropout"] > 0:
                dense = F.dropout(dense, p=setting["dropout"])
            return DeltaTerms(dense=dense, bias=self._bias(adapter_name))
        rows = self.slice_rows[adapter_name]
        rights, blocks, start = [], [], 0
        for key, (a, b) in rows.items():
            left, right = self._slice_factors(adapter_name, key)
            rights.append(right)
            blocks.append((a, b, start, start + left.shape[1], left))
            start += left.shape[1]
        right = rights[0] if len(rights) == 1 else torch.cat(rights, dim=1)
        return DeltaTerms(right=right, blocks=tuple(blocks), bias=self._bias(adapter_name))

    def delta_weight(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._dense(adapter_name), self._bias(adapter_name)
