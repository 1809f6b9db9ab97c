"""``SubspaceConfig``: every setting of random-subspace training, θ = θ₀ + P·θ_d (Li et al. 2018).

Example:
    >>> cfg = SubspaceConfig(dim=1000)
    >>> cfg.projection, cfg.projection_norm, cfg.said, cfg.seed
    ('fastfood', 'per_tensor', False, 0)
    >>> SubspaceConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from vitlab.checks import MAX_SEED

from .layout import parse_selector
from .projection import PROJECTION_NORMS

__all__ = ["PROJECTIONS", "PROJECTION_NORMS", "SubspaceConfig"]

PROJECTIONS = ("fastfood", "dense")


@dataclass
class SubspaceConfig:
    """Configuration of ``wrap_in_subspace``.

    Args:
        dim: number of trainable numbers d. With ``said=True`` it includes the per-segment scales (θ_d then has
            ``dim - #segments`` entries); with ``train_head=True`` the head's own parameters come on top.
        projection: ``"fastfood"`` (H·G·Π·H·B transforms, O(D) memory) or ``"dense"`` (Gaussian D×d matrix, O(D·d)
            memory).
        projection_norm: ``"per_tensor"`` (Aghajanyan et al.'s reference: each segment, i.e. each parameter tensor or
            row slice, has its own block of P with unit-norm columns; with Fastfood, its own transform) or
            ``"global"`` (Li et al.: one P over the whole D-vector with unit-norm columns, so a segment of D_i numbers
            sees column norms of about sqrt(D_i / D); the only form before this option existed, so runs made earlier
            need ``"global"`` to be rebuilt).
        said: structure-aware intrinsic dimension (Aghajanyan et al. 2021): one learned scale per subspace segment
            (a parameter tensor, or a row slice of one), initialised to 1, counted inside ``dim``.
        seed: seed of the projection P (regenerated from it, never stored).
        target_modules: which parameters live in the subspace. ``None``: all of them, the head included (Li et al.).
            Otherwise HF peft matching on module *or* parameter names: a list entry matches a name equal to it or
            ending in ``"." + entry``; a string is a regex that must match a whole name. A matched module brings all
            parameters under it. An entry may end in ``@q``, ``@k``, ``@v`` (that third of the rows of a fused
            ``qkv`` weight and bias) or ``@start:stop`` (those rows), e.g. ``["qkv@q", "qkv@v", "head"]``.
        train_head: train the classifier head directly (outside the subspace) instead of through P.
        head_modules: names of the head modules for ``train_head`` (default: timm's ``model.get_classifier()``); a
            single name may be given as a string.
        max_dense_bytes: memory the dense P may use; ``None`` means half of the memory currently available on the
            model's device. Larger requests are refused with the estimate and a pointer to Fastfood.
    """

    dim: int = field(metadata={"help": "trainable numbers d (SAID scales included)"})
    projection: str = field(default="fastfood", metadata={"help": f"one of {PROJECTIONS}"})
    projection_norm: str = field(default="per_tensor", metadata={
        "help": f"one of {PROJECTION_NORMS}: unit-norm columns per parameter tensor, or over the whole D-vector"})
    said: bool = field(default=False, metadata={"help": "learn one scale per segment (counted inside dim)"})
    seed: int = field(default=0, metadata={"help": "seed of the projection; P is regenerated from it"})
    target_modules: str | list[str] | None = field(
        default=None, metadata={"help": "parameters in the subspace (None: all); names/regex, '@q|@k|@v|@a:b' rows"}
    )
    train_head: bool = field(default=False, metadata={"help": "train the classifier head directly"})
    head_modules: list[str] | None = field(default=None, metadata={"help": "head module names for train_head"})
    max_dense_bytes: int | None = field(default=None, metadata={"help": "memory limit of the dense P in bytes"})

    def __post_init__(self) -> None:
        for name in ("dim", "seed", "max_dense_bytes"):  # NumPy integers (a grid from np.logspace) as plain ints
            value = getattr(self, name)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool | int):
                setattr(self, name, int(value))
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"dim must be a positive int (the number of trainable numbers), got {self.dim!r}")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {self.projection!r}")
        if self.projection_norm not in PROJECTION_NORMS:
            raise ValueError(f"projection_norm must be one of {PROJECTION_NORMS} ('global' rebuilds runs made before "
                             f"the option existed), got {self.projection_norm!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be an int in [0, 2**63), got {self.seed!r}")
        for flag in ("said", "train_head"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.target_modules is not None:
            if isinstance(self.target_modules, str):
                parse_selector(self.target_modules)
            else:
                self.target_modules = list(self.target_modules)
                if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
                    raise ValueError("target_modules must be None, a regex string or a non-empty list of names, "
                                     f"got {self.target_modules!r}")
                for entry in self.target_modules:
                    parse_selector(entry)
        if self.head_modules is not None:
            if isinstance(self.head_modules, str):  # one name, not a list of its letters
                self.head_modules = [self.head_modules]
            self.head_modules = list(self.head_modules)
            if not self.head_modules or not all(isinstance(h, str) and h for h in self.head_modules):
                raise ValueError("head_modules must be None (timm's get_classifier()) or a non-empty list of module "
                                 f"names, e.g. ['head'], got {self.head_modules!r}")
        if self.max_dense_bytes is not None and (isinstance(self.max_dense_bytes, bool) or not isinstance(
                self.max_dense_bytes, int) or self.max_dense_bytes < 1):
            raise ValueError(f"max_dense_bytes must be a positive int or None, got {self.max_dense_bytes!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (for checkpoint metadata)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SubspaceConfig:
        """Inverse of ``to_dict``; unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown SubspaceConfig keys {unknown}; valid keys are {sorted(known)}")
        return cls(**values)
