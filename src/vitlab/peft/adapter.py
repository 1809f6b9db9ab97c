"""Bottleneck adapters (Houlsby et al. 2019), the ``adapter`` baseline of the KAdaptation study.

Each targeted module's output ``h`` (channels last) becomes ``h + up(GELU(down(LayerNorm(h))))`` with ``up``
zero-initialised, so the adapted model equals the base model at start. The default places one bottleneck-64 adapter
after every block's MLP, the PEViT reference's setting: per block ``2d + (d·m + m) + (m·d + d)`` parameters, i.e.
1,208,064 on a 12-layer, width-768 ViT (their count).

Example:
    >>> import timm, torch
    >>> model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2,
    ...                           num_heads=2, num_classes=10)
    >>> model = apply_bottleneck_adapters(model, bottleneck=8)
    >>> sum(p.numel() for n, p in model.named_parameters() if ".adapter." in n)
    1840
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vitlab.checks import check_int
from vitlab.peft.targets import classifier_names, match_module_names, resolve_preset

__all__ = ["AdapterWrapper", "BottleneckAdapter", "apply_bottleneck_adapters"]

DEFAULT_ADAPTER_TARGETS = r"(.*\.)?blocks\d*\.\d+\.mlp"  # timm ViT blocks.<i>.mlp, iFormer blocks<s>.<i>.mlp


class BottleneckAdapter(nn.Module):
    """``h[..., d] -> up(GELU(down(LN(h))))[..., d]`` (the residual is added by ``AdapterWrapper``)."""

    def __init__(self, dim: int, bottleneck: int = 64, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.norm = nn.LayerNorm(dim, **dd)
        self.down = nn.Linear(dim, bottleneck, **dd)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim, **dd)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(self.norm(h))))


class AdapterWrapper(nn.Module):
    """Runs ``base_layer`` then adds ``adapter`` of its output; ``disabled`` skips the adapter."""

    def __init__(self, base_layer: nn.Module, adapter: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter
        self.disabled = False
        self.train(base_layer.training)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(*args, **kwargs)
        return out if self.disabled else out + self.adapter(out)


def _output_width(module: nn.Module) -> int | None:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def apply_bottleneck_adapters(
    model: nn.Module, target_modules: str | Sequence[str] | None = None, bottleneck: int = 64,
    head_modules: Sequence[str] | None = None,
) -> nn.Module:
    """Wrap every matched module with a bottleneck adapter (in place; parameter names keep their prefixes).

    Args:
        model: the model to adapt.
        target_modules: modules whose output gets an adapter (peft matching: list or regex); default every
            ``blocks.<i>.mlp`` (iFormer: ``blocks<s>.<i>.mlp``). Their output width is that of their last ``nn.Linear``.
        bottleneck: hidden width ``m``.
        head_modules: classifier modules, never targets (default: timm ``get_classifier()``).

    Returns:
        The same model, adapted. Freezing is left to the caller (``build_peft_transform`` freezes the base).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be the nn.Module to adapt (e.g. timm.create_model(...)), got "
                        f"{type(model).__name__}")
    bottleneck = check_int("bottleneck", bottleneck, minimum=1, fix="the adapter's hidden width, e.g. 64")
    heads = classifier_names(model, head_modules)
    names = [n for n, _ in model.named_modules() if n and not any(n == h or n.startswith(h + ".") for h in heads)]
    pattern = DEFAULT_ADAPTER_TARGETS if target_modules is None else resolve_preset(target_modules)
    matched = match_module_names(names, pattern)
    matched = [n for n in matched if not any(n.startswith(m + ".") for m in matched)]  # outermost only
    if not matched:
        raise ValueError(f"adapter target_modules={pattern!r} matched no module; candidates include "
                         f"{[n for n in names if n.endswith('mlp')][:8] or names[:8]}")
    modules = dict(model.named_modules())
    for name in matched:
        base = modules[name]
        width = _output_width(base)
        if width is None:
            raise ValueError(f"cannot infer the output width of {name!r} ({type(base).__name__}, no nn.Linear "
                             "inside); target modules that end in a Linear, such as blocks.<i>.mlp")
        ref = next(base.parameters())
        model.set_submodule(name, AdapterWrapper(base, BottleneckAdapter(width, bottleneck, ref.device, ref.dtype)))
    return model
