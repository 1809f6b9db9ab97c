"""``KAdaptationLayer``: the peft tuner layer of KAdaptation, ΔW = s · Σ_i A_i ⊗ (u_i v_iᵀ) on row slices of a Linear.

Shapes (n terms, weight block ``out × in``, ``p = out/n``, ``q = in/n``, rank ``r``, A-rank ``a``):

* shared "slow weights" ``A_i = left_i @ right_i``: ``<role>_left (n, n, a)``, ``<role>_right (n, a, n)`` (or
  ``<role> (n, n, n)`` when ``a_rank`` is None), held once per adapter by the tuner (``kadaptation_A``) when
  ``share_a``, else by the layer. Reference names: ``phm_rule*_left/right``.
* per slice: ``kadaptation_u[<adapter>][<slice>] (n, p, r)`` (zero at init), ``kadaptation_v[...] (n, r, q)``;
  ``B_i = u_i @ v_i``. Reference names: ``*_adapter1_left/right``. Per layer: ``kadaptation_bias[<adapter>]``.

With a rank-``a`` ``A_i = Σ_a l_ia r_iaᵀ`` and ``B_i = Σ_r u_ir v_irᵀ``, ``A_i ⊗ B_i = Σ_{a,r} (l_ia ⊗ u_ir)(r_ia ⊗
v_ir)ᵀ``: ΔW = L Rᵀ has rank at most ``n · a · r`` (32 with the defaults), with ``L (out, n·a·r)``, ``R (in,
n·a·r)``; a full ``A_i`` is ``A_i @ I``. The factored path (one active adapter, the training case) folds ``L_s R_sᵀ``
and the bias into a copy of each slice's weight rows, so the forward pass is one Linear (its product and the input
gradient's through ``vitlab.models.cpu_linear.linear``: oneDNN on float32 CPU tensors), and takes the factors'
gradients from low-rank products (``x R``, ``g_s L_s``): ``rows · in · K`` multiply-adds per slice to fold, about
``4 · in · K`` per token and slice to train, no dense gradient of ΔW. The dense path (needed for dropout on ΔW, as in
the reference) builds ΔW once per forward and lets autograd take its gradient.

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

from vitlab.models.cpu_linear import linear, recording_or_transforming
from vitlab.models.inputs import autocast_enabled
from vitlab.peft.slice_tuner import DeltaTerms, RowSliceLayer
from vitlab.peft.targets import Target

__all__ = ["KAdaptationLayer", "init_rule"]


def _normal(shape: tuple[int, ...], std: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(shape, generator=generator) * std


def _kron_left(left: torch.Tensor, u: torch.Tensor, scale: float) -> torch.Tensor:
    """``Lᵀ (n·a·r, n·p)`` of one slice from ``left (n, n, a)`` and ``u (n, p, r)``, scale included:
    ``Lᵀ[(i, a, r), (k, p)] = s · left[i, k, a] · u[i, p, r]``."""
    n, k, a = left.shape
    _, p, r = u.shape
    return (left.transpose(1, 2).reshape(n, a, 1, k, 1) * (u * scale).transpose(1, 2).reshape(n, 1, r, 1, p)) \
        .reshape(n * a * r, k * p)


def _kron_right(right: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``Rᵀ (n·a·r, n·q)`` of one slice from ``right (n, a, n)`` and ``v (n, r, q)``:
    ``Rᵀ[(i, a, r), (j, l)] = right[i, a, j] · v[i, r, l]``."""
    n, a, j = right.shape
    _, r, q = v.shape
    return (right.reshape(n, a, 1, j, 1) * v.reshape(n, 1, r, 1, q)).reshape(n * a * r, j * q)


def _kronecker_linear_plain(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                            delta_bias: torch.Tensor | None, scale: float, spans: tuple[tuple[int, int], ...],
                            *factors: torch.Tensor) -> torch.Tensor:
    """``_KroneckerLinear``'s forward pass with plain differentiable ops (for its double backward)."""
    pieces, bias_pieces, end = [], [], 0
    for index, (a, b) in enumerate(spans):
        left, right, u, v = factors[4 * index:4 * index + 4]
        pieces += [weight[end:a], weight[a:b] + _kron_left(left, u, scale).T @ _kron_right(right, v)]
        if bias is not None:
            bias_pieces += [bias[end:a], bias[a:b] if delta_bias is None else bias[a:b] + delta_bias]
        end = b
    merged = torch.cat([*pieces, weight[end:]])
    return F.linear(x, merged, None if bias is None else torch.cat([*bias_pieces, bias[end:]]))


class _KroneckerLinear(torch.autograd.Function):
    """``F.linear(x, W + ΔW, b + Δb)`` with ``ΔW = L_s R_sᵀ`` and ``Δb`` on the rows ``a:b`` of each slice ``s``.

    The forward pass folds the rank-``K`` update into a copy of the weight (``rows · in · K`` multiply-adds per slice,
    none per token) and, when a factor needs a gradient, keeps ``h_sᵀ = R_sᵀ xᵀ`` (above a row of ones). The backward
    pass gives ``x`` its gradient through the folded weight and the factors theirs from low-rank products, never the
    dense ``(out, in)`` gradient of ``ΔW``: with ``g`` the output gradient, ``[∂L_sᵀ; ∂Δb_s] = [h_sᵀ; 1ᵀ] g_s`` and
    ``∂Rᵀ = [L_sᵀ g_sᵀ]_s x``, then mapped onto ``left``, ``u``, ``right``, ``v`` (products in the ``(K, ·)`` layout,
    the fastest for these shapes). Inputs after ``spans`` are ``(left, right, u, v)`` per slice (a tensor may appear
    for several slices; autograd sums its gradients). A backward pass that builds a graph (``create_graph=True``, e.g.
    a gradient penalty) differentiates ``_kronecker_linear_plain`` instead, so higher derivatives exist.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                delta_bias: torch.Tensor | None, scale: float, spans: tuple[tuple[int, int], ...],
                *factors: torch.Tensor) -> torch.Tensor:
        merged = weight.clone()
        lefts, rights = [], []
        for index, (a, b) in enumerate(spans):
            left, right, u, v = factors[4 * index:4 * index + 4]
            lefts.append(_kron_left(left, u, scale))
            rights.append(_kron_right(right, v))
            merged[a:b].addmm_(lefts[-1].T, rights[-1])
        if delta_bias is not None:
            bias = bias.clone()
            for a, b in spans:
                bias[a:b] += delta_bias
        out = linear(x, merged, bias)  # oneDNN on float32 CPU tensors (vitlab.models.cpu_linear)
        inputs = x.reshape(-1, x.shape[-1])
        h_t = None
        if any(ctx.needs_input_grad[3:]):  # x is still in cache: h_sᵀ now, each above a row of ones (for ∂Δb)
            h_t = inputs.new_ones(sum(r.shape[0] for r in rights) + len(rights), inputs.shape[0])
            start = 0
            for right in rights:
                torch.mm(right, inputs.T, out=h_t[start:start + right.shape[0]])
                start += right.shape[0] + 1
        ctx.scale, ctx.spans = scale, spans
        ctx.save_for_backward(x, merged, h_t, weight, bias, delta_bias, *lefts, *factors)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, merged, h_t, weight, bias, delta_bias, *rest = ctx.saved_tensors
        spans, needs, count = ctx.spans, ctx.needs_input_grad, len(ctx.spans)
        if torch.is_grad_enabled():  # create_graph=True
            return _KroneckerLinear._differentiable_backward(ctx, grad, (x, weight, bias, delta_bias), rest[count:])
        lefts, factors = rest[:count], rest[count:]
        flat, inputs = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
        grad_x = linear(flat, merged.t()).view(x.shape) if needs[0] else None
        grad_weight = flat.T @ inputs if needs[1] else None
        grad_bias = flat.sum(0) if needs[2] else None
        grad_factors: list[torch.Tensor | None] = [None] * len(factors)
        grad_delta_bias = None
        need_r = any(needs[7 + 4 * i] or needs[9 + 4 * i] for i in range(count))
        if h_t is not None:
            grad_h_t = flat.new_empty(sum(left_t.shape[0] for left_t in lefts), flat.shape[0]) if need_r else None
            start = 0
            for index, ((a, b), left_t) in enumerate(zip(spans, lefts, strict=True)):
                left, _, u, _ = factors[4 * index:4 * index + 4]
                rows, k = flat[:, a:b], left_t.shape[0]
                products = h_t[start + index:start + index + k + 1] @ rows  # [∂Lᵀ / s; Σ_t g_s]
                grad_delta_bias = products[k] if grad_delta_bias is None else grad_delta_bias + products[k]
                grad_l = products[:k].view(left.shape[0], left.shape[2], u.shape[2], left.shape[1], u.shape[1])
                grad_factors[4 * index] = (grad_l * u.transpose(1, 2).unsqueeze(1).unsqueeze(3)).sum((2, 4)) \
                    .transpose(1, 2).mul_(ctx.scale)
                grad_factors[4 * index + 2] = (grad_l * left.transpose(1, 2).unsqueeze(2).unsqueeze(4)).sum((1, 3)) \
                    .transpose(1, 2).mul_(ctx.scale)
                if need_r:
                    torch.mm(left_t, rows.T, out=grad_h_t[start:start + k])
                start += k
            if need_r:
                for index, part in enumerate((grad_h_t @ inputs).split([left_t.shape[0] for left_t in lefts])):
                    _, right, _, v = factors[4 * index:4 * index + 4]
                    part = part.view(right.shape[0], right.shape[1], v.shape[1], right.shape[2], v.shape[2])
                    grad_factors[4 * index + 1] = (part * v.unsqueeze(1).unsqueeze(3)).sum((2, 4))
                    grad_factors[4 * index + 3] = (part * right.unsqueeze(2).unsqueeze(4)).sum((1, 3))
        grad_factors = [g if needs[6 + i] else None for i, g in enumerate(grad_factors)]
        return grad_x, grad_weight, grad_bias, grad_delta_bias if needs[3] else None, None, None, *grad_factors

    @staticmethod
    def _differentiable_backward(ctx: Any, grad: torch.Tensor, tensors: tuple[torch.Tensor | None, ...],
                                 factors: list[torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
        """The gradients as a graph: ``_kronecker_linear_plain`` recomputed and differentiated with autograd (a tensor
        passed several times gets its whole gradient once)."""
        inputs = [*tensors, None, None, *factors]
        wanted, seen = {}, set()
        for index, (tensor, need) in enumerate(zip(inputs, ctx.needs_input_grad, strict=True)):
            if need and tensor is not None and id(tensor) not in seen:
                wanted[index] = tensor
                seen.add(id(tensor))
        with torch.enable_grad():
            out = _kronecker_linear_plain(*tensors, ctx.scale, ctx.spans, *factors)
        grads = torch.autograd.grad(out, list(wanted.values()), grad, create_graph=True, allow_unused=True)
        result: list[torch.Tensor | None] = [None] * len(inputs)
        for index, value in zip(wanted, grads, strict=True):
            result[index] = value
        return tuple(result)


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
        return _kron_left(left, u, setting["scale"]).T, _kron_right(right, v).T

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
            start = start + left.shape[1]  # not +=: see lora.LoraQVLayer.delta_terms (jit.trace)
        right = rights[0] if len(rights) == 1 else torch.cat(rights, dim=1)
        return DeltaTerms(right=right, blocks=tuple(blocks), bias=self._bias(adapter_name))

    def delta_weight(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._dense(adapter_name), self._bias(adapter_name)

    def _folded_adapter(self, x: torch.Tensor) -> str | None:
        """The adapter that ``forward`` folds into the weight: the only active one, unmerged, on the factored path,
        with every tensor in ``x``'s dtype, no autocast, no graph recorder and no ``torch.func`` transform (else None:
        ``RowSliceLayer``'s path)."""
        active = [name for name in self.active_adapters if name in self.slice_rows]
        if self.disable_adapters or self.merged or len(active) != 1 or not self.settings[active[0]]["factored"] \
                or autocast_enabled(x.device) or recording_or_transforming():
            return None
        name = active[0]
        tensors = [self.base_layer.weight, *self._rules(name).values(), *self.kadaptation_u[name].values(),
                   *self.kadaptation_v[name].values(), *([self.kadaptation_bias[name]] if name in
                                                          self.kadaptation_bias else [])]
        return name if all(t.dtype == x.dtype for t in tensors) else None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``x[..., in] -> [..., out]``: the base Linear plus the active, unmerged adapters.

        With one active factored adapter in ``x``'s dtype (the training case) its ΔW and bias are folded into copies
        of the weight and bias (``_KroneckerLinear``: one Linear, no per-token GEMM over the output rows; gradients of
        the factors from ``x R`` and ``g_s L_s``); otherwise (several active adapters, the dense path, a float32
        adapter on a bfloat16 base, autocast, ``torch.jit.trace`` / ``torch.export``, ``torch.func`` transforms)
        ``RowSliceLayer.forward`` (``x R`` then ``h L_sᵀ`` added to each slice's rows).
        """
        name = self._folded_adapter(x)
        if name is None:
            return super().forward(x, *args, **kwargs)
        setting, base = self.settings[name], self.base_layer
        spans, factors = [], []
        for key, rows in self.slice_rows[name].items():
            left, right = self._factors(name, setting["roles"][key])
            spans.append(rows)
            factors += [left, right, self.kadaptation_u[name][key], self.kadaptation_v[name][key]]
        delta_bias = self.kadaptation_bias[name] if name in self.kadaptation_bias else None
        return _KroneckerLinear.apply(x, base.weight, base.bias, delta_bias, setting["scale"], tuple(spans), *factors)
