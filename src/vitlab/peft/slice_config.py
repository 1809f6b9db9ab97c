"""Fields and checks shared by vitlab's row-slice peft methods (``KAdaptationConfig``, ``LoraQVConfig``).

Example:
    >>> from vitlab.peft import KAdaptationConfig
    >>> KAdaptationConfig(fused_slices=["q", "v"], modules_to_save=("head",)).fused_slices
    ('q', 'v')
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from peft import PeftConfig

from vitlab.checks import MAX_SEED, check_bool, check_int
from vitlab.errors import ConfigError
from vitlab.peft.targets import FUSED_SLICES, resolve_preset

__all__ = ["SliceAdapterConfig", "check_target_modules", "refuse_keywords"]


def check_target_modules(targets: Any, allow_auto: bool = False) -> str | list[str] | None:
    """``None``, a preset name or regex (compiled now), or module names as a list (a tuple or, as peft's own configs
    hold them, a set is taken as a list); ``"auto"`` only with ``allow_auto`` (KAdaptation). ``ConfigError`` naming
    the fix otherwise.

    Example:
        >>> check_target_modules(("qkv", "fc1")), check_target_modules("attn")
        (['qkv', 'fc1'], 'attn')
    """
    if targets is None:
        return None
    if isinstance(targets, str):
        if targets == "auto":
            if not allow_auto:
                raise ConfigError("target_modules='auto' is KAdaptation's; give module names, a regex or a preset")
            return targets
        try:
            re.compile(resolve_preset(targets))
        except re.error as err:
            raise ConfigError(f"target_modules {targets!r} is not a valid regular expression ({err}): fix the "
                              "regex, or give a list of module names") from None
        return targets
    if isinstance(targets, set | frozenset) and all(isinstance(t, str) for t in targets):
        targets = sorted(targets)
    return _str_list("target_modules", targets, "None, a regex string, a preset name or a non-empty list of module "
                     "names")


def _check_selection(config: Any) -> None:
    """Validate and normalise peft's target-selection fields ``exclude_modules``, ``layers_to_transform`` and
    ``layers_pattern`` of ``config`` (peft's meaning; ``ConfigError`` naming the fix)."""
    exclude = config.exclude_modules
    if isinstance(exclude, str):
        try:
            re.compile(exclude)
        except re.error as err:
            raise ConfigError(f"exclude_modules {exclude!r} is not a valid regular expression ({err}): fix the regex, "
                              "or give a list of module names") from None
    elif exclude is not None:
        if isinstance(exclude, set | frozenset) and all(isinstance(e, str) for e in exclude):
            exclude = sorted(exclude)
        config.exclude_modules = _str_list("exclude_modules", exclude, "None, a regex string or a non-empty list of "
                                           "module names")
    layers = config.layers_to_transform
    if layers is not None:
        fix = "give layer indices (0 = the first block), e.g. [0, 1]"
        if isinstance(layers, list | tuple):
            if not layers:
                raise ConfigError(f"layers_to_transform must be None, an int or a non-empty list of ints: {fix}")
            config.layers_to_transform = [check_int("layers_to_transform entry", i, minimum=0, fix=fix) for i in layers]
        else:
            config.layers_to_transform = check_int("layers_to_transform", layers, minimum=0, fix=fix)
    pattern = config.layers_pattern
    if pattern is not None:
        if config.layers_to_transform is None:
            raise ConfigError(f"layers_pattern={pattern!r} only says where layers_to_transform counts layers: set "
                              "layers_to_transform too, or leave layers_pattern unset")
        if not (isinstance(pattern, str) and pattern):
            config.layers_pattern = _str_list("layers_pattern", pattern, "None, a name such as 'blocks' or a list "
                                              "of such names")


def _str_list(name: str, value: Any, what: str) -> list[str]:
    if not isinstance(value, list | tuple) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{name} must be {what}, got {value!r}")
    return list(value)


@dataclass
class SliceAdapterConfig(PeftConfig):
    """What every row-slice adapter config has: its targets, the rows of a fused ``qkv``, the head, the seed.

    Args:
        target_modules: ``None`` (the method's default targets), a preset of ``vitlab.peft.TIMM_TARGET_PRESETS``, a
            list of module names or a regex.
        fused_slices: rows of a matched fused ``qkv`` Linear to adapt, subset of ``("q", "k", "v")``.
        train_head: train the classifier head (through peft's ``modules_to_save``); the base model is frozen.
        modules_to_save: modules trained and saved whole; ``None`` with ``train_head`` means the classifier.
        seed: seed of the adapter initialisation (a private ``torch.Generator``; global RNG untouched); ``None``
            uses the global RNG.
        exclude_modules, layers_to_transform, layers_pattern: peft's target selection, applied to the targets found
            from ``target_modules``: leave out modules by name or regex; keep only the layers with these indices
            (counted in the module list named ``layers_pattern``, e.g. ``"blocks"``; default: the first numbered
            list in the name).
    """

    target_modules: str | list[str] | None = field(default=None, metadata={"help": "names, regex or preset"})
    fused_slices: tuple[str, ...] = field(default=("q", "v"), metadata={"help": "rows of a fused qkv to adapt"})
    train_head: bool = field(default=True, metadata={"help": "train the classifier head (modules_to_save)"})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "modules trained and saved whole"})
    seed: int | None = field(default=0, metadata={"help": "seed of the adapter initialisation"})
    exclude_modules: str | list[str] | None = field(default=None, metadata={
        "help": "modules not to adapt: names (exact or dotted suffix) or a regex, as in peft"})
    layers_to_transform: int | list[int] | None = field(default=None, metadata={
        "help": "adapt only the layers with these indices (peft's rule)"})
    layers_pattern: str | list[str] | None = field(default=None, metadata={
        "help": "name of the layer list layers_to_transform counts in, e.g. 'blocks' (default: any)"})

    def check_slice_fields(self, allow_auto: bool = False) -> None:
        """Validate and normalise the shared fields (lists, tuples); raises ``ConfigError`` (a ``ValueError``) naming
        the fix. A bare string ``modules_to_save`` is refused: peft's own ``LoraConfig`` keeps it unchanged and then
        matches its single characters as module names."""
        slices = self.fused_slices
        if not isinstance(slices, list | tuple) or not slices or any(s not in FUSED_SLICES for s in slices) \
                or len(set(slices)) != len(slices):
            raise ConfigError(f"fused_slices must be a non-empty subset of {FUSED_SLICES} given as a list, e.g. "
                              f"['q', 'v'], got {slices!r}")
        self.fused_slices = tuple(slices)
        self.target_modules = check_target_modules(self.target_modules, allow_auto)
        _check_selection(self)
        if self.modules_to_save is not None:
            if isinstance(self.modules_to_save, str):
                raise ConfigError(f"modules_to_save must be a list of module names, got the string "
                                  f"{self.modules_to_save!r}: write modules_to_save=[{self.modules_to_save!r}]")
            self.modules_to_save = _str_list("modules_to_save", self.modules_to_save,
                                             "None or a non-empty list of module names")
        self.train_head = check_bool("train_head", self.train_head)
        self.inference_mode = check_bool("inference_mode", self.inference_mode)
        if self.seed is not None:
            self.seed = check_int("seed", self.seed, minimum=0, maximum=MAX_SEED,
                                  fix="give a non-negative integer seed, e.g. 0, or None for the global RNG")


def refuse_keywords(cls: type, table: Mapping[str, str], advice: Callable[[dict[str, str], dict[str, Any]], str]
                    ) -> None:
    """Wrap a config dataclass's ``__init__`` so that a keyword of ``table`` (a name users write -> the one the class
    takes) is a ``ConfigError`` reading ``advice(given, kwargs)`` (``given``: those of ``table`` passed), not Python's
    'unexpected keyword argument'."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        given = {old: new for old, new in table.items() if old in kwargs}
        if given:
            raise ConfigError(advice(given, kwargs))
        init(self, *args, **kwargs)

    cls.__init__ = __init__
