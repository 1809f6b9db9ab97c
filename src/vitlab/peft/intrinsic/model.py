"""``wrap_in_subspace``: train a model only through θ = θ₀ + P·θ_d (Li et al. 2018; SAID of Aghajanyan et al. 2021).

The base model's parameters stay frozen (θ₀, never copied). Each forward computes the D-vector ``P·θ_d`` once, adds
each segment to its θ₀ tensor (one new tensor per subspace parameter) and calls the base model through
``torch.func.functional_call``, so gradients reach θ_d (and the SAID scales) through the projection.

The state dict holds only what a subspace run trains and needs: ``theta_d``, ``said_scales``, a directly trained
head, the base model's buffers (e.g. BatchNorm statistics), and ``projection.seed`` / ``projection.checksum``.
The frozen base parameters are left out (the checkpoint references the base model instead) and are kept from the
module itself when loading.

Example:
    >>> import torch
    >>> from torch import nn
    >>> base = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> model = wrap_in_subspace(base, SubspaceConfig(dim=20))
    >>> sum(p.numel() for p in model.parameters() if p.requires_grad)
    20
    >>> x = torch.randn(4, 8)
    >>> torch.equal(model(x), base(x))
    True
    >>> sorted(model.state_dict())
    ['projection.checksum', 'projection.seed', 'theta_d']
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..targets import classifier_names
from .config import SubspaceConfig
from .layout import Segment, build_layout, layout_digest, parameter_aliases
from .projection import DenseProjection, FastfoodProjection, PerTensorFastfoodProjection, SubspaceProjection

__all__ = ["SubspaceModel", "merge_subspace", "subspace_size", "wrap_in_subspace"]


#: marks a parameter frozen by a wrap (a base wrapped again, e.g. once per d of a sweep, is not the user's freezing)
_FROZEN_BY_WRAP = "_vitlab_frozen_by_subspace"


def _head_parameter_names(model: nn.Module, config: SubspaceConfig) -> set[str]:
    if not config.train_head:
        return set()
    heads = classifier_names(model, config.head_modules)
    if not heads:
        raise ValueError(f"train_head=True but {type(model).__name__} has no get_classifier(); pass "
                         "SubspaceConfig(head_modules=['<name of the classifier module>'])")
    # a head tied to another module's parameter (e.g. an embedding) is found under its head name too
    return {canonical for alias, canonical in parameter_aliases(model).items() if any(alias.startswith(h + ".")
                                                                                      for h in heads)}


def subspace_size(model: nn.Module, config: SubspaceConfig) -> int:
    """D, the number of parameters ``config`` puts into the subspace of ``model`` (e.g. to cap a d grid)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"subspace_size needs an nn.Module, got {type(model).__name__}")
    if not isinstance(config, SubspaceConfig):
        raise TypeError(f"config must be a SubspaceConfig, got {type(config).__name__}; "
                        "build one with SubspaceConfig(dim=...)")
    return sum(s.numel for s in build_layout(model, config.target_modules, _head_parameter_names(model, config)))


class SubspaceModel(nn.Module):
    """``base`` reparameterised as θ = θ₀ + P·θ_d (DID) or θ_i = θ₀,i + λ_i (P·θ_d)_i (SAID).

    Args:
        base: the model (its parameters are frozen in place, except a head trained directly).
        config: the ``SubspaceConfig``.

    Attributes:
        theta_d: trainable ``[d]``, zeros at start (so the wrapped model computes exactly the base model).
        said_scales: trainable ``[#segments]``, ones at start (only with ``said=True``; ``d = dim - #segments``).
        projection: ``PerTensorFastfoodProjection`` (``projection_norm="per_tensor"``), ``FastfoodProjection``
            (``"global"``) or ``DenseProjection`` (normalised per segment or globally).
        segments: the ``Segment`` list (where each subspace block lives in the D-vector).
        num_classes: the base model's ``num_classes`` (``None`` when it has none).
    """

    def __init__(self, base: nn.Module, config: SubspaceConfig) -> None:
        super().__init__()
        if not isinstance(base, nn.Module):
            raise TypeError(f"wrap_in_subspace needs an nn.Module, got {type(base).__name__}")
        if isinstance(base, SubspaceModel):
            raise ValueError("the model is already wrapped in a subspace; wrap the base model (model.base) instead")
        self.config = config
        head = _head_parameter_names(base, config)
        self.segments: list[Segment] = build_layout(base, config.target_modules, head)
        num_params = sum(s.numel for s in self.segments)
        num_scales = len(self.segments) if config.said else 0
        d = config.dim - num_scales
        if d < 1:
            raise ValueError(f"said=True needs dim > {num_scales} (one scale per segment is counted inside dim), "
                             f"got dim={config.dim}; raise dim or set said=False")
        frozen = sorted({s.name for s in self.segments if not base.get_parameter(s.name).requires_grad
                         and not getattr(base.get_parameter(s.name), _FROZEN_BY_WRAP, False)})
        if frozen:
            warnings.warn(f"{len(frozen)} parameter(s) of {type(base).__name__} were frozen (requires_grad=False) "
                          f"but are put into the subspace and will move with θ_d: {frozen[:5]}"
                          f"{' ...' if len(frozen) > 5 else ''}; to keep them fixed, select the others with "
                          "SubspaceConfig(target_modules=...)", UserWarning, stacklevel=3)
        first = next(base.parameters())
        self.base = base
        self.num_classes = getattr(base, "num_classes", None)  # read by the harness (ClassificationTask)
        self.projection = self._build_projection(num_params, d, first.device)
        # wrapped on the meta device (to size a large model without memory): P is regenerated after ``to_empty``
        self._on_meta = first.device.type == "meta"
        self.theta_d = nn.Parameter(torch.zeros(d, device=first.device))
        self.said_scales = nn.Parameter(torch.ones(num_scales, device=first.device)) if config.said else None
        for name, p in base.named_parameters():
            p.requires_grad_(name in head)
            if name not in head:
                setattr(p, _FROZEN_BY_WRAP, True)
        self._frozen = [n for n, p in base.named_parameters() if not p.requires_grad]
        self._by_param: dict[str, list[int]] = {}
        for i, s in enumerate(self.segments):
            self._by_param.setdefault(s.name, []).append(i)
        self.register_state_dict_post_hook(_drop_frozen_base)
        self.register_load_state_dict_pre_hook(_fill_frozen_base)

    def _build_projection(self, num_params: int, d: int, device: torch.device) -> SubspaceProjection:
        config = self.config
        kwargs: dict[str, Any] = dict(seed=config.seed, layout=layout_digest(self.segments), device=device)
        blocks = [s.numel for s in self.segments] if config.projection_norm == "per_tensor" else None
        with torch.device("cpu"):  # drawn on the CPU (then moved), also inside a `with torch.device("meta")` block
            if config.projection == "dense":
                return DenseProjection(num_params, d, max_bytes=config.max_dense_bytes, blocks=blocks, **kwargs)
            if blocks is not None:
                return PerTensorFastfoodProjection(blocks, d, **kwargs)
            return FastfoodProjection(num_params, d, **kwargs)

    def _materialize(self) -> None:
        """After ``to_empty`` of a model wrapped on the meta device: regenerate P from the seed on the new device and
        start θ_d at 0 (and the SAID scales at 1), as a fresh wrap does; a state dict loaded next overwrites them."""
        if not self._on_meta or self.theta_d.device.type == "meta":
            return
        self.projection = self._build_projection(self.projection.num_params, self.theta_d.numel(), self.theta_d.device)
        with torch.no_grad():
            self.theta_d.zero_()
            if self.said_scales is not None:
                self.said_scales.fill_(1.0)
        self._on_meta = False

    def to_empty(self, *, device: torch.device | str | int | None, recurse: bool = True) -> SubspaceModel:
        """``nn.Module.to_empty``, then (wrapped on the meta device) P regenerated, θ_d = 0 and SAID scales = 1 at
        once, so ``theta_d`` and ``state_dict()`` never hold the uninitialised memory of ``to_empty``."""
        super().to_empty(device=device, recurse=recurse)
        self._materialize()
        return self

    def _apply(self, fn: Any, recurse: bool = True) -> SubspaceModel:
        """``nn.Module._apply`` (``.to``, ``.half()``, ``.bfloat16()``, ...); P stays the float32 one of the seed.

        A cast below float32 (e.g. Lightning's ``precision="bf16-true"``) would round P's buffers, so training would
        use another P than the one regenerated at load (and ``.float()`` would not bring it back): P is regenerated
        in float32 on its device instead; ``forward`` computes P·θ_d in float32 and casts it to each parameter's dtype.
        """
        super()._apply(fn, recurse)
        low = [b for b in self.projection.buffers() if b.is_floating_point() and torch.finfo(b.dtype).bits < 32]
        if low and low[0].device.type != "meta":
            self.projection = self._build_projection(self.projection.num_params, self.theta_d.numel(), low[0].device)
        return self

    @property
    def num_params(self) -> int:
        """D, the number of parameters in the subspace."""
        return self.projection.num_params

    def subspace_parameters(self) -> dict[str, Tensor]:
        """θ₀ + P·θ_d for every subspace parameter, by name (the dict passed to ``functional_call``)."""
        # one split (segments tile the D-vector in order): its backward is one concatenation, whereas a slice per
        # segment would make each slice's backward allocate and fill a D-sized zero gradient (O(#segments · D))
        self._materialize()
        theta = self.theta_d.to(torch.promote_types(self.theta_d.dtype, torch.float32))  # P is float32 or float64
        pieces = self.projection(theta).split([s.numel for s in self.segments], dim=-1)
        theta0 = dict(self.base.named_parameters())
        out = {}
        for name, indices in self._by_param.items():
            base = theta0[name]
            blocks = []
            for i in indices:
                s = self.segments[i]
                block = pieces[i].view(s.shape)
                if self.said_scales is not None:
                    block = block * self.said_scales[i]
                blocks.append((s.rows, block.to(base.dtype)))
            out[name] = _add_blocks(base, blocks)
        return out

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the base model with the subspace parameters; same inputs and outputs as ``base``.

        Raises:
            ValueError: the base model runs gradient checkpointing (timm ``set_grad_checkpointing``, transformers
                ``gradient_checkpointing_enable``): its blocks would be recomputed in backward with θ₀ instead of
                θ₀ + P·θ_d. Checkpoint the whole ``SubspaceModel`` instead.
        """
        if torch.is_grad_enabled() and any(getattr(m, "grad_checkpointing", False) is True
                                           or getattr(m, "gradient_checkpointing", False) is True
                                           for m in self.base.modules()):
            raise ValueError("the base model has gradient checkpointing on, which recomputes its blocks in backward "
                             "after the subspace parameters θ₀ + P·θ_d are gone (wrong gradients); turn it off, "
                             "model.base.set_grad_checkpointing(False), and checkpoint the whole wrapped model "
                             "instead: torch.utils.checkpoint.checkpoint(model, x, use_reentrant=False)")
        return functional_call(self.base, self.subspace_parameters(), args, kwargs)

    def extra_repr(self) -> str:
        said = f", said_scales={len(self.segments)}" if self.said_scales is not None else ""
        return f"dim={self.config.dim}, segments={len(self.segments)}{said}"


def _add_blocks(base: Tensor, blocks: list[tuple[tuple[int, int] | None, Tensor]]) -> Tensor:
    """θ₀ plus blocks on dim-0 row ranges (one output tensor, no zero-filled delta)."""
    if blocks[0][0] is None:
        return base + blocks[0][1]
    pieces, cursor = [], 0
    for (start, stop), block in blocks:
        pieces += [base[cursor:start], base[start:stop] + block]
        cursor = stop
    pieces.append(base[cursor:])
    return torch.cat(pieces, 0)


def _drop_frozen_base(module: SubspaceModel, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for name in module._frozen:
        state_dict.pop(f"{prefix}base.{name}", None)


def _fill_frozen_base(module: SubspaceModel, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                      missing: list, unexpected: list, errors: list) -> None:
    module._materialize()
    stored = state_dict.get(prefix + "theta_d")
    params = dict(module.base.named_parameters())
    if stored is None and any(prefix + name in state_dict for name in params):
        raise ValueError("this is a state dict of the base model (its keys have no 'base.' prefix and no theta_d), "
                         "not of the subspace model: load it into the base, model.base.load_state_dict(...) (θ₀ is "
                         "read from the base at every forward), or load a state dict saved from the SubspaceModel")
    if stored is not None and stored.shape != module.theta_d.shape:
        raise ValueError(f"the checkpoint's theta_d has {stored.numel()} entries but this subspace has "
                         f"{module.theta_d.numel()}; rebuild with the checkpoint's SubspaceConfig (dim, said, "
                         "target_modules, train_head)")
    for name in module._frozen:
        state_dict.setdefault(f"{prefix}base.{name}", params[name].detach())


def wrap_in_subspace(model: nn.Module, config: SubspaceConfig) -> SubspaceModel:
    """Wrap ``model`` for random-subspace training; the result computes exactly ``model`` until θ_d moves.

    Args:
        model: any ``nn.Module`` (e.g. a timm ViT); its parameters are frozen in place. Parameters it had frozen
            already are in the subspace too when ``target_modules`` selects them (the default selects every
            parameter, as Li et al.); a warning names them.
        config: the ``SubspaceConfig``.

    Returns:
        A ``SubspaceModel``: its only trainable parameters are θ_d, the SAID scales and, with ``train_head``, the
        head. With the defaults that is exactly ``config.dim`` numbers.

    Raises:
        ValueError: bad selection, ``dim`` larger than D, or ``dim`` too small for SAID. MemoryError: a dense P
            that would not fit (the message suggests Fastfood).
    """
    if not isinstance(config, SubspaceConfig):
        raise TypeError(f"config must be a SubspaceConfig, got {type(config).__name__}; "
                        "build one with SubspaceConfig(dim=...)")
    return SubspaceModel(model, config)


@torch.no_grad()
def merge_subspace(model: SubspaceModel) -> nn.Module:
    """A plain copy of the base model with θ₀ + P·θ_d written into its parameters (for fast evaluation/export)."""
    if not isinstance(model, SubspaceModel):
        raise TypeError(f"merge_subspace needs a SubspaceModel (from wrap_in_subspace), got {type(model).__name__}")
    merged = copy.deepcopy(model.base)
    values = model.subspace_parameters()
    for name, p in merged.named_parameters():
        if name in values:
            p.copy_(values[name])
        p.requires_grad_(True)
        p.__dict__.pop(_FROZEN_BY_WRAP, None)  # a plain model: freezing it later is the user's own
    return merged
