"""``NegativeViews``: one patch-based negative view per sample, its kind drawn from a list.

Example:
    >>> import torch
    >>> views = NegativeViews(["shuffle", "infill"], patch_size=8)
    >>> views(torch.rand(2, 3, 32, 32), generator=torch.Generator().manual_seed(0)).shape
    torch.Size([2, 3, 32, 32])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vitlab.augment.base import Params, PatchTransform
from vitlab.augment.transforms import PatchInfill, PatchRotate, PatchShuffle, check_infill_options
from vitlab.errors import ConfigError

__all__ = ["KINDS", "NegativeViews"]

#: Names of the negative-view kinds accepted by `NegativeViews` (and the ``negatives.kinds`` config key).
KINDS: tuple[str, ...] = ("shuffle", "rotate", "infill")


class NegativeViews(PatchTransform):
    """One negative view per sample, its kind drawn uniformly from ``kinds`` (all kinds applied in one remap).

    Args:
        kinds: non-empty subset of ``("shuffle", "rotate", "infill")``.
        patch_size: cell side in pixels, shared by all kinds.
        p: probability that a sample is transformed.
        same_on_batch: one draw (kind and parameters) for the whole batch.
        model_patch_size: if given, require ``patch_size`` to be a multiple of it.
        replace_rate: P-Infill replace rate.
        centre_shape: P-Infill centre block (see `PatchInfill`).
        source: P-Infill border-cell rule (see `PatchInfill`).

    The P-Infill options are validated even when ``"infill"`` is not among ``kinds`` (a bad value is refused, not
    silently ignored). A ``torch.Generator`` passed from inside a ``Dataset`` is copied into every ``DataLoader``
    worker, so the workers repeat each other's views: use the default ``generator=None`` there.

    Example:
        >>> import torch
        >>> views = NegativeViews(["shuffle", "rotate"], patch_size=8)
        >>> y = views(torch.rand(6, 3, 32, 32), generator=torch.Generator().manual_seed(0))
        >>> y.shape, views.last_params["kind"].tolist()
        (torch.Size([6, 3, 32, 32]), [0, 1, 1, 0, 1, 1])
    """

    def __init__(
        self,
        kinds: Sequence[str],
        patch_size: int,
        *,
        p: float = 1.0,
        same_on_batch: bool = False,
        model_patch_size: int | None = None,
        replace_rate: float | None = 0.25,
        centre_shape: tuple[int, int] | None = None,
        source: str = "random",
    ) -> None:
        super().__init__(patch_size, p=p, same_on_batch=same_on_batch, model_patch_size=model_patch_size)
        if not isinstance(kinds, (str, list, tuple)):
            raise ConfigError(f"kinds must be a non-empty list of distinct names from {list(KINDS)}, e.g. "
                              f"['shuffle'], got {kinds!r}")
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        unknown = [k for k in kinds if not isinstance(k, str) or k not in KINDS]
        if not kinds or unknown or len(set(kinds)) != len(kinds):
            raise ConfigError(f"kinds must be a non-empty list of distinct names from {list(KINDS)}, got {kinds}")
        # validated whatever the kinds, so that a bad infill option is never silently ignored
        replace_rate, centre_shape = check_infill_options(replace_rate, centre_shape, source)
        self.kinds = kinds
        common = {"model_patch_size": self.model_patch_size}
        factories = {
            "shuffle": lambda: PatchShuffle(self.patch_size, **common),
            "rotate": lambda: PatchRotate(self.patch_size, **common),
            "infill": lambda: PatchInfill(self.patch_size, replace_rate, centre_shape=centre_shape, source=source,
                                          **common),
        }
        self.views = nn.ModuleDict({kind: factories[kind]() for kind in kinds})

    def _problem(self, rows: int, cols: int) -> str | None:
        for kind, view in self.views.items():
            reason = view._problem(rows, cols)
            if reason is not None:
                return f"{reason} (kind {kind!r})"
        return None

    def _draw(self, batch: int, rows: int, cols: int, generator: torch.Generator | None) -> Params:
        device = generator.device if generator is not None else torch.device("cpu")
        kind = torch.randint(0, len(self.kinds), (batch,), generator=generator, device=device)
        source = torch.arange(rows * cols, device=device).repeat(batch, 1)
        rotation = torch.zeros_like(source)
        for index, view in enumerate(self.views.values()):
            chosen = kind == index
            drawn = int(chosen.sum())
            if drawn:
                params = view._draw(drawn, rows, cols, generator)
                source[chosen], rotation[chosen] = params["source"], params["rotation"]
        return {"source": source, "rotation": rotation, "kind": kind}

    def extra_repr(self) -> str:
        return f"kinds={self.kinds}, {super().extra_repr()}"
